"""The demo's building blocks without ROS transport: photos, per-phase statistics, table, plot.

The full demo (``make demo``) runs the installed node for about two minutes; its ROS parts (bag
writing/reading, the player) are exercised by test/node/test_rosbag_replay.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def test_load_photos_from_skimage_and_folder(tmp_path: Path) -> None:
    import cv2

    from dynamic_ofa_ros.ros_tools.photos import FRAME_SIZE, load_photos

    pytest.importorskip("skimage", reason="scikit-image ships the demo photos")
    frames, where = load_photos(None)
    assert len(frames) >= 5 and "skimage" in where
    assert all(f.shape == (FRAME_SIZE[1], FRAME_SIZE[0], 3) and f.dtype == np.uint8 for f in frames)
    folder = tmp_path / "photos" / "cls"
    folder.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((50, 60, 3), 40 * i, np.uint8))
    frames, where = load_photos(str(tmp_path / "photos"), size=(64, 48))
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3) and "ImageFolder" in where


def test_phase_statistics_table_and_plot(tmp_path: Path) -> None:
    from dynamic_ofa_ros.ros_tools.report import Recorder, Sample, format_table, phase_result, plot_timeline
    from dynamic_ofa_ros.ros_tools.scenario import NODE_A, NODE_B

    recorder = Recorder(t0=0.0)
    for i in range(40):
        level = 3 if i < 20 else 1
        recorder.samples.append(
            Sample(i * 0.1, NODE_A, level, 30.0 if level == 3 else 10.0, 8.0, "tabby", 20.0)
        )
        recorder.samples.append(Sample(i * 0.1 + 0.05, NODE_B, 2, 15.0, 12.0, "cat", 25.0))
    accuracy = [60.0, 70.0, 80.0]
    result = phase_result(recorder, "tight", NODE_A, 0.0, 4.0, 20.0, accuracy)
    assert result.frames == 40 and result.levels == {"3": 20, "1": 20} and result.final_level == 1
    assert result.hit_pct == 50.0 and result.mean_ms == 20.0 and result.expected_accuracy == 60.0
    assert result.fps == 10.0
    empty = phase_result(recorder, "none", NODE_A, 10.0, 11.0, 20.0, accuracy)
    assert empty.frames == 0 and math.isnan(empty.hit_pct)
    no_budget = phase_result(recorder, "free", NODE_B, 0.0, 4.0, 0.0, accuracy)
    assert no_budget.hit_pct == 100.0
    table = format_table([result, no_budget], meaningful=False)
    assert "tight" in table and "L1:20" in table and "none" in table and "random weights" in table

    out = tmp_path / "docs" / "demo.png"
    plot_timeline(
        recorder,
        [("tight", 0.0, 2.0), ("loose", 2.0, 4.0)],
        {NODE_A: [(0.0, 0.0), (1.0, 20.0)], NODE_B: [(0.5, 25.0)]},
        3,
        out,
        title="test",
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p.name != "demo.png"], "temporary files left behind"


def test_demo_help(capsys: Any) -> None:
    from dynamic_ofa_ros.ros_tools.demo import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--phase-s" in capsys.readouterr().out


@pytest.mark.ros
@pytest.mark.slow
def test_demo_runs_every_phase(tmp_path: Path, capsys: Any) -> None:
    """The whole demo with short phases: two node processes, budgets by service, table, plot, JSON."""
    from dynamic_ofa_ros.ros_tools.demo import main
    from dynamic_ofa_ros.ros_tools.scenario import NODE_A, NODE_B

    pytest.importorskip("skimage", reason="scikit-image ships the demo photos")
    if not (Path(__file__).resolve().parents[2] / "config" / "levels" / "cpu.json").is_file():
        pytest.skip("config/levels/cpu.json is not shipped in this checkout")
    out = tmp_path / "demo.png"
    assert main(["--device", "cpu", "--phase-s", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.with_suffix(".json").read_text())
    phases = [(p["phase"], p["node"]) for p in report["phases"]]
    assert phases == [
        ("no budget", NODE_A),
        ("level 1 held", NODE_A),  # the budgets' second probe
        ("tight", NODE_A),
        ("loose", NODE_A),
        ("medium", NODE_A),
        ("A+B co-located", NODE_A),
        ("A+B co-located", NODE_B),
    ]
    assert all(p["frames"] > 0 for p in report["phases"][:5])
    assert report["phases"][1]["final_level"] == 1
    budgets = report["budgets_ms"]
    assert 0 < budgets["tight"] <= budgets["medium"] < budgets["loose"]
    assert budgets[NODE_B] == pytest.approx(budgets["medium"] * 1.2, abs=1e-3)
    assert [p["budget_ms"] for p in report["phases"][2:5]] == [
        round(budgets[name], 2) for name in ("tight", "loose", "medium")
    ]
    assert {row[1] for row in report["samples"]} == {NODE_A, NODE_B}
    table = printed[printed.index("phase ") :]
    assert all(name in table for name in ("no budget", "tight", "loose", "medium", "A+B co-located"))


def test_budgets_fit_the_scaled_and_fixed_parts_and_pick_the_middle_by_latency() -> None:
    from dynamic_ofa_ros.ros_tools.report import Sample
    from dynamic_ofa_ros.ros_tools.scenario import Budgets

    def samples(level: int, inference_ms: float) -> list[Sample]:
        return [
            Sample(t=i, node="a", level=level, latency_ms=inference_ms + 1.5, inference_ms=inference_ms,
                   label="", budget_ms=0.0)
            for i in range(9)
        ]  # fmt: skip

    table = [4.0, 4.5, 5.0, 11.0, 15.0, 19.0]  # the shape of the shipped CPU table, ms
    # a camera frame's resize adds 2 ms at every level; the machine is as fast as when profiled
    budgets = Budgets.from_warmup(samples(6, 21.0), samples(1, 6.0), table)
    assert budgets.slowdown == pytest.approx(1.0) and budgets.fixed_ms == pytest.approx(2.0)
    assert budgets.overhead_ms == pytest.approx(1.5)
    assert budgets.tight == pytest.approx((4.0 + 2.0 + 1.5) * 1.2)
    assert budgets.loose == pytest.approx(22.5 * 1.5)
    # the middle by latency: sqrt(4 * 19) = 8.7 ms is nearest level 4 (11 ms), not level 3 (5 ms)
    assert budgets.medium == pytest.approx((11.0 + 2.0 + 1.5) * 1.2)
    # a machine twice as busy scales every level
    busy = Budgets.from_warmup(samples(6, 38.0), samples(1, 8.0), table)
    assert busy.slowdown == pytest.approx(2.0) and busy.fixed_ms == pytest.approx(0.0)
    assert busy.tight == pytest.approx((8.0 + 1.5) * 1.2)
    # probes that do not separate (noise) fall back to scaling by the top level
    flat = Budgets.from_warmup(samples(6, 19.0), samples(1, 20.0), table)
    assert flat.slowdown == pytest.approx(1.0) and flat.fixed_ms == pytest.approx(0.0)
