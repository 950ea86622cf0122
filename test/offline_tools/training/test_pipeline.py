"""CPU runs of the whole pipeline (tiny config): the entry point and the ``run(args)`` of the CLI."""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

import pytest

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.supernet import load_supernet
from offline_tools import train_supernet
from offline_tools.datasets import IMAGENETTE_WNIDS
from offline_tools.training import cli
from offline_tools.training.config import ACCURACY_FILE, LOG_FILE, METRICS_FILE, SPLIT_FILE
from offline_tools.training.data import load_split

TINY_PER_CLASS = 7


@pytest.mark.slow
def test_main_runs_every_stage_on_cpu(tmp_path: Path, tiny_zip: Path) -> None:
    out = tmp_path / "run"
    overrides = {
        "holdout_images": 10,
        "calib_images": 20,
        "batch_size": 4,
        "epochs": 2,
        "max_steps_per_epoch": 2,
        "warmup_epochs": 0.5,
        "n_random_subnets": 1,
        "resolutions": [64, 96],
        "measure_sweep": "extremes",
        "final_calib_images": 8,
        "measure_calib_images": 4,
        "measure_flush_every": 2,
        "eval_every_epochs": 2,
        "decode_threads": 2,
    }
    argv = ["--data", str(tiny_zip), "--out", str(out), "--device", "cpu", "--measure-subnets", "3"]
    argv += ["--time-budget-min", "30"]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert train_supernet.main(argv) == 0

    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files
    assert {SPLIT_FILE, ACCURACY_FILE, METRICS_FILE, LOG_FILE, "manifest.json"} <= set(files)
    shards = [p for p in out.iterdir() if p.suffix == ".safetensors"]
    assert shards and all(p.stat().st_size <= 15 * 2**20 for p in shards)

    supernet = load_supernet(str(out))  # checks shard hashes and the state-dict checksum
    assert supernet.resolutions == (64, 96)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "float16" and manifest["training"]["steps"] == 4
    assert set(manifest["holdout_top1"]) >= {"largest@96", "smallest@64", "holdout_images"}

    split = load_split(out / SPLIT_FILE)
    assert len(split["holdout"]) == 10 and len(split["calibration"]) == 20
    assert collections.Counter(n.split("/")[1] for n in split["holdout"]) == dict.fromkeys(
        IMAGENETTE_WNIDS, 1
    )
    assert split["n_images"] == 10 * TINY_PER_CLASS and split["sources"][0]["file"] == "tiny.zip"

    acc: dict[str, Any] = json.loads((out / ACCURACY_FILE).read_text())
    assert acc["complete"] and acc["measured"] == 4 + 3 and acc["holdout_images"] == 10
    for row in acc["subnets"]:
        cfg = SubnetConfig.from_dict(row)
        assert cfg.resolution in (64, 96) and 0.0 <= row["holdout_top1"] <= 100.0
        assert row["kind"] in ("sweep", "random")

    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["status"] == "ok" and not metrics["errors"]
    assert metrics["command"] == ["train_supernet", *argv]
    assert metrics["training"]["steps_done"] == 4 and len(metrics["training"]["epochs"]) == 2
    assert "check" in metrics["training"]["epochs"][1]
    assert "offline_tools/training/loop.py" in metrics["source_sha256"]
    events = [json.loads(line)["event"] for line in (out / LOG_FILE).read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "end" and "export" in events


@pytest.mark.slow
def test_time_budget_stops_training_early_and_still_exports(tmp_path: Path, tiny_zip: Path) -> None:
    out = tmp_path / "run"
    argv = ["--data", str(tiny_zip), "--out", str(out), "--device", "cpu", "--measure-subnets", "50"]
    # a budget already spent: training stops at once, the rest still runs and records it
    sets = {
        "holdout_images": 10,
        "calib_images": 20,
        "batch_size": 4,
        "epochs": 50,
        "resolutions": [64],
        "time_budget_min": 0.001,
        "post_reserve_s": 0,
        "final_calib_images": 4,
        "measure_calib_images": 4,
        "eval_every_epochs": 0,
        "decode_threads": 2,
    }
    for key, value in sets.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    parser = argparse.ArgumentParser()  # as `dofa-levels train` registers it
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(argv), command=["dofa-levels", "train", *argv]) == 0
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["training"]["stopped_early"] and metrics["training"]["steps_done"] < 50
    assert metrics["command"][:2] == ["dofa-levels", "train"]
    assert (out / "manifest.json").is_file()
    acc = json.loads((out / ACCURACY_FILE).read_text())
    assert not acc["complete"] and acc["measured"] < acc["planned"]


def test_cli_refuses_what_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):  # argparse: --stop-after-steps without --checkpoint-dir
        train_supernet.main(["--data", "x.zip", "--out", str(tmp_path / "o"), "--stop-after-steps", "1"])
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--data", "x.zip", "--out", str(tmp_path / "o"), "--resume", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"^train_supernet: --resume .*: .*no checkpoint"):
        cli.run(args)
    assert not (tmp_path / "o").exists()
