"""``dynamic_ofa_ros.ros_tools.replay_eval``: labelled photos through the installed node, per level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_replay_eval_measures_top1_through_the_node(shared_dir: Path, tmp_path: Path) -> None:
    from dynamic_ofa_ros.ros_tools import replay_eval

    photos = shared_dir / "datasets" / "imagenette" / "val-224px.zip"
    if not photos.is_file():
        pytest.skip(f"{photos} not found (shared data set)")
    table = REPO / "config" / "levels" / "cpu.json"
    if not table.is_file():
        pytest.skip("config/levels/cpu.json is not shipped in this checkout")
    out = tmp_path / "replay.json"
    argv = ["--images", str(photos), "--levels", "1", "--limit", "30", "--table", str(table)]
    argv += ["--out", str(out)]
    assert replay_eval.main(argv) == 0  # no frame lost in lock-step replay
    result = json.loads(out.read_text())
    (row,) = result["levels"]
    assert row["level"] == 1
    assert row["frames"] == row["answered"] == 30
    claimed = json.loads(table.read_text())["levels"][0]["accuracy"]
    assert row["table_accuracy"] == pytest.approx(claimed)
    # 30 photos: a coarse check that the node classifies them like the table says (82 %)
    assert 50.0 <= row["top1_through_node"] <= 100.0
    assert row["difference"] == pytest.approx(row["top1_through_node"] - claimed, abs=1e-3)
