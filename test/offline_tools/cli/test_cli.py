"""Tests of the ``dofa-levels`` command line, including the paper's search on its Jetson tables."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SearchSpace, SubnetConfig
from dynamic_ofa_ros.levels import Level, LevelTable, load_level_table, save_level_table
from offline_tools.accuracy import MLPAccuracyPredictor
from offline_tools.cli import main
from offline_tools.latency.table import METADATA_FILE, LatencyTable

torch.set_num_threads(1)

# small but real settings: Algorithm 1 + evolution over a 6-target sweep (about 5 s per device)
QUICK = ["--itr-max", "800", "--itr-n", "100", "--generations", "8", "--population", "32", "--targets", "6"]


def uniform(resolution: int, ks: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=resolution, ks=(ks,) * N_BLOCKS, e=(e,) * N_BLOCKS, d=(d,) * N_STAGES)


@pytest.fixture(scope="module")
def ofa(shared_dir: Path) -> dict[str, Path]:
    paths = {
        "predictor": shared_dir / "ofa" / "acc_predictor.pth",
        "gpu": shared_dir / "ofa" / "latency_tables" / "jetson_xavier_nx_gpu",
        "cpu": shared_dir / "ofa" / "latency_tables" / "jetson_xavier_nx_cpu",
        "val": shared_dir / "datasets" / "imagenette" / "val-128px.zip",
    }
    for path in paths.values():
        if not path.exists():
            pytest.skip(f"{path} not found")
    return paths


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------------- the paper's search


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_jetson_reproduction(
    device: str, ofa: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"{device}.json"
    report = tmp_path / f"{device}.report.json"
    argv = [
        "search",
        "--latency-table",
        str(ofa[device]),
        "--accuracy-predictor",
        str(ofa["predictor"]),
        "--out",
        str(out),
        "--report",
        str(report),
        "--seed",
        "0",
        "--no-progress",
        *QUICK,
    ]
    assert main(argv) == 0
    family = load_level_table(out, require_bn=False)
    assert family.bn is None and json.loads(out.read_text(encoding="utf-8"))["bn_file"] is None
    levels = family.levels
    assert len(levels) == (7 if device == "cpu" else 6)
    acc = [lv.predicted_accuracy for lv in levels]
    lat = [lv.latency_ms for lv in levels]
    assert all(a is not None for a in acc) and all(lv.accuracy is None for lv in levels)
    assert acc[-1] - acc[0] >= 4.0  # type: ignore[operator]
    assert all(b - a >= 1.0 - 1e-6 for a, b in zip(acc, acc[1:], strict=False))  # type: ignore[operator]
    assert lat[-1] / lat[0] >= 1.8
    # the latencies are the table's, the accuracies the predictor's
    table = LatencyTable.load(ofa[device])
    predictor = MLPAccuracyPredictor.load(ofa["predictor"])
    assert lat == pytest.approx([table.predict(lv.config) for lv in levels], abs=1e-3)
    assert acc == pytest.approx(predictor.predict([lv.config for lv in levels]), abs=1e-3)
    assert {lv.resolution for lv in levels} <= {160, 176, 192, 208, 224}
    # deterministic per seed
    again = tmp_path / "again.json"
    argv[argv.index(str(out))] = str(again)
    argv.remove("--report")
    argv.remove(str(report))
    assert main(argv) == 0
    assert [lv.config for lv in load_level_table(again, require_bn=False).levels] == [
        lv.config for lv in levels
    ]
    data = json.loads(report.read_text(encoding="utf-8"))
    assert len(data["candidates"]) > 1000 and len(data["levels"]) == len(levels)
    assert "wrote" in capsys.readouterr().out


def test_score_prints_level_fields(
    ofa: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfgs = [uniform(160, 3, 3, 2), uniform(224, 7, 6, 4)]
    archs = tmp_path / "archs.json"
    archs.write_text(json.dumps([c.to_dict() for c in cfgs]), encoding="utf-8")
    argv = ["search", "--latency-table", str(ofa["gpu"]), "--accuracy-predictor", str(ofa["predictor"])]
    assert main([*argv, "--score", str(archs)]) == 0
    rows = json.loads(capsys.readouterr().out)
    table = LatencyTable.load(ofa["gpu"])
    predictor = MLPAccuracyPredictor.load(ofa["predictor"])
    assert [r["latency_ms"] for r in rows] == pytest.approx([table.predict(c) for c in cfgs], abs=1e-3)
    assert [r["predicted_accuracy"] for r in rows] == pytest.approx(predictor.predict(cfgs), abs=1e-3)
    for row in rows:
        assert {"level", "resolution", "ks", "e", "d", "latency_ms", "latency_p95_ms", "accuracy"} <= set(row)
        assert {"predicted_accuracy", "accuracy_dataset", "macs_m"} <= set(row)
    # a family/level table is accepted as the architectures file too
    fam = tmp_path / "fam.json"
    fam.write_text(json.dumps({"levels": [c.to_dict() for c in cfgs]}), encoding="utf-8")
    assert main([*argv, "--score", str(fam)]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


# ----------------------------------------------------------------------------------- bad input


def test_search_errors_are_one_line_and_leave_no_file(
    ofa: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "family.json"
    base = ["search", "--latency-table", str(ofa["gpu"]), "--out", str(out), "--no-progress", *QUICK]
    bad = tmp_path / "bad.pth"
    torch.save({"0.weight": torch.zeros(400, 100), "0.bias": torch.zeros(400)}, bad)
    assert main([*base, "--accuracy-predictor", str(bad)]) == 2
    assert "128→400→400→400→1" in one_error_line(capsys.readouterr().err)

    pred = ["--accuracy-predictor", str(ofa["predictor"])]
    assert main([*base, *pred, "--acc-max", "99", "--acc-r", "0.5"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "closest found" in line and "search failed" in line

    assert main([*base, *pred, "--lat-max", "3"]) == 2
    assert "fastest architecture" in one_error_line(capsys.readouterr().err)

    missing = ["search", "--latency-table", str(tmp_path / "nope"), *pred, "--out", str(out)]
    assert main(missing) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)

    assert main([*base, *pred, "--resolutions", "96"]) == 2
    assert "no resolution [96]" in one_error_line(capsys.readouterr().err)

    assert main([*base, *pred, "--score", str(tmp_path / "a.json")]) == 2
    assert "exactly one" in one_error_line(capsys.readouterr().err)

    measured = ["--model", "random", "--allow-random", "--val", str(ofa["val"]), "--calib", str(ofa["val"])]
    assert main([*base, *measured]) == 2
    assert "real weights" in one_error_line(capsys.readouterr().err)
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_module_entry_point_has_no_traceback(tmp_path: Path, ofa: dict[str, Path]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "offline_tools", "search", "--latency-table", str(tmp_path / "x")]
        + ["--accuracy-predictor", str(ofa["predictor"]), "--out", str(tmp_path / "f.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=300,
    )
    assert proc.returncode == 2
    one_error_line(proc.stderr)


def test_profile_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["profile", "--help"])
    assert info.value.code == 0
    assert "--resolutions" in capsys.readouterr().out


def test_experiments_and_train_are_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    for command, option in (("experiments", "--lut-source"), ("train", "--checkpoint-dir")):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        assert option in capsys.readouterr().out
    # the parsed options reach offline_tools.experiments.cli.run, which wants --table and --out
    assert main(["experiments", "--only", "fig6"]) == 2
    assert "--table and --out are required" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- latency tables


def test_profile_and_validate_latency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lut"
    timing = ["--warmup", "0", "--iterations", "2", "--rounds", "1"]
    # --no-progress is accepted before the subcommand as well as after it
    assert main(["--no-progress", "profile", "--resolutions", "64", "--out", str(out), *timing]) == 0
    assert "wrote" in capsys.readouterr().out
    table = LatencyTable.load(out)
    assert table.resolutions == (64,) and len(table.keys(64)) == 96 and table.correction is None
    assert table.metadata["threads"] == 1 and table.metadata["clock"] == "thread_cpu"

    assert main(["profile", "--resolutions", "64", "--out", str(out), *timing, "--no-progress"]) == 2
    assert "already holds" in one_error_line(capsys.readouterr().err)

    report = tmp_path / "validation.json"
    argv = ["validate-latency", "--table", str(out), "--n-subnets", "3", *timing, "--report", str(report)]
    assert main([*argv, "--write", "--no-progress"]) == 2
    assert "--fit-correction" in one_error_line(capsys.readouterr().err)
    status = main([*argv, "--fit-correction", "--write", "--no-progress"])
    captured = capsys.readouterr()
    assert "raw operator sum" in captured.out and "spearman" in captured.out
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["n_subnets"] == 3 and len(data["subnets"]) == 3
    metadata = json.loads((out / METADATA_FILE).read_text(encoding="utf-8"))
    if status == 0:
        assert "stored the correction" in captured.out
        assert metadata["correction"]["scale"] == pytest.approx(data["fitted_correction"]["scale"])
        assert metadata["validation"]["n_subnets"] == 3
    else:  # three quick samples on a busy machine may not fit; the table is then left alone
        assert status == 2 and "no correction to store" in one_error_line(captured.err)
        assert "fit_error" in data and "correction" not in metadata


def test_validate_latency_reports_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate-latency", "--table", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------------- other commands


def test_fit_predictor_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = SearchSpace(resolutions=(96, 112, 128, 144, 160))
    rng = random.Random(0)
    records = []
    for _ in range(60):
        cfg = space.sample(rng)
        n = len(list(cfg.active_blocks()))
        records.append(
            {**cfg.to_dict(), "holdout_top1": 60 + n + (cfg.resolution - 96) / 8, "kind": "random"}
        )
    path = tmp_path / "subnet_accuracy.json"
    path.write_text(json.dumps({"metric": "holdout_top1 (test)", "subnets": records}), encoding="utf-8")
    out = tmp_path / "pred.safetensors"
    argv = ["fit-predictor", "--records", str(path), "--out", str(out), "--epochs", "15", "--hidden", "32"]
    assert main([*argv, "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["encoding"]["base_resolution"] == 96 and printed["encoding"]["step"] == 16
    assert printed["encoding"]["n_slots"] == 5
    assert {"holdout_rmse", "holdout_rank_correlation"} <= set(printed["fit"])
    loaded = MLPAccuracyPredictor.load(out)
    assert loaded.dataset == "holdout_top1 (test) (subnet_accuracy.json)"
    assert main(["fit-predictor", "--records", str(path), "--out", str(tmp_path / "p.pth")]) == 2
    assert ".safetensors" in one_error_line(capsys.readouterr().err)


def test_calibrate_and_plot_commands(
    ofa: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfgs = [uniform(128, 3, 3, 2), uniform(176, 5, 6, 3)]
    family = LevelTable(
        device="cpu",
        device_name="test",
        profiling={},
        supernet={"name": "x", "sha256": "0" * 64},
        calibration={},
        levels=[
            Level(level=i + 1, config=c, latency_ms=5.0 * (i + 1), predicted_accuracy=75.0 + 2 * i)
            for i, c in enumerate(cfgs)
        ],
    )
    fam_path = save_level_table(family, tmp_path / "family.json")
    out = tmp_path / "levels" / "cpu.json"
    common = ["calibrate", "--family", str(fam_path), "--model", "random", "--allow-random"]
    images = ["--calib", str(ofa["val"]), "--calib-images", "6", "--threads", "1", "--batch-size", "6"]
    timing = ["--warmup", "1", "--iterations", "2", "--no-progress"]

    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    import cv2
    import numpy as np

    cv2.imwrite(str(unlabelled / "a.png"), np.zeros((8, 8, 3), dtype=np.uint8))
    assert main([*common, *images, *timing, "--val", str(unlabelled), "--out", str(out)]) == 2
    assert "labels" in one_error_line(capsys.readouterr().err)
    assert not out.exists()

    summary = tmp_path / "summary.json"
    assert main([*common, *images, *timing, "--out", str(out), "--summary", str(summary)]) == 0
    table = load_level_table(out)
    assert table.bn is not None and len(table.levels) == 2
    assert (tmp_path / "levels" / "cpu.bn.safetensors").is_file()
    assert "calibrate_and_evaluate" in json.loads(summary.read_text(encoding="utf-8"))["seconds"]
    capsys.readouterr()

    fig4 = tmp_path / "fig4.png"
    assert main(["plot", "--table", str(out), "--compare", str(fam_path), "--out", str(fig4)]) == 0
    assert fig4.read_bytes().startswith(b"\x89PNG")
    assert main(["plot", "--table", str(out), "--labels", "a", "b", "--out", str(fig4)]) == 2
    assert "--labels" in one_error_line(capsys.readouterr().err)


def test_build_end_to_end(ofa: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "config" / "levels" / "cpu.json"
    summary = tmp_path / "summary.json"
    argv = [
        "build",
        "--latency-table",
        str(ofa["cpu"]),
        "--accuracy-predictor",
        str(ofa["predictor"]),
        "--model",
        "random",
        "--allow-random",
        "--resolutions",
        "160",
        "176",
        "--levels",
        "3",
        "--calib",
        str(ofa["val"]),
        "--calib-images",
        "4",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--warmup",
        "1",
        "--iterations",
        "2",
        "--out",
        str(out),
        "--summary",
        str(summary),
        "--no-progress",
        *["--itr-max", "200", "--itr-n", "100", "--generations", "2", "--population", "8", "--targets", "2"],
    ]
    assert main(argv) == 0
    table = load_level_table(out)
    assert 1 <= len(table.levels) <= 3 and table.bn is not None
    assert table.extra["search"]["candidates"] > 100
    data = json.loads(summary.read_text(encoding="utf-8"))
    assert set(data["stages_seconds"]) >= {"load_model", "search", "calibrate"}
    assert data["candidates_evaluated"] == table.extra["search"]["candidates"]
    assert "wrote" in capsys.readouterr().out
    # one of --latency-table / --profile-out is required; nothing is written on error
    bad = tmp_path / "bad.json"
    assert main(["build", "--model", "random", "--allow-random", "--out", str(bad)]) == 2
    assert "--latency-table" in one_error_line(capsys.readouterr().err) and not bad.exists()
