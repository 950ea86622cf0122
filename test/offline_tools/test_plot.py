"""Tests of offline_tools.plot: Fig. 3 and Fig. 4 as PNG files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dynamic_ofa_ros.arch import SearchSpace
from dynamic_ofa_ros.levels import Level, LevelTable
from offline_tools.pareto import Candidate, choose_levels, pareto_front
from offline_tools.plot import PlotError, load_search_report, plot_search, plot_tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPACE = SearchSpace(resolutions=(160, 224))


def report() -> dict[str, object]:
    rng = random.Random(0)
    cands = [Candidate(SPACE.sample(rng), rng.uniform(75, 85), rng.uniform(15, 30)) for _ in range(200)]
    front = pareto_front(cands)
    levels = choose_levels(front, n_levels=4)
    return {
        "meta": {"device": "test", "predicted": True},
        "candidates": [[c.latency_ms, c.accuracy] for c in cands],
        "front": [c.to_dict() for c in front],
        "levels": [c.to_dict() for c in levels],
    }


def table(device: str, scale: float, measured: bool) -> LevelTable:
    rng = random.Random(1)
    levels = [
        Level(
            level=i + 1,
            config=SPACE.sample(rng),
            latency_ms=scale * (i + 1),
            accuracy=70.0 + 3 * i if measured else None,
            predicted_accuracy=None if measured else 71.0 + 3 * i,
            accuracy_dataset="val" if measured else None,
        )
        for i in range(4)
    ]
    return LevelTable(
        device=device,
        device_name=device,
        profiling={},
        supernet={"name": "x", "sha256": "0" * 64},
        calibration={},
        levels=levels,
    )


def test_fig3_search_png(tmp_path: Path) -> None:
    out = plot_search(report(), tmp_path / "fig3.png", title="test")
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(PlotError, match="png"):
        plot_search(report(), tmp_path / "fig3.pdf")
    with pytest.raises(PlotError, match="no candidates"):
        plot_search({"candidates": [], "front": [], "levels": []}, tmp_path / "x.png")
    bad = tmp_path / "bad.json"
    bad.write_text('{"candidates": []}', encoding="utf-8")
    with pytest.raises(PlotError, match="not a search report"):
        load_search_report(bad)
    with pytest.raises(PlotError, match="does not exist"):
        load_search_report(tmp_path / "missing.json")


def test_fig4_tables_png(tmp_path: Path) -> None:
    out = plot_tables(
        [("ours", table("cpu", 10.0, True)), ("family", table("gpu", 4.0, False))],
        tmp_path / "fig4.png",
        log_latency=True,
    )
    assert out.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(PlotError, match="at least one"):
        plot_tables([], tmp_path / "y.png")
