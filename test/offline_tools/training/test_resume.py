"""Resumable runs (--checkpoint-dir / --resume / --stop-after-steps): bit-exact continuation, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from offline_tools import train_supernet
from offline_tools.training.checkpoint import CHECKPOINT_JSON, read_checkpoint
from offline_tools.training.config import METRICS_FILE

RESUME_SETS: dict[str, Any] = {
    "holdout_images": 10,
    "calib_images": 20,
    "batch_size": 4,
    "epochs": 2,
    "max_steps_per_epoch": 2,  # 4 planned steps
    "warmup_epochs": 0.5,
    "n_random_subnets": 1,
    "resolutions": [64, 96],
    "measure_sweep": "none",
    "final_calib_images": 4,
    "measure_calib_images": 4,
    "eval_every_epochs": 2,
    "decode_threads": 2,
}


def resume_argv(data: Path, out: Path, *extra: str, budget_min: float = 30.0) -> list[str]:
    argv = ["--data", str(data), "--out", str(out), "--device", "cpu", "--measure-subnets", "0"]
    argv += ["--time-budget-min", str(budget_min), *extra]
    for key, value in RESUME_SETS.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    return argv


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory: pytest.TempPathFactory, tiny_zip: Path) -> dict[str, Path]:
    """One uninterrupted 4-step run and the same run split 3 + 1 steps, each with a checkpoint."""
    root = tmp_path_factory.mktemp("resume")
    main = train_supernet.main
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the CPU kernels' reductions run in one fixed order
    try:
        assert main(resume_argv(tiny_zip, root / "full", "--checkpoint-dir", str(root / "ck_full"))) == 0
        first = resume_argv(tiny_zip, root / "part1", "--checkpoint-dir", str(root / "ck_split"))
        assert main([*first, "--stop-after-steps", "3"]) == 0  # stops inside the second epoch
        # a different time budget is allowed between calls (it only decides where a call ends)
        second = resume_argv(tiny_zip, root / "part2", "--resume", str(root / "ck_split"), budget_min=31.0)
        assert main([*second, "--checkpoint-dir", str(root / "ck_split")]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "data": tiny_zip}


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(resumed_runs: dict[str, Path]) -> None:
    root = resumed_runs["root"]
    metrics = {n: json.loads((root / n / METRICS_FILE).read_text()) for n in ("full", "part1", "part2")}
    assert metrics["part1"]["training"]["steps_done"] == 3 and metrics["part1"]["training"]["paused"]
    assert metrics["part2"]["training"]["resumed_at_step"] == 3
    for name in ("full", "part2"):
        training = metrics[name]["training"]
        assert training["steps_done"] == 4 and not training["stopped_early"] and not training["paused"]
        assert metrics[name]["status"] == "ok"
    full, split = read_checkpoint(root / "ck_full"), read_checkpoint(root / "ck_split")
    assert full.meta["global_step"] == split.meta["global_step"] == 4
    assert full.meta["schedule"]["complete"] and [c["end_step"] for c in split.meta["calls"]] == [3, 4]
    assert len(list((root / "ck_split").glob("step-*"))) == 2  # the new one and the one before it
    # Exact equality (torch.equal, no tolerance): on the CPU with one thread and the same seeds the
    # kernels are deterministic, and a resumed run restores every state the next step reads (weights,
    # BN statistics, momentum, all four random generators, the epoch's permutation), so any
    # difference at all would mean a state was lost. Checked to hold for the model and optimizer.
    for group in ("model", "optimizer"):
        a, b = full.tensors(group), split.tensors(group)
        assert a.keys() == b.keys() and a
        assert all(torch.equal(a[k], b[k]) for k in a), group
    loss_keys = ("epoch", "steps", "global_step", "lr", "loss_largest", "loss_students")
    curves = [
        [{k: e[k] for k in loss_keys} for e in m["training"]["epochs"]]
        for m in (metrics["full"], metrics["part2"])
    ]
    assert curves[0] == curves[1] and len(curves[0]) == 2
    for shard in sorted(p.name for p in (root / "full").glob("supernet-*.safetensors")):
        a, b = load_file(root / "full" / shard), load_file(root / "part2" / shard)
        assert all(torch.equal(a[k], b[k]) for k in a)  # the exported (fp16) weights too


@pytest.mark.slow
def test_resume_rejects_a_corrupted_checkpoint(resumed_runs: dict[str, Path], tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    shutil.copytree(resumed_runs["root"] / "ck_split", ckpt)
    folder = read_checkpoint(ckpt).folder
    shard = folder / "model-0000.safetensors"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    argv = resume_argv(resumed_runs["data"], tmp_path / "out", "--resume", str(ckpt))
    with pytest.raises(SystemExit, match=r"model-0000\.safetensors: SHA-256 mismatch.*corrupted"):
        train_supernet.main(argv)
    (folder / CHECKPOINT_JSON).write_text("{}")  # the JSON itself is checked against LATEST.json
    with pytest.raises(SystemExit, match=r"checkpoint\.json: SHA-256 differs"):
        train_supernet.main(argv)
    with pytest.raises(SystemExit, match="no checkpoint"):
        train_supernet.main(resume_argv(resumed_runs["data"], tmp_path / "out", "--resume", str(tmp_path)))
    assert not (tmp_path / "out").exists()  # it failed before doing any work


@pytest.mark.slow
def test_resume_rejects_another_config(resumed_runs: dict[str, Path], tmp_path: Path) -> None:
    argv = resume_argv(
        resumed_runs["data"], tmp_path / "out", "--resume", str(resumed_runs["root"] / "ck_split")
    )
    with pytest.raises(SystemExit, match=r"config differs.*epochs: checkpoint 2, now 3.*same --config"):
        train_supernet.main([*argv, "--epochs", "3"])
    with pytest.raises(SystemExit, match=r"lr: checkpoint 0\.2, now 0\.1"):
        train_supernet.main([*argv, "--set", "lr=0.1"])
