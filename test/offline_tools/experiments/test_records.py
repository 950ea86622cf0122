"""The metric rules of ``offline_tools.experiments.records`` on scripted traces (no model, no timing)."""

from __future__ import annotations

import math

import pytest

from offline_tools.experiments.records import (
    RunRecord,
    analyse_run,
    combine_models,
    find_events,
    metric_fields,
)

ACC = {1: 70.0, 2: 75.0, 3: 80.0}
LUT = {1: 2.0, 2: 4.0, 3: 6.0}


def _rec(levels: list[int], lat: list[float], budget: list[float], load: list[int]) -> RunRecord:
    rec = RunRecord(name="t")
    for i, (lv, la, bu, lo) in enumerate(zip(levels, lat, budget, load, strict=True)):
        rec.append(i * 0.01, lv, la, la, bu, lo)
    return rec


def _load_step() -> RunRecord:
    # 30 frames alone at level 3 (5 ms, budget 8), load from frame 30: level 3 takes 12 ms for
    # 20 frames, then the manager is at level 1 (6 ms) until the load ends at frame 80; back at 3 at 100.
    levels = [3] * 50 + [1] * 50 + [3] * 20
    lat = [5.0] * 30 + [12.0] * 20 + [6.0] * 50 + [5.0] * 20
    load = [0] * 30 + [1] * 50 + [0] * 40
    return _rec(levels, lat, [8.0] * 120, load)


def test_analyse_run_on_a_scripted_load_step() -> None:
    m = analyse_run(_load_step(), window=10, accuracy=ACC, alone_lut=LUT)
    kinds = [e["kind"] for e in m["events"]]
    assert kinds == ["start", "load_on", "load_off"]
    assert m["reaction_frames"] == 20  # frames 30..49 violate, from frame 50 a full window fits
    assert m["reaction_ms"] == pytest.approx(200.0)
    assert m["recovery_frames"] == 20  # level 3 (the LUT choice for 8 ms) again at frame 100
    assert m["recovery_events"] == 1
    assert m["deadline_hit_after_reaction"] == 1.0  # the 20 violating frames are excluded
    assert m["deadline_hit_all"] == pytest.approx(100 / 120)
    assert m["mean_accuracy"] == pytest.approx((70 * 50 + 80 * 70) / 120)
    assert m["switches"] == 2 and m["level_share"] == {1: round(50 / 120, 4), 3: round(70 / 120, 4)}
    assert m["latency_ms_p50"] == pytest.approx(6.0)


def test_a_baseline_is_scored_on_the_dynamic_runs_frames() -> None:
    dynamic = analyse_run(_load_step(), window=10, accuracy=ACC, alone_lut=LUT)
    load = [0] * 30 + [1] * 50 + [0] * 40
    static = _rec([3] * 120, [5.0] * 30 + [12.0] * 50 + [5.0] * 40, [8.0] * 120, load)
    sm = analyse_run(
        static, window=10, accuracy=ACC, alone_lut=LUT, reaction_from=dynamic["events"], static=True
    )
    assert sm["reaction_frames"] is None  # never meets the budget under load
    assert sm["recovery_frames"] is None and sm["recovery_events"] == 0  # nothing to recover
    assert sm["deadline_hit_after_reaction"] == pytest.approx(70 / 100)
    # a static level below the LUT level: only the deadline counts for its reaction
    low = analyse_run(
        _rec([1] * 20, [1.0] * 20, [8.0] * 20, [0] * 20), window=10, accuracy=ACC, alone_lut=LUT, static=True
    )
    assert low["reaction_frames"] == 0 and low["deadline_hit_after_reaction"] == 1.0


def test_budget_changes_are_events_with_the_lut_target() -> None:
    rec = _rec([3] * 5 + [1] * 5, [5.0] * 10, [8.0] * 5 + [3.0] * 5, [0] * 10)
    events = find_events(rec, LUT)
    assert [(e.kind, e.frame, e.target) for e in events] == [("start", 0, 3), ("budget", 5, 1)]
    m = analyse_run(rec, window=2, accuracy=ACC, alone_lut=LUT)
    # level 1 at once, but 5 ms > 3 ms budget: the deadline part never completes
    assert m["events"][1]["level_frames"] == 0 and m["events"][1]["deadline_frames"] is None
    assert m["reaction_frames"] is None


def test_an_empty_run_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no frame"):
        analyse_run(RunRecord(name="x"), window=4, accuracy=ACC, alone_lut=LUT)


def test_combine_models_pools_frames_and_takes_the_worst_reaction() -> None:
    a = analyse_run(_load_step(), window=10, accuracy=ACC, alone_lut=LUT)
    b = analyse_run(_rec([3] * 40, [5.0] * 40, [8.0] * 40, [0] * 40), window=10, accuracy=ACC, alone_lut=LUT)
    both = combine_models({"A": a, "B": b}, 10)
    assert both["frames"] == 160
    assert both["reaction_frames"] == 20 and both["reaction_ms"] == pytest.approx(200.0)
    assert both["recovery_frames"] == 20  # only A's load stopped
    assert both["mean_accuracy"] == pytest.approx((a["mean_accuracy"] * 120 + 80.0 * 40) / 160)
    assert metric_fields(both)["window_size"] == 10
    assert set(metric_fields(a)) == set(metric_fields(both))


def test_compact_timeline_strides() -> None:
    rec = _rec([1] * 10, [1.0] * 10, [2.0] * 10, [0] * 10)
    c = rec.compact(4)
    assert c["stride"] == 3 and c["frames"] == 10 and len(c["t"]) == 4
    assert math.isclose(c["t"][1], 0.03)
    rec.shift(1.0)
    assert rec.t[0] == 1.0 and rec.t_offset_s == 1.0
