"""DynamicClassifier: the one frame loop (infer -> observe -> next level), constraints, locking,
device fallback and coordination input, driven with an injected clock and latencies.

A real 3-level table is built from a random super-network (``conftest.py``; accuracies
meaningless); the latencies the manager sees are injected through ``captured_at`` on a fake
frame clock, so nothing depends on this machine's speed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dynamic_ofa_ros.classifier import ClassifierConfig, DynamicClassifier
from dynamic_ofa_ros.engine import LevelEngine
from dynamic_ofa_ros.errors import ConstraintError, ImageError, UnknownLevelError
from dynamic_ofa_ros.levels import LevelTable
from dynamic_ofa_ros.manager import LevelSpec, ManagerConfig
from dynamic_ofa_ros.supernet import Supernet

torch.set_num_threads(1)

#: What the manager is told each level costs alone (ms) and how accurate it is (%).
SPECS = (
    LevelSpec(level=1, latency_ms=10.0, accuracy=70.0),
    LevelSpec(level=2, latency_ms=20.0, accuracy=75.0),
    LevelSpec(level=3, latency_ms=40.0, accuracy=80.0),
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (96, 120, 3), dtype=np.uint8)


def make(engine: LevelEngine, clock: FakeClock, **kwargs: object) -> DynamicClassifier:
    config = ManagerConfig(window_size=2, up_windows=1)
    return DynamicClassifier(
        engine, manager_config=config, levels=SPECS, clock=clock, frame_clock=clock, **kwargs
    )


def frame(clf: DynamicClassifier, clock: FakeClock, image: np.ndarray, latency_ms: float) -> int:
    """Classify one frame whose end-to-end latency (on the fake clock) is ``latency_ms``."""
    ran = clf.current_level
    result = clf.classify(image, captured_at=clock.t - latency_ms / 1000.0)
    assert result.level == ran
    assert result.latency_ms == pytest.approx(latency_ms)
    return result.next_level


def test_classify_runs_the_managers_level_not_the_engines(engine: LevelEngine, image: np.ndarray) -> None:
    clock = FakeClock()
    clf = make(engine, clock)
    engine.switch(1)  # a standalone user of the engine must not change what the classifier runs
    result = clf.classify(image, top_k=3)
    assert result.level == 3 == clf.current_level
    assert result.probs.shape == (1000,) and abs(float(result.probs.sum()) - 1.0) < 1e-3
    assert len(result.top) == 3 and result.top[0][1] >= result.top[1][1] >= result.top[2][1]
    assert result.expected_accuracy == 80.0
    assert result.inference_ms > 0.0 and result.latency_ms >= result.inference_ms * 0.5
    assert clf.status().frames == 1


def test_budget_from_lut_then_reaction_and_clearing(engine: LevelEngine, image: np.ndarray) -> None:
    clock = FakeClock()
    clf = make(engine, clock)
    assert clf.set_constraints(latency_budget_ms=25.0).level == 2  # look-up: 20 ms fits
    # co-located work slows level 2 down to 30 ms: one window later the manager steps down
    assert frame(clf, clock, image, 30.0) == 2
    assert frame(clf, clock, image, 30.0) == 1
    assert clf.status().violations == 2 and clf.current_level == 1
    decision = clf.set_constraints(latency_budget_ms=None)
    assert decision.level == 3 and decision.unmet == ""
    state = clf.status()
    assert state.budget_ms is None and state.unmet == ""
    frame(clf, clock, image, 500.0)
    assert clf.status().violations == 2  # no budget, no violation


def test_invalid_constraints_change_nothing(engine: LevelEngine) -> None:
    clf = make(engine, FakeClock())
    clf.set_constraints(latency_budget_ms=25.0, min_accuracy=70.0)
    for bad in (-1.0, 0.0, float("nan"), float("inf"), 1e9):
        with pytest.raises(ConstraintError):
            clf.set_constraints(latency_budget_ms=bad)
    with pytest.raises(ConstraintError):
        clf.set_constraints(latency_budget_ms=30.0, min_accuracy=101.0)
    state = clf.status()
    assert (state.budget_ms, state.min_accuracy, state.level) == (25.0, 70.0, 2)


def test_locked_level_is_a_static_baseline(engine: LevelEngine, image: np.ndarray) -> None:
    clock = FakeClock()
    clf = make(engine, clock)
    assert clf.set_level(1).level == 1
    clf.set_constraints(latency_budget_ms=100.0)  # would pick level 3; the lock wins
    for _ in range(4):
        assert frame(clf, clock, image, 500.0) == 1
    with pytest.raises(UnknownLevelError):
        clf.set_level(4)
    # released: automatic again; the measured 500 ms windows keep it at the fastest level
    released = clf.set_level(0)
    assert released.mode != "manual" and released.level == 1 and released.unmet == "latency"


def test_bad_frame_raises_and_is_not_observed(engine: LevelEngine) -> None:
    clf = make(engine, FakeClock())
    with pytest.raises(ImageError):
        clf.classify(np.zeros((10, 10), dtype=np.uint8))
    assert clf.status().frames == 0


def test_levels_must_match_the_table(engine: LevelEngine) -> None:
    with pytest.raises(ConstraintError, match="do not match"):
        DynamicClassifier(engine, levels=SPECS[:2])
    with pytest.raises(ConstraintError, match="top_k"):
        DynamicClassifier(engine, levels=SPECS, top_k=0)


def test_from_table_with_another_devices_table_runs_reactive(rand: Supernet, table: LevelTable) -> None:
    foreign = dataclasses.replace(table, device="cuda", device_name="some GPU")
    with pytest.raises(ConstraintError, match="reactive"):
        DynamicClassifier.from_table(
            rand,
            foreign,
            ClassifierConfig(check_table_device=False, threads=1, manager=ManagerConfig(mode="lut")),
            levels=SPECS,
        )
    clf = DynamicClassifier.from_table(
        rand, foreign, ClassifierConfig(check_table_device=False, threads=1), levels=SPECS
    )
    assert clf.manager.mode == "reactive"
    assert any("profiled on 'cuda'" in w for w in clf.warnings)
    assert any("random weights" in w for w in clf.warnings)
    assert clf.current_level == len(table.levels)


def test_coordination_input(rand: Supernet, table: LevelTable) -> None:
    clock = FakeClock()
    clf = DynamicClassifier.from_table(
        rand,
        table,
        ClassifierConfig(threads=1, coordination_group="arm"),
        name="/a",
        levels=SPECS,
        clock=clock,
    )
    assert clf.coordinator is not None and clf.group == "arm"
    own = clf.peer_status()
    assert own.name == "/a" and own.level == 3 and own.budget_ms == 0.0
    peer = dataclasses.replace(own, name="/b")
    assert clf.update_peer(peer) is True
    assert clf.update_peer(dataclasses.replace(own, name="/c", group="other")) is False
    assert clf.update_peer(own) is False  # its own status comes back over the topic
    assert clf.peer_names() == ["/b"]
    clock.t += 10.0  # past the timeout: forgotten
    assert clf.peer_names() == []
    alone = make(clf.engine, clock)
    assert alone.update_peer(peer) is False and alone.peer_names() == []
    assert alone.peer_counts() == (0, 0)


def test_peer_flood_is_bounded_and_counted(rand: Supernet, table: LevelTable) -> None:
    clock = FakeClock()
    clf = DynamicClassifier.from_table(
        rand,
        table,
        ClassifierConfig(threads=1, coordination_group="arm", coordination_max_peers=4),
        name="/a",
        levels=SPECS,
        clock=clock,
    )
    own = clf.peer_status()
    stored = [clf.update_peer(dataclasses.replace(own, name=f"/fake{i}")) for i in range(100)]
    assert stored.count(True) == 4 and len(clf.peer_names()) == 4
    clf.reject_peer()
    assert clf.peer_counts() == (96, 1)
