"""Group coordination (paper Fig. 8) on a simulated shared device, plus the planner's rules.

The simulator: each model's latency = profiled x (1 + K x the co-runner's profiled latency at its
current level), i.e. the interference model the coordinator assumes. Time is a fake clock.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import replace

import pytest

from dynamic_ofa_ros.coordinator import (
    MAX_LEVELS,
    Coordinator,
    PeerStatus,
    benchmark_plan,
    compute_plan,
    plan_group,
    synthetic_group,
)
from dynamic_ofa_ros.errors import ConstraintError, DofaError
from dynamic_ofa_ros.manager import Decision, LevelSpec, ManagerConfig, RuntimeManager

A = tuple(
    LevelSpec(i + 1, lat, acc)
    for i, (lat, acc) in enumerate(zip((10, 14, 20, 28, 40), (70, 73, 76, 78, 80), strict=True))
)
B = tuple(
    LevelSpec(i + 1, lat, acc)
    for i, (lat, acc) in enumerate(zip((8, 12, 18, 26, 36), (65, 69, 73, 76, 79), strict=True))
)
K = 0.03
PERIOD_S = 0.1
W = 10


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class SharedDevice:
    """Two classifiers ``a`` and ``b`` on one simulated device, one frame each per tick."""

    def __init__(self, budgets: dict[str, float], *, coordinate: bool = True, b_start: int = 0) -> None:
        self.clock = FakeClock()
        self.tables = {"a": A, "b": B}
        self.budgets = budgets
        self.b_start = b_start
        self.managers: dict[str, RuntimeManager] = {}
        self.coordinators: dict[str, Coordinator] = {}
        self.switch_ticks: dict[str, list[int]] = {"a": [], "b": []}
        self.history: list[tuple[int, int]] = []
        self.alive = {"a": True, "b": True}
        for name in "ab":
            self.managers[name] = RuntimeManager(
                self.tables[name],
                ManagerConfig(window_size=W),
                clock=self.clock,
                on_switch=self._switch_recorder(name),
            )
            self.coordinators[name] = Coordinator(name, clock=self.clock, timeout_s=1.0)
        for name in "ab":
            if coordinate:
                self.coordinators[name].attach(self.managers[name], group="cams", publish=self._broadcast)
            self.managers[name].set_constraints(latency_budget_ms=budgets[name])

    def _switch_recorder(self, name: str) -> Callable[[Decision], None]:
        return lambda decision: self.switch_ticks[name].append(len(self.history))

    def _broadcast(self, status: PeerStatus) -> None:
        for name, coordinator in self.coordinators.items():
            if name != status.name:
                coordinator.update(status)

    def level(self, name: str) -> int:
        return self.managers[name].current_level

    def latency(self, name: str, levels: dict[str, int]) -> float:
        other = "b" if name == "a" else "a"
        load = self.tables[other][levels[other] - 1].latency_ms if self.alive[other] else 0.0
        return self.tables[name][levels[name] - 1].latency_ms * (1.0 + K * load)

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            tick = len(self.history)
            self.clock.now += PERIOD_S
            levels = {name: self.level(name) for name in "ab"}
            for name in "ab" if tick % 2 == 0 else "ba":
                if not self.alive[name] or (name == "b" and tick < self.b_start):
                    continue
                self.managers[name].observe(self.latency(name, levels))
                # status_rate publishing between window boundaries
                self._broadcast(PeerStatus.from_manager(self.managers[name], name=name, group="cams"))
            self.history.append((levels["a"], levels["b"]))

    def accuracy(self) -> float:
        return sum(self.tables[name][self.level(name) - 1].accuracy for name in "ab")

    def within_budget(self) -> bool:
        levels = {name: self.level(name) for name in "ab"}
        return all(self.latency(name, levels) <= self.budgets[name] for name in "ab")


def both_at_level_one_accuracy() -> float:
    return A[0].accuracy + B[0].accuracy


def assert_one_move_per_window(device: SharedDevice) -> None:
    for name, ticks in device.switch_ticks.items():
        for earlier, later in zip(ticks[1:], ticks[2:], strict=False):  # ticks[0]: set_constraints
            assert later - earlier >= W, f"{name} moved at ticks {earlier} and {later}"


# ---------------------------------------------------------------- shared-device simulation


@pytest.mark.parametrize("b_start", [0, 5])
def test_two_models_meet_different_budgets_with_more_accuracy_than_level_one(b_start: int) -> None:
    device = SharedDevice({"a": 45.0, "b": 35.0}, b_start=b_start)
    device.run(60 * W)
    assert device.within_budget()
    assert device.accuracy() > both_at_level_one_accuracy() + 10.0
    assert_one_move_per_window(device)
    # settled: no move in the second half
    assert len(set(device.history[30 * W :])) == 1
    for name in "ab":
        state = device.managers[name].status()
        assert state.unmet == "" and state.switches <= 4


def test_coordination_steps_down_the_co_runner_to_save_a_tight_budget() -> None:
    # b's budget is met at level 1 only if a runs at level 4 or lower; a alone fits at level 5.
    budgets = {"a": 60.0, "b": 15.0}
    alone = SharedDevice(budgets, coordinate=False)
    alone.run(40 * W)
    assert alone.history[-1] == (5, 1) and not alone.within_budget()  # each manager for itself: b fails
    together = SharedDevice(budgets)
    together.run(40 * W)
    assert together.within_budget() and together.history[-1][1] == 1
    assert together.history[-1][0] < 5
    assert together.accuracy() > both_at_level_one_accuracy()
    assert_one_move_per_window(together)


def test_peer_disappearing_falls_back_to_own_reactive_mode() -> None:
    device = SharedDevice({"a": 60.0, "b": 15.0})
    device.run(30 * W)
    assert device.level("a") < 5
    device.alive["b"] = False  # b's node stops: no more statuses, no more load
    device.run(5)
    assert device.coordinators["a"].peers() != []
    device.run(int(1.0 / PERIOD_S) + 1)
    assert device.coordinators["a"].peers() == []
    own = PeerStatus.from_manager(device.managers["a"], name="a", group="cams")
    assert device.coordinators["a"].decide(own) is None
    device.run(10 * W)
    assert device.level("a") == 5  # its own reactive rule climbs back to the LUT choice


# ---------------------------------------------------------------- planner rules


def status(
    name: str, level: int, budget: float, mean: float, table: tuple[LevelSpec, ...] = A, **kw: object
) -> PeerStatus:
    return PeerStatus(
        name=name,
        group="g",
        level=level,
        budget_ms=budget,
        window_mean_ms=mean,
        levels=table,
        **kw,  # type: ignore[arg-type]
    )


def test_plan_is_deterministic_and_order_independent() -> None:
    peers = [status("x", 5, 45.0, 71.2), status("y", 4, 35.0, 57.2, B), status("z", 3, 0.0, 30.0)]
    plan = plan_group(peers)
    assert plan == plan_group(list(reversed(peers))) == plan_group(peers[1:] + peers[:1])
    assert set(plan) == {"x", "y", "z"}


def test_identical_models_tie_break_by_name() -> None:
    # both violate by the same amount; stepping either down helps both equally
    peers = [status("b", 3, 30.0, 31.0), status("a", 3, 30.0, 31.0)]
    plan = plan_group(peers)
    assert plan["a"] < 3 and plan["b"] == 3


def test_no_violation_steps_up_at_most_one_model() -> None:
    peers = [status("a", 2, 100.0, 15.0), status("b", 2, 100.0, 13.0, B)]
    plan = plan_group(peers)
    assert sorted(plan.values()) == [2, 3]


def test_step_up_blocked_when_a_co_runner_would_leave_its_margin() -> None:
    # b sits at 0.8 x its budget, with interference from a; a's step up would push b above 0.85
    peers = [status("a", 2, 100.0, 15.0), status("b", 2, 19.0, 15.2, B)]
    assert plan_group(peers) == {"a": 2, "b": 2}


def test_stale_and_locked_models_are_held() -> None:
    # y changed level during x's window: x's measurement is stale, x is held; y has no window yet
    x = status("x", 4, 30.0, 60.0, window_start=10.0, window_end=11.0)
    y = status("y", 3, 30.0, 0.0, since=10.5, previous_level=4)
    assert plan_group([x, y]) == {"x": 4, "y": 3}
    # fresh violator, but the only other model is locked (manual): the violator steps itself down
    x = status("x", 4, 30.0, 60.0)
    y = status("y", 5, 300.0, 90.0, locked=True)
    plan = plan_group([x, y])
    assert plan["y"] == 5 and plan["x"] < 4


def test_measurement_before_a_peer_switch_uses_its_previous_level() -> None:
    # x measured while y still ran level 5 (y switched after x's window ended): the prediction
    # accounts for y's step down, so x need not step down as far
    fresh = plan_group(
        [
            status("x", 4, 30.0, 60.0, window_start=1.0, window_end=2.0),
            status("y", 5, 300.0, 90.0, since=0.5, locked=True),
        ]
    )
    after = plan_group(
        [
            status("x", 4, 30.0, 60.0, window_start=1.0, window_end=2.0),
            status("y", 2, 300.0, 0.0, since=3.0, previous_level=5, locked=True),
        ]
    )
    assert after["x"] > fresh["x"]


def test_accuracy_priority_floor_is_respected() -> None:
    peers = [
        status("a", 3, 10.0, 60.0, min_accuracy=76.0, priority="accuracy"),
        status("b", 1, 100.0, 9.0, B),
    ]
    assert plan_group(peers)["a"] == 3


def test_plan_group_validation() -> None:
    with pytest.raises(ConstraintError, match="duplicate"):
        plan_group([status("a", 1, 10.0, 5.0), status("a", 1, 10.0, 5.0)])
    with pytest.raises(ConstraintError, match="margin"):
        plan_group([status("a", 1, 10.0, 5.0)], margin=0.99, down_margin=0.9)


@pytest.mark.parametrize(
    "change",
    [
        {"level": 6},
        {"level": 0},
        {"name": ""},
        {"budget_ms": float("nan")},
        {"window_mean_ms": -1.0},
        {"min_accuracy": 101.0},
        {"priority": "speed"},
        {"levels": ()},
        {"window_start": 2.0, "window_end": 1.0},
    ],
)
def test_peer_status_validation(change: dict[str, object]) -> None:
    good = status("a", 2, 30.0, 15.0)
    with pytest.raises(ConstraintError) as info:
        replace(good, **change)  # type: ignore[arg-type]
    assert isinstance(info.value, DofaError)


# ---------------------------------------------------------------- coordinator bookkeeping


def test_coordinator_peers_timeout_group_and_own_name() -> None:
    clock = FakeClock()
    coordinator = Coordinator("a", clock=clock, timeout_s=2.0)
    own = status("a", 2, 30.0, 15.0)
    assert coordinator.decide(own) is None
    assert coordinator.update(own) is False
    coordinator.update(status("c", 2, 30.0, 15.0))
    coordinator.update(replace(status("b", 2, 30.0, 15.0), group="other"))
    assert [p.name for p in coordinator.peers()] == ["b", "c"]
    assert [p.name for p in coordinator.peers("g")] == ["c"]
    assert coordinator.decide(own) is not None
    clock.now += 1.5
    coordinator.update(status("c", 2, 30.0, 15.0))
    clock.now += 1.0
    assert coordinator.forget_stale() == ["b"]
    clock.now += 1.5
    assert coordinator.decide(own) is None and coordinator.peers() == []


def test_coordinator_step_up_needs_consecutive_plans() -> None:
    clock = FakeClock()
    coordinator = Coordinator("a", clock=clock, up_windows=2)
    own = status("a", 2, 100.0, 15.0)
    coordinator.update(status("b", 5, 100.0, 40.0, B))
    assert coordinator.last_plan == {}
    assert coordinator.decide(own) == 2  # planned up once: wait
    assert coordinator.last_plan["a"] == 3
    assert coordinator.decide(own) == 3  # planned up twice: go


def test_coordinator_validation() -> None:
    for kwargs in ({"timeout_s": 0.0}, {"margin": 1.5}, {"up_windows": 0}):
        with pytest.raises(ConstraintError):
            Coordinator("a", **kwargs)
    with pytest.raises(ConstraintError):
        Coordinator("")


def test_status_from_manager() -> None:
    clock = FakeClock()
    manager = RuntimeManager(A, ManagerConfig(window_size=W), clock=clock)
    manager.set_constraints(latency_budget_ms=30.0, min_accuracy=70.0)
    first = PeerStatus.from_manager(manager, name="a", group="g")
    assert (first.level, first.window_mean_ms, first.previous_level, first.locked) == (4, 0.0, 5, False)
    for _ in range(W):
        clock.now += 0.03
        manager.observe(29.0)
    st = PeerStatus.from_manager(manager, name="a", group="g", stamp=7.0)
    assert st.window_mean_ms == pytest.approx(29.0) and st.budget_ms == 30.0 and st.min_accuracy == 70.0
    assert st.window_end == clock.now and st.window_start < st.window_end and st.stamp == 7.0
    assert st.since <= st.window_start and st.levels == A
    manager.set_manual_level(3)
    locked = PeerStatus.from_manager(manager, name="a", group="g")
    assert locked.locked and locked.window_mean_ms == 0.0 and locked.level == 3


# ---------------------------------------------------------------- planner = from-scratch greedy


def reference_plan(
    peers: list[PeerStatus], margin: float = 0.85, down_margin: float = 0.95
) -> dict[str, int]:
    """The planner's rules evaluated from scratch for every candidate (O(P^4 L): small groups only)."""
    peers = sorted(peers, key=lambda p: p.name)
    n = len(peers)
    lat = [[s.latency_ms for s in p.levels] for p in peers]
    acc = [[s.accuracy for s in p.levels] for p in peers]
    fresh, slow, k, measured = [False] * n, [1.0] * n, [0.0] * n, [0.0] * n
    for i, p in enumerate(peers):
        if p.window_mean_ms <= 0.0:
            continue
        work = 0.0
        for j, o in enumerate(peers):
            if j == i:
                continue
            if o.since <= p.window_start:
                work += lat[j][o.level - 1]
            elif o.since >= p.window_end:
                work += lat[j][(o.previous_level or o.level) - 1]
            else:
                break
        else:
            fresh[i], measured[i] = True, work
            slow[i] = p.window_mean_ms / lat[i][p.level - 1]
            k[i] = max(0.0, slow[i] - 1.0) / work if work > 0 else 0.0
    lower = [1] * n
    for i, p in enumerate(peers):
        if p.priority == "accuracy":
            floor = next((s.level for s in p.levels if s.accuracy >= p.min_accuracy), len(p.levels))
            lower[i] = min(floor, p.level)

    def predict(i: int, levels: list[int]) -> float:
        work = sum(lat[j][levels[j] - 1] for j in range(n) if j != i)
        return lat[i][levels[i] - 1] * (slow[i] + k[i] * (work - measured[i]))

    def excess(levels: list[int]) -> float:
        return sum(
            max(0.0, predict(i, levels) - down_margin * p.budget_ms) / p.budget_ms
            for i, p in enumerate(peers)
            if fresh[i] and p.budget_ms > 0
        )

    plan = [p.level for p in peers]
    movable = [fresh[i] and not p.locked for i, p in enumerate(peers)]
    if any(fresh[i] and 0 < p.budget_ms < p.window_mean_ms for i, p in enumerate(peers)):
        while (current := excess(plan)) > 1e-9:
            scores = []
            for i in range(n):
                if movable[i] and plan[i] > lower[i]:
                    saved = current - excess([*plan[:i], plan[i] - 1, *plan[i + 1 :]])
                    if saved > 1e-9:
                        scores.append((saved / max(acc[i][plan[i] - 1] - acc[i][plan[i] - 2], 1e-6), i))
            if not scores:
                break
            top = max(s for s, _ in scores)
            plan[next(i for s, i in scores if s >= top - (abs(top) * 1e-12 + 1e-9))] -= 1
    elif all(fresh):
        before = [predict(i, plan) for i in range(n)]
        scores = []
        for i in range(n):
            if not movable[i] or plan[i] >= len(lat[i]):
                continue
            trial = [*plan[:i], plan[i] + 1, *plan[i + 1 :]]
            after = [predict(j, trial) for j in range(n)]
            rising = [j for j, p in enumerate(peers) if p.budget_ms > 0 and after[j] > before[j] + 1e-9]
            if all(after[j] <= margin * peers[j].budget_ms for j in rising):
                added = sum((after[j] - before[j]) / peers[j].budget_ms for j in rising)
                scores.append(((acc[i][plan[i]] - acc[i][plan[i] - 1] + 1e-6) / max(added, 1e-9), i))
        if scores:
            top = max(s for s, _ in scores)
            plan[next(i for s, i in scores if s >= top - (abs(top) * 1e-12 + 1e-9))] += 1
    return {p.name: level for p, level in zip(peers, plan, strict=True)}


def random_status(rng: random.Random, name: str, *, max_levels: int = 8, violate: bool = False) -> PeerStatus:
    count = rng.randint(1, max_levels)
    lats = sorted(rng.sample(range(5, 200), count))
    accs = sorted(rng.uniform(60.0, 85.0) for _ in range(count))
    table = tuple(
        LevelSpec(i + 1, float(lat), acc) for i, (lat, acc) in enumerate(zip(lats, accs, strict=True))
    )
    level = rng.randint(1, count)
    mean = table[level - 1].latency_ms * rng.uniform(1.0, 4.0)
    budget = mean / rng.uniform(1.01, 3.0) if violate else rng.choice([0.0, mean * rng.uniform(0.4, 2.0)])
    timing: dict[str, float | int] = {}
    if rng.random() < 0.3:
        start = rng.uniform(0.0, 5.0)
        timing = {"window_start": start, "window_end": start + rng.uniform(0.0, 3.0)}
        timing |= {"since": rng.uniform(0.0, 10.0), "previous_level": rng.randint(0, count)}
    return PeerStatus(
        name=name,
        group="g",
        level=level,
        budget_ms=budget,
        window_mean_ms=rng.choice([0.0, mean, mean, mean]) if not violate else mean,
        levels=table,
        min_accuracy=rng.uniform(0.0, 90.0),
        priority=rng.choice(["latency", "latency", "accuracy"]),
        locked=rng.random() < 0.1,
        **timing,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("seed", range(4))
def test_plan_equals_the_from_scratch_greedy(seed: int) -> None:
    rng = random.Random(seed)
    moved = 0
    for _ in range(60):
        peers = [random_status(rng, f"m{i}") for i in range(rng.randint(1, 7))]
        plan = plan_group(peers)
        assert plan == reference_plan(peers)
        moved += any(plan[p.name] != p.level for p in peers)
    assert moved > 10  # the groups exercise both step down and step up


def test_plan_equals_the_from_scratch_greedy_under_heavy_overload() -> None:
    # every model claims a large violation: the floor shortcut and long step-down runs
    rng = random.Random(7)
    for _ in range(30):
        peers = [random_status(rng, f"m{i}", max_levels=6, violate=True) for i in range(rng.randint(2, 6))]
        assert plan_group(peers) == reference_plan(peers)
    for violation in (1.2, 2.0, 100.0):
        flood = synthetic_group(6, violation=violation)
        assert plan_group(flood) == reference_plan(flood)
    for _ in range(30):  # copies of a few models: identical ones are evaluated once per step
        templates = [random_status(rng, "t", max_levels=6, violate=True) for _ in range(rng.randint(1, 3))]
        copies = [replace(rng.choice(templates), name=f"m{i}") for i in range(rng.randint(2, 8))]
        assert plan_group(copies) == reference_plan(copies)


def test_plan_for_max_peers_violating_peers_is_valid() -> None:
    clock = FakeClock()
    coordinator = Coordinator("own", clock=clock, max_peers=16)
    rng = random.Random(3)
    flood = [replace(random_status(rng, f"fake{i:04d}", violate=True), group="cams") for i in range(1000)]
    for peer in flood:
        coordinator.update(peer)
    assert len(coordinator.peers()) == 16 and coordinator.ignored == 1000 - 16
    own = replace(status("own", 4, 30.0, 45.0), group="cams")
    level = coordinator.decide(own)
    plan = coordinator.last_plan
    members = {p.name: p for p in [own, *coordinator.peers("cams")]}
    assert set(plan) == set(members) and len(plan) == 17
    assert level == plan["own"]
    for name, planned in plan.items():
        peer = members[name]
        assert 1 <= planned <= peer.level  # a violation only ever steps models down
        if peer.locked:
            assert planned == peer.level
    assert plan == reference_plan(list(members.values()))


def test_plan_levels_a_table_may_have() -> None:
    table = tuple(LevelSpec(i + 1, 10.0 + i, 50.0 + i) for i in range(MAX_LEVELS + 1))
    status("a", 1, 30.0, 15.0, table[:MAX_LEVELS])
    with pytest.raises(ConstraintError, match=f"more than the {MAX_LEVELS}"):
        status("a", 1, 30.0, 15.0, table)


def test_benchmark_plan_reports_times_and_steps() -> None:
    result = benchmark_plan(5, violation=1.5, repeats=2)
    assert result["n"] == 2 and result["models"] == 5 and result["levels_lowered"] > 0
    assert 0 < result["min"] <= result["max"]


# ---------------------------------------------------------------- bounded peers, snapshot, counters


def test_peer_set_is_bounded_and_reuses_stale_slots() -> None:
    clock = FakeClock()
    coordinator = Coordinator("own", clock=clock, timeout_s=2.0, max_peers=3)
    for name in "abc":
        assert coordinator.update(status(name, 2, 30.0, 15.0))
    assert not coordinator.update(status("d", 2, 30.0, 15.0))  # full of live peers: ignored
    assert coordinator.ignored == 1 and [p.name for p in coordinator.peers()] == ["a", "b", "c"]
    clock.now += 1.5
    assert coordinator.update(status("a", 3, 30.0, 15.0))  # a known peer always refreshes
    assert coordinator.update(status("b", 3, 30.0, 15.0))
    clock.now += 1.0  # c is stale now, a and b are not
    assert coordinator.update(status("d", 2, 30.0, 15.0))  # takes c's slot
    assert [p.name for p in coordinator.peers()] == ["a", "b", "d"] and coordinator.ignored == 1
    assert not coordinator.update(status("e", 2, 30.0, 15.0))
    assert coordinator.ignored == 2 and coordinator.rejected == 0
    coordinator.count_rejected()
    coordinator.count_rejected()
    assert coordinator.rejected == 2
    with pytest.raises(ConstraintError, match="max_peers"):
        Coordinator("own", max_peers=0)


def test_snapshot_plan_apply_is_decide() -> None:
    clock = FakeClock()
    one, two = Coordinator("a", clock=clock), Coordinator("a", clock=clock)
    own = status("a", 2, 100.0, 15.0)
    assert compute_plan(one.snapshot(own)) is None and one.apply(one.snapshot(own), None) is None
    for coordinator in (one, two):
        coordinator.update(status("b", 5, 100.0, 40.0, B))
        coordinator.update(replace(status("c", 5, 100.0, 40.0, B), group="elsewhere"))
    snapshot = one.snapshot(own)
    assert [p.name for p in snapshot.peers] == ["b"] and snapshot.own is own
    plan = compute_plan(snapshot)
    assert plan == plan_group([own, *snapshot.peers]) == {"a": 3, "b": 5}
    for _ in range(2):  # the up_windows hysteresis lives in apply
        assert one.apply(snapshot, plan) == two.decide(own)
    assert one.last_plan == two.last_plan == plan


def test_updates_and_decisions_from_two_threads() -> None:
    coordinator = Coordinator("own", max_peers=8)
    own = status("own", 3, 30.0, 40.0)
    rng = random.Random(5)
    fakes = [random_status(rng, f"p{i:03d}", violate=True) for i in range(200)]
    errors: list[BaseException] = []

    def flood() -> None:
        try:
            for peer in fakes * 5:
                coordinator.update(peer)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=flood)
    thread.start()
    decisions = [coordinator.decide(own) for _ in range(200)]
    thread.join()
    assert not errors
    assert all(level is None or 1 <= level <= 3 for level in decisions)
    assert len(coordinator.peers()) == 8 and coordinator.ignored == 5 * (200 - 8)
