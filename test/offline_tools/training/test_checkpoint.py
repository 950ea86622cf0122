"""Tests of offline_tools.training.checkpoint: atomic sharded checkpoints, verification, config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from offline_tools.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_JSON,
    CHECKPOINT_LATEST,
    Checkpoint,
    CheckpointError,
    check_resume_config,
    optimizer_state_from_files,
    optimizer_state_to_files,
    read_checkpoint,
    write_checkpoint,
)
from offline_tools.training.config import TrainConfig


def meta(step: int, cfg: TrainConfig) -> dict[str, object]:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "supernet": "ofa_mbv3_d234_e346_k357_w1.2",
        "global_step": step,
        "config": cfg.to_dict(),
    }


def test_write_read_keeps_two_and_detects_corruption(tmp_path: Path) -> None:
    cfg = TrainConfig()
    root = tmp_path / "ck"
    big = torch.arange(3 * 2**20, dtype=torch.float32)  # 12 MiB: two of them need two shards
    groups = {"model": {"a": big, "b": big + 1}, "rng": {"r": torch.zeros(3, dtype=torch.uint8)}}
    folders = [write_checkpoint(root, groups, meta(step, cfg)) for step in (1, 2, 3)]
    assert sorted(p.name for p in root.glob("step-*")) == sorted(p.name for p in folders[1:])
    assert not list(root.glob(".step-*"))
    loaded = read_checkpoint(root)
    assert loaded.folder == folders[2] and loaded.meta["global_step"] == 3
    assert loaded.meta["tensor_files"]["model"] == ["model-0000.safetensors", "model-0001.safetensors"]
    model = loaded.tensors("model")
    assert torch.equal(model["a"], big) and torch.equal(model["b"], big + 1)
    assert json.loads((root / CHECKPOINT_LATEST).read_text())["checkpoint"] == folders[2].name

    shard = folders[2] / "model-0001.safetensors"
    blob = bytearray(shard.read_bytes())
    blob[-1] ^= 0xFF
    shard.write_bytes(bytes(blob))
    with pytest.raises(
        CheckpointError, match=rf"model-0001\.safetensors: SHA-256 mismatch.*{folders[1].name}"
    ):
        read_checkpoint(root)
    assert read_checkpoint(folders[1]).meta["global_step"] == 2  # the older one is intact
    (folders[1] / CHECKPOINT_JSON).write_text("{}")
    with pytest.raises(CheckpointError, match="not a version-1"):
        read_checkpoint(folders[1])
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint(tmp_path)


def test_resume_config_check_names_every_changed_key(tmp_path: Path) -> None:
    cfg = TrainConfig()
    checkpoint = Checkpoint(folder=tmp_path, meta=meta(1, cfg))
    per_call = TrainConfig(time_budget_min=3.0, measure_subnets=0, measure_sweep="none")
    check_resume_config(checkpoint, per_call)  # keys that only decide where a call stops may differ
    with pytest.raises(CheckpointError, match=r"epochs: checkpoint 50, now 3.*lr: checkpoint 0\.2, now 0\.1"):
        check_resume_config(checkpoint, TrainConfig(epochs=3, lr=0.1))


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_state_round_trip(kind: str) -> None:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]

    def make() -> torch.optim.Optimizer:
        if kind == "sgd":
            return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True)
        return torch.optim.AdamW(params, lr=0.1, betas=(0.9, 0.999))

    opt = make()
    for _ in range(2):
        opt.zero_grad()
        sum(p.square().sum() for p in params).backward()
        opt.step()
    tensors, rest = optimizer_state_to_files(opt)
    rest = json.loads(json.dumps(rest))  # what checkpoint.json holds
    other = make()
    other.load_state_dict(optimizer_state_from_files(tensors, rest))
    a, b = opt.state_dict(), other.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for idx, entry in a["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][idx][key])), (idx, key)
