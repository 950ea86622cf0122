"""Runtime manager: LUT / reactive / auto / manual decisions on scripted latency traces.

Time comes from a fake clock and latencies from the scripts, so nothing here is timed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from dynamic_ofa_ros.errors import ConstraintError, DofaError, LevelTableError, UnknownLevelError
from dynamic_ofa_ros.manager import (
    Decision,
    LevelSpec,
    ManagerConfig,
    RuntimeManager,
    level_specs,
    validate_levels,
)
from dynamic_ofa_ros.timing import percentile

LATENCIES = (10.0, 14.0, 20.0, 28.0, 40.0)
ACCURACIES = (70.0, 73.0, 76.0, 78.0, 80.0)
W = 10


def family(
    latencies: tuple[float, ...] = LATENCIES, accuracies: tuple[float, ...] = ACCURACIES
) -> list[LevelSpec]:
    return [
        LevelSpec(i + 1, lat, acc) for i, (lat, acc) in enumerate(zip(latencies, accuracies, strict=True))
    ]


class FakeClock:
    """Seconds; advanced by the simulated frames."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Run:
    manager: RuntimeManager
    clock: FakeClock
    levels: list[int] = field(default_factory=list)  # level used by each frame
    switches: list[tuple[int, Decision]] = field(default_factory=list)  # (frame index, decision)


def make(
    config: ManagerConfig | None = None, *, budget: float | None = 30.0, min_accuracy: float = 0.0
) -> Run:
    clock = FakeClock()
    run: Run
    manager = RuntimeManager(
        family(), config, clock=clock, on_switch=lambda d: run.switches.append((len(run.levels), d))
    )
    run = Run(manager, clock)
    if budget is not None:
        manager.set_constraints(latency_budget_ms=budget, min_accuracy=min_accuracy)
    run.switches.clear()
    return run


def drive(run: Run, frames: int, latency: Callable[[int, int], float]) -> None:
    """Run ``frames`` frames; ``latency(frame, level)`` gives each frame's measured latency."""
    for _ in range(frames):
        frame = len(run.levels)
        level = run.manager.current_level
        lat = latency(frame, level)
        run.levels.append(level)
        run.clock.now += lat / 1000.0
        run.manager.observe(lat)


def profiled(level: int) -> float:
    return LATENCIES[level - 1]


def assert_one_move_per_window(run: Run) -> None:
    frames = [frame for frame, d in run.switches if d.reason in ("violation", "slack", "coordinator")]
    for earlier, later in zip(frames, frames[1:], strict=False):
        assert later - earlier >= W, f"moves at frames {earlier} and {later} are less than a window apart"


# ---------------------------------------------------------------- level specs and config


def test_level_spec_from_table_row_is_duck_typed() -> None:
    @dataclass
    class Row:
        level: int
        latency_ms: float
        accuracy: float | None
        predicted_accuracy: float | None = None

    assert LevelSpec.from_level(Row(1, 9.5, 71.0)) == LevelSpec(1, 9.5, 71.0)
    assert LevelSpec.from_level(Row(2, 12, None, 74.5)) == LevelSpec(2, 12.0, 74.5)

    @dataclass
    class Table:
        levels: list[Row]

    specs = level_specs(Table([Row(1, 9.5, 71.0), Row(2, 12.0, 74.0)]))
    assert [s.level for s in specs] == [1, 2]
    with pytest.raises(LevelTableError, match="neither a measured nor a predicted accuracy"):
        LevelSpec.from_level(Row(1, 9.5, None))
    with pytest.raises(LevelTableError, match="latency_ms"):
        LevelSpec.from_level(object())


@pytest.mark.parametrize(
    ("level", "latency", "accuracy", "match"),
    [
        (0, 10.0, 70.0, ">= 1"),
        (1.5, 10.0, 70.0, "not an integer"),
        (1, math.nan, 70.0, "finite"),
        (1, -1.0, 70.0, "positive"),
        (1, 10.0, 101.0, r"\[0, 100\]"),
        (1, "fast", 70.0, "not a number"),
    ],
)
def test_level_spec_rejects_bad_values(level: object, latency: object, accuracy: object, match: str) -> None:
    with pytest.raises(LevelTableError, match=match):
        LevelSpec(level, latency, accuracy)  # type: ignore[arg-type]


def test_level_family_validation() -> None:
    with pytest.raises(LevelTableError, match="empty"):
        validate_levels([])
    with pytest.raises(LevelTableError, match="numbered 1..2"):
        validate_levels([LevelSpec(1, 10, 70), LevelSpec(3, 20, 75)])
    with pytest.raises(LevelTableError, match="strictly increasing latency"):
        validate_levels([LevelSpec(1, 10, 70), LevelSpec(2, 10, 75)])
    with pytest.raises(LevelTableError, match="Pareto"):
        validate_levels([LevelSpec(1, 10, 70), LevelSpec(2, 20, 65)])
    # equal accuracies are allowed (e.g. a random-weight table)
    assert len(validate_levels([LevelSpec(1, 10, 0.1), LevelSpec(2, 20, 0.1)])) == 2
    with pytest.raises(LevelTableError):
        RuntimeManager([LevelSpec(2, 10, 70)])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_size": 0},
        {"window_size": 2.5},
        {"mode": "manual"},
        {"priority": "speed"},
        {"violation_statistic": "max"},
        {"up_margin": 0.99, "down_margin": 0.9},
        {"up_margin": math.nan},
        {"down_margin": 1.5},
        {"up_windows": 0},
        {"max_budget_ms": -1.0},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConstraintError):
        ManagerConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        ManagerConfig(10)  # type: ignore[call-arg]


# ---------------------------------------------------------------- LUT choice


def test_no_budget_runs_the_most_accurate_level() -> None:
    run = make(budget=None)
    state = run.manager.status()
    assert state.level == 5 and state.budget_ms is None and state.unmet == "" and state.mode == "lut"
    drive(run, 3 * W, lambda f, lvl: 500.0)
    assert run.manager.current_level == 5 and state.violations == 0


@pytest.mark.parametrize(
    ("budget", "level", "unmet"),
    [(100.0, 5, ""), (40.0, 5, ""), (39.9, 4, ""), (20.0, 3, ""), (13.0, 1, ""), (9.0, 1, "latency")],
)
def test_lut_choice_by_budget(budget: float, level: int, unmet: str) -> None:
    manager = RuntimeManager(family(), ManagerConfig(mode="lut"))
    decision = manager.set_constraints(latency_budget_ms=budget)
    assert (decision.level, decision.unmet, decision.reason) == (level, unmet, "constraints")
    assert manager.current_level == level and manager.status().unmet == unmet


@pytest.mark.parametrize(
    ("priority", "budget", "min_accuracy", "level", "unmet"),
    [
        ("latency", 30.0, 75.0, 4, ""),  # both met: the most accurate within budget
        ("accuracy", 30.0, 75.0, 4, ""),
        ("latency", 15.0, 76.0, 2, "accuracy"),  # budget wins: best within budget
        ("accuracy", 15.0, 76.0, 3, "latency"),  # floor wins: fastest meeting the floor
        ("latency", 9.0, 76.0, 1, "both"),
        ("accuracy", 9.0, 76.0, 3, "latency"),
        ("accuracy", 30.0, 99.0, 5, "both"),  # nobody meets the floor: the most accurate
        ("latency", 30.0, 99.0, 4, "accuracy"),
    ],
)
def test_lut_choice_with_accuracy_floor(
    priority: str, budget: float, min_accuracy: float, level: int, unmet: str
) -> None:
    manager = RuntimeManager(family(), ManagerConfig(priority=priority))
    decision = manager.set_constraints(latency_budget_ms=budget, min_accuracy=min_accuracy)
    assert (decision.level, decision.unmet) == (level, unmet)
    state = manager.status()
    assert state.expected_accuracy == ACCURACIES[level - 1]
    assert state.min_accuracy == min_accuracy and state.budget_ms == budget


def test_none_clears_a_constraint() -> None:
    run = make(budget=20.0, min_accuracy=70.0)
    run.manager.set_constraints(latency_budget_ms=None, min_accuracy=None)
    state = run.manager.status()
    assert state.budget_ms is None and state.min_accuracy == 0.0 and state.level == state.n_levels


@pytest.mark.parametrize(
    ("budget", "min_accuracy"),
    [
        (math.nan, 0.0),
        (math.inf, 0.0),
        (-5.0, 0.0),
        (0.0, 0.0),
        (1e9, 0.0),
        ("50", 0.0),
        (True, 0.0),
        (30.0, -1.0),
        (30.0, 100.5),
        (30.0, math.nan),
        (30.0, "70"),
    ],
)
def test_rejected_constraints_leave_the_previous_in_force(budget: object, min_accuracy: object) -> None:
    run = make(budget=20.0, min_accuracy=70.0)
    drive(run, W + 3, lambda f, lvl: profiled(lvl))
    before = run.manager.status()
    with pytest.raises(ConstraintError) as info:
        run.manager.set_constraints(latency_budget_ms=budget, min_accuracy=min_accuracy)  # type: ignore[arg-type]
    assert isinstance(info.value, DofaError) and isinstance(info.value, ValueError)
    assert run.manager.status() == before
    assert run.switches == []


def test_constraint_change_takes_effect_for_the_next_frame() -> None:
    run = make(budget=30.0)
    drive(run, 5, lambda f, lvl: profiled(lvl))
    assert run.levels[-1] == 4
    decision = run.manager.set_constraints(latency_budget_ms=12.0)
    assert decision.switched and decision.level == 1 and decision.previous_level == 4
    assert run.switches[-1][1] == decision
    drive(run, 1, lambda f, lvl: profiled(lvl))
    assert run.levels[-1] == 1
    decision = run.manager.set_constraints(latency_budget_ms=100.0)
    assert decision.level == 5
    drive(run, 1, lambda f, lvl: profiled(lvl))
    assert run.levels[-1] == 5


# ---------------------------------------------------------------- reactive control


@pytest.mark.parametrize("mode", ["auto", "reactive"])
@pytest.mark.parametrize("onset", [50, 55, 59])
def test_load_step_is_absorbed_within_two_windows_and_released(mode: str, onset: int) -> None:
    run = make(ManagerConfig(mode=mode, window_size=W), budget=30.0)
    end = 200

    def trace(frame: int, level: int) -> float:
        return profiled(level) * (3.0 if onset <= frame < end else 1.0)

    drive(run, 300, trace)
    levels = run.levels
    assert levels[:onset] == [4] * onset  # the LUT choice, alone
    # back within budget within two windows of the load step
    first_ok = next(f for f in range(onset, end) if trace(f, levels[f]) <= 30.0)
    assert first_ok - onset <= 2 * W
    assert all(trace(f, levels[f]) <= 30.0 for f in range(first_ok, end))
    # the load stays: no oscillation while it lasts
    assert len(set(levels[onset + 2 * W + 1 : end])) == 1
    # after the load ends the level climbs back, then stays: in auto mode to the LUT choice (its
    # profiled latency fits within down_margin); in reactive mode only to what fits within up_margin
    assert levels[-1] == (4 if mode == "auto" else 3)
    assert len(set(levels[end + 7 * W :])) == 1
    assert len(run.switches) <= 5
    assert_one_move_per_window(run)
    state = run.manager.status()
    assert 0 < state.last_reaction_frames <= 2 * W
    assert state.last_reaction_ms == pytest.approx(
        sum(trace(f, levels[f]) for f in range(onset, onset + state.last_reaction_frames))
    )
    assert state.mode == "reactive" and state.unmet == ""
    assert state.violations == sum(trace(f, levels[f]) > 30.0 for f in range(len(levels)))


def test_step_down_jumps_directly_to_the_level_predicted_to_fit() -> None:
    run = make(budget=30.0)
    drive(run, 3 * W, lambda f, lvl: profiled(lvl) * (2.0 if f >= W else 1.0))
    # x2: level 2 (14 -> 28 ms) is the best that fits within 0.95 x 30; one move from level 4
    assert run.levels[2 * W :] == [2] * W
    assert [(d.previous_level, d.level, d.reason) for _, d in run.switches] == [(4, 2, "violation")]
    assert run.manager.status().slowdown == pytest.approx(2.0)


def test_hysteresis_keeps_a_level_whose_next_level_fits_only_narrowly() -> None:
    # level 3 runs at 27.6 ms under a x1.38 load; level 4 would need 38.6 > 30: no step up, ever,
    # and level 3 itself sits just inside the budget: no step down either.
    run = make(ManagerConfig(mode="reactive"), budget=30.0)
    assert run.manager.current_level == 4
    rng = random.Random(1)
    drive(run, 40 * W, lambda f, lvl: profiled(lvl) * 1.38 * (1.0 + 0.04 * (rng.random() - 0.5)))
    assert set(run.levels[W:]) == {3}
    assert [(f, d.level, d.reason) for f, d in run.switches] == [(W, 3, "violation")]


def test_step_up_needs_sustained_slack() -> None:
    run = make(ManagerConfig(up_windows=3), budget=30.0)
    drive(run, 2 * W, lambda f, lvl: profiled(lvl) * (2.0 if f >= W else 1.0))
    assert run.manager.current_level == 2
    down = run.switches[-1][0]
    assert W < down <= 2 * W  # the violation is decided as soon as it is certain (early verdict)
    # load gone: slack in every window; the step up comes after exactly three windows at level 2
    drive(run, down + 3 * W - len(run.levels), lambda f, lvl: profiled(lvl))
    assert run.levels[-1] == 2 and run.manager.current_level == 3
    assert run.switches[-1][0] == down + 3 * W


@pytest.mark.parametrize("statistic", ["p95", "mean"])
def test_early_verdict_decides_as_soon_as_the_window_must_violate(statistic: str) -> None:
    """Steady at the LUT choice, then a 3x load: the frame after which the window's statistic must
    exceed the budget whatever the rest measure decides (p95: with the missing frames at 0 ms;
    mean: the window's sum over 10 x budget). Without early verdict, the window's last frame."""
    onset = 5 * W + 3  # mid-window
    trace = lambda f, lvl: profiled(lvl) * (3.0 if f >= onset else 1.0)  # noqa: E731
    early = make(ManagerConfig(window_size=W, violation_statistic=statistic), budget=30.0)
    drive(early, 8 * W, trace)
    late = make(ManagerConfig(window_size=W, violation_statistic=statistic, early_verdict=False), budget=30.0)
    drive(late, 8 * W, trace)
    first_early, first_late = early.switches[0][0], late.switches[0][0]
    assert first_late == 6 * W  # the end of the window the load started in
    window = [trace(f, 4) for f in range(5 * W, 6 * W)]

    def certain(seen: list[float]) -> bool:
        if statistic == "p95":
            return percentile(seen + [0.0] * (W - len(seen)), 95.0) > 30.0
        return sum(seen) > 30.0 * W

    assert first_early == 5 * W + next(i + 1 for i in range(W) if certain(window[: i + 1]))
    assert onset < first_early
    assert first_early < first_late
    assert_one_move_per_window(early)
    # right after a move the next window is a full one: no early decision before W frames
    assert all(b - a >= W for (a, _), (b, _) in zip(early.switches, early.switches[1:], strict=False))


def test_up_margin_applies_above_the_lut_choice() -> None:
    # the device is faster than profiled (x0.7): climb above the LUT choice only with margin
    run = make(budget=30.0)
    drive(run, 20 * W, lambda f, lvl: profiled(lvl) * 0.7)
    # level 5 would run at 28 ms > 0.85 x 30: stays at the LUT choice
    assert set(run.levels) == {4}
    run = make(budget=36.0)
    drive(run, 20 * W, lambda f, lvl: profiled(lvl) * 0.7)
    # LUT choice 4 (28 ms); level 5 at 28 ms <= 0.85 x 36 = 30.6: one step up after two windows
    assert run.levels[-1] == 5 and run.switches[0][0] == 2 * W


def test_noise_alone_causes_no_switches() -> None:
    rng = random.Random(7)
    run = make(budget=30.0)
    drive(run, 100 * W, lambda f, lvl: profiled(lvl) * (1.0 + 0.06 * (rng.random() - 0.5)))
    assert run.switches == [] and set(run.levels) == {4}


def test_unbeatable_load_reports_latency_unmet_at_level_one() -> None:
    run = make(budget=30.0)
    drive(run, 6 * W, lambda f, lvl: profiled(lvl) * 10.0)
    state = run.manager.status()
    assert state.level == 1 and state.unmet == "latency"
    assert state.last_reaction_frames == 0  # never back within budget
    assert state.violations == state.frames


def test_accuracy_priority_keeps_the_floor_under_load() -> None:
    run = make(ManagerConfig(priority="accuracy"), budget=30.0, min_accuracy=76.0)
    drive(run, 6 * W, lambda f, lvl: profiled(lvl) * 3.0)
    assert min(run.levels) == 3 and run.manager.current_level == 3
    assert run.manager.status().unmet == "latency"
    run = make(ManagerConfig(priority="latency"), budget=30.0, min_accuracy=76.0)
    drive(run, 6 * W, lambda f, lvl: profiled(lvl) * 3.0)
    assert run.manager.current_level == 1
    assert run.manager.status().unmet == "accuracy"  # 3 x 10 ms = 30 ms fits; 70 % < 76 %


def test_p95_statistic_reacts_to_tail_latency() -> None:
    def spiky(frame: int, level: int) -> float:
        return profiled(level) * (1.6 if frame % 10 == 9 else 1.0)  # one slow frame per window

    mean_run = make(ManagerConfig(violation_statistic="mean"), budget=30.0)
    drive(mean_run, 6 * W, spiky)
    assert mean_run.switches == []  # mean 28 x 1.06 = 29.7 ms <= 30
    p95_run = make(ManagerConfig(violation_statistic="p95"), budget=30.0)
    drive(p95_run, 6 * W, spiky)
    assert p95_run.switches[0][1].reason == "violation" and p95_run.manager.current_level < 4


def test_inference_time_separates_fixed_overhead_from_model_slowdown() -> None:
    specs = family((10.0, 20.0, 30.0), (70.0, 75.0, 80.0))
    for with_inference, unmet in ((True, "latency"), (False, "")):
        manager = RuntimeManager(specs, ManagerConfig(mode="reactive"), clock=FakeClock())
        manager.set_constraints(latency_budget_ms=35.0)
        manager.set_manual_level(2)
        for _ in range(W):  # level 2: 20 ms in the model + 10 ms of preprocessing/queueing
            manager.observe(30.0, inference_ms=20.0 if with_inference else None)
        manager.set_manual_level(0)
        decision = manager.set_constraints(latency_budget_ms=16.0)
        # affine model: level 1 = 10 + 10 = 20 ms > 16; purely proportional: 10 x 1.5 = 15 ms
        assert decision.level == 1 and decision.unmet == unmet


# ---------------------------------------------------------------- modes


def test_lut_mode_never_moves_on_measurements() -> None:
    run = make(ManagerConfig(mode="lut"), budget=30.0)
    drive(run, 10 * W, lambda f, lvl: profiled(lvl) * 3.0)
    assert set(run.levels) == {4} and run.switches == []
    state = run.manager.status()
    assert (
        state.mode == "lut" and state.unmet == "latency" and state.expected_latency_ms == pytest.approx(84.0)
    )
    assert state.window_mean_ms == pytest.approx(84.0) and state.slowdown == pytest.approx(3.0)


def test_auto_mode_reports_lut_until_measurements_move_it() -> None:
    run = make(budget=30.0)
    assert run.manager.status().mode == "lut"
    drive(run, 3 * W, lambda f, lvl: profiled(lvl) * (2.0 if f >= W else 1.0))
    assert run.manager.status().mode == "reactive"
    # a new constraint: LUT choice capped by the latest measurement (x2 load): level 2, not 5
    decision = run.manager.set_constraints(latency_budget_ms=100.0)
    assert decision.level == 5 and decision.mode == "lut"
    decision = run.manager.set_constraints(latency_budget_ms=40.0)
    assert decision.level == 2  # level 3: 20 ms x 2 = 40 > 0.95 x 40; level 2: 28 ms fits


def test_reactive_mode_uses_the_measured_slowdown_on_constraint_changes() -> None:
    for mode, expected in (("lut", 4), ("auto", 2), ("reactive", 2)):
        run = make(ManagerConfig(mode="reactive"), budget=100.0)
        drive(run, 2 * W, lambda f, lvl: profiled(lvl) * 2.0)  # level 5 at 80 ms
        run.manager.set_mode(mode)
        decision = run.manager.set_constraints(latency_budget_ms=30.0)
        assert decision.level == expected, mode


def test_set_mode_rechooses_and_validates() -> None:
    run = make(ManagerConfig(mode="reactive"), budget=30.0)
    with pytest.raises(ConstraintError, match="mode"):
        run.manager.set_mode("turbo")
    assert run.manager.mode == "reactive"
    decision = run.manager.set_mode("lut")
    assert decision.reason == "mode" and decision.level == 4 and run.manager.mode == "lut"


def test_manual_lock_and_return_to_automatic() -> None:
    run = make(budget=30.0)
    decision = run.manager.set_manual_level(2)
    assert (decision.level, decision.mode, decision.reason) == (2, "manual", "manual")
    drive(run, 5 * W, lambda f, lvl: profiled(lvl) * 3.0)  # load would otherwise move it
    assert set(run.levels) == {2} and run.manager.status().mode == "manual"
    assert run.manager.set_constraints(latency_budget_ms=100.0).level == 2  # stored, lock kept
    assert run.manager.set_mode("reactive").level == 2
    decision = run.manager.set_manual_level(0)
    assert decision.mode == "reactive" and decision.reason == "manual"
    assert decision.level == 4  # 100 ms budget, measured x3: 28 x 3 = 84 ms fits 95 ms
    assert run.manager.manual_level == 0


@pytest.mark.parametrize("level", [6, -1, 1.5, "2", True, None])
def test_unknown_manual_level(level: object) -> None:
    run = make(budget=30.0)
    with pytest.raises(UnknownLevelError, match="0 for automatic"):
        run.manager.set_manual_level(level)  # type: ignore[arg-type]
    assert run.manager.current_level == 4 and run.manager.manual_level == 0


# ---------------------------------------------------------------- measurements and status


def test_invalid_observations_are_ignored_and_counted() -> None:
    run = make(budget=30.0)
    for bad in (math.nan, -1.0, math.inf, "x"):
        assert run.manager.observe(bad) == 4  # type: ignore[arg-type]
    run.manager.observe(28.0, inference_ms=math.nan)
    run.manager.observe(28.0, inference_ms=50.0)  # longer than the frame: ignored
    state = run.manager.status()
    assert (state.frames, state.ignored, state.violations) == (2, 4, 0)
    assert state.window_mean_ms == pytest.approx(28.0)


def test_status_counters_and_window() -> None:
    run = make(budget=30.0)
    latencies = [28.0] * 9 + [40.0]
    for lat in latencies:
        run.manager.observe(lat)
    state = run.manager.status()
    assert (state.frames, state.violations, state.switches, state.n_levels) == (10, 1, 1, 5)
    assert state.window_mean_ms == pytest.approx(29.2)
    assert state.window_p95_ms == pytest.approx(28.0 + 0.55 * 12.0)
    assert state.slowdown == pytest.approx(29.2 / 28.0)
    window = state.last_window
    assert window is not None and window.level == 4 and window.frames == 10 and not window.violated
    assert window.first_frame == 0 and window.end == run.clock.now


def test_window_policy_overrides_the_own_rule() -> None:
    run = make(budget=30.0)
    calls: list[int] = []

    def policy(manager: RuntimeManager) -> int | None:
        calls.append(manager.status().frames)
        return 2 if len(calls) == 2 else None

    run.manager.set_window_policy(policy)
    drive(run, 3 * W, lambda f, lvl: profiled(lvl))
    assert calls == [W, 2 * W, 3 * W]
    assert [(f, d.level, d.reason) for f, d in run.switches] == [(2 * W, 2, "coordinator")]
    run.manager.set_window_policy(lambda manager: 9)
    with pytest.raises(UnknownLevelError, match="outside 1..5"):
        drive(run, W, lambda f, lvl: profiled(lvl))


def test_same_trace_same_decisions() -> None:
    def trace_run() -> list[int]:
        rng = random.Random(3)
        run = make(budget=30.0)
        drive(
            run, 50 * W, lambda f, lvl: profiled(lvl) * (1 + 2 * ((f // 70) % 2)) * (0.9 + 0.2 * rng.random())
        )
        return run.levels

    first = trace_run()
    assert first == trace_run() and len(set(first)) > 1
