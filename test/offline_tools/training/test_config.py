"""Tests of offline_tools.training.config: defaults, JSON file, overrides, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offline_tools.training.config import TrainConfig, load_config


def test_config_rejects_unknown_keys_and_parses_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 3, "resolutions": [128, 96, 96]}))
    cfg = load_config(path, ["lr=0.05", "measure_sweep=none"])
    assert (cfg.epochs, cfg.resolutions, cfg.lr, cfg.measure_sweep) == (3, [96, 128], 0.05, "none")
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(path, ["nope=1"])
    with pytest.raises(ValueError, match="multiples of 4"):
        load_config(path, ["resolutions=[97]"])
    with pytest.raises(ValueError, match="expected key=value"):
        load_config(None, ["lr"])
    with pytest.raises(ValueError, match="kd_ratio"):
        load_config(None, ["kd_ratio=1.5"])


def test_release_config_is_valid(repo_root: Path) -> None:
    cfg = load_config(repo_root / "config" / "train_supernet.json", [])
    assert cfg.resolutions == [96, 112, 128, 144, 160]
    assert cfg.batch_size == 256 and not cfg.channels_last and not cfg.cudnn_benchmark
    assert TrainConfig.from_mapping(cfg.to_dict(), where="round trip") == cfg
