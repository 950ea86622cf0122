"""Tests of offline_tools.latency.profile and .validate: tiny real profiling and validation runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SubnetConfig
from offline_tools.errors import LatencyTableError
from offline_tools.latency.profile import profile_latency_table
from offline_tools.latency.table import METADATA_FILE, LatencyTable
from offline_tools.latency.validate import validate_latency_table, validation_summary


def uniform(resolution: int, ks: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=resolution, ks=(ks,) * N_BLOCKS, e=(e,) * N_BLOCKS, d=(d,) * N_STAGES)


def test_tiny_profile_roundtrip_and_validate(tmp_path: Path) -> None:
    small = uniform(64, ks=3, e=3, d=2)
    other = uniform(64, ks=5, e=4, d=2)
    large = uniform(64, ks=7, e=6, d=3)
    table = profile_latency_table(
        device="cpu",
        resolutions=[64],
        configs=[small, other, large],
        warmup=1,
        iterations=3,
        rounds=2,
        progress=False,
    )
    assert table.resolutions == (64,)
    assert table.metadata["mode"] == "eager" and table.metadata["threads"] == 1
    assert table.metadata["subset"] is True
    assert all(table.entry(64, k).count >= 1 for k in table.keys(64))
    out = table.save(tmp_path / "cpu")
    loaded = LatencyTable.load(out)
    assert loaded.predict(small) == pytest.approx(table.predict(small))
    assert loaded.metadata["torch"] and loaded.metadata["device_name"]
    assert json.loads((out / METADATA_FILE).read_text())["format"] == "dynamic_ofa_ros.latency_table"

    report = validate_latency_table(
        loaded,
        configs=[small, other, large],
        warmup=1,
        iterations=2,
        rounds=1,
        fit=True,
        paired=True,
        progress=False,
    )
    assert "fitted_correction" in report or "fit_error" in report
    for field in ("n_subnets", "device", "device_name", "mode", "threads", "clock", "raw", "subnets"):
        assert field in report
    for block in ("raw", "raw_wall", "paired"):
        assert set(report[block]) >= {"mean_abs_pct_error", "max_abs_pct_error", "spearman"}
    assert report["n_subnets"] == 3 and len(report["subnets"]) == 3
    assert report["subnets"][0]["measured_ms"] > 0
    assert report["subnets"][0]["measured_median_ms"] > 0
    summary = validation_summary(report)
    assert set(summary) >= {"n_subnets", "clock", "raw", "raw_wall", "paired"} and "subnets" not in summary


def test_profile_bad_options() -> None:
    with pytest.raises(LatencyTableError, match="CUDA"):
        profile_latency_table(device="cpu", mode="cuda_graph", resolutions=[64], progress=False)
    with pytest.raises(LatencyTableError, match="no resolutions"):
        profile_latency_table(resolutions=[], progress=False)
    with pytest.raises(LatencyTableError, match="resolution 63"):
        profile_latency_table(resolutions=[63], progress=False)


@pytest.mark.cuda
def test_cuda_graph_profile_and_validate_tiny(tmp_path: Path) -> None:
    small = uniform(64, ks=3, e=3, d=2)
    large = uniform(64, ks=7, e=6, d=3)
    table = profile_latency_table(
        device="cuda",
        mode="cuda_graph",
        resolutions=[64],
        configs=[small, large],
        warmup=2,
        iterations=4,
        rounds=2,
        progress=False,
    )
    assert table.metadata["mode"] == "cuda_graph" and table.metadata["clock"] == "cuda_events"
    assert 0 < table.predict(small) < table.predict(large)
    loaded = LatencyTable.load(table.save(tmp_path / "gpu"))
    report = validate_latency_table(
        loaded,
        configs=[small, large],
        device="cuda",
        mode="cuda_graph",
        iterations=4,
        rounds=2,
        paired=True,
        progress=False,
    )
    assert report["clock"] == "cuda_events" and report["subnets"][1]["measured_ms"] > 0
    assert "paired" in report
