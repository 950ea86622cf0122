"""Two classifiers on one CPU, in one coordination group, with an extra CPU load (paper Fig. 8).

Both nodes read the same camera and exchange ``ManagerStatus`` (with their level tables) on
``/dynamic_ofa/coordination``. Their budgets sit at the profiled latency of level 2, so two
models plus a busy process on two cores cannot keep them: windows violate and the group
coordinator (not each node's own rule) steps models down. When one node goes away the other
forgets it after ``coordination_timeout_s`` and acts alone again.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

GROUP = "shared_cpu"


@pytest.fixture
def cpu_load() -> Iterator[subprocess.Popen[bytes]]:
    """A busy-looping process competing for the CPU (killed afterwards)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_two_nodes_coordinate_under_cpu_load(
    harness: Any, core: Any, photo: np.ndarray, image_msg: Any, waiter: Any, cpu_load: Any
) -> None:
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import ManagerStatus, Prediction
    from dynamic_ofa_ros.node import COORDINATION_TOPIC

    budget = core.table.levels[1].latency_ms
    params = {
        "coordination_group": GROUP,
        "coordination_timeout_s": 1.0,
        "latency_budget_ms": budget,
        "window_size": 5,
        "status_rate": 5.0,
    }
    node_a = harness.start_node("model_a", **params)
    node_b = harness.start_node("model_b", **params)
    name_a, name_b = node_a.get_fully_qualified_name(), node_b.get_fully_qualified_name()
    statuses = harness.collect(ManagerStatus, COORDINATION_TOPIC)
    predictions_a = harness.collect(Prediction, f"{name_a}/prediction")
    predictions_b = harness.collect(Prediction, f"{name_b}/prediction")
    pub = harness.publisher(Image, f"{harness.namespace}/image")

    # each sees the other (and only the other)
    waiter(lambda: node_a.peer_names() == [name_b], 20.0, "model_a to see model_b")
    waiter(lambda: node_b.peer_names() == [name_a], 20.0, "model_b to see model_a")
    ours = [s for s in statuses if s.coordination_group == GROUP]
    assert {s.node_name for s in ours} >= {name_a, name_b}
    for status in ours:
        assert len(status.level_latency_ms) == len(core.table.levels) == len(status.level_accuracy)
        assert status.budget_ms == pytest.approx(budget, rel=1e-5)

    stop = threading.Event()
    frame = image_msg(photo)

    def stream() -> None:
        while not stop.is_set():
            now = harness.now_ns()
            frame.header.stamp.sec, frame.header.stamp.nanosec = now // 1_000_000_000, now % 1_000_000_000
            pub.publish(frame)
            time.sleep(1 / 30)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    try:
        waiter(
            lambda: node_a.coordinator_moves + node_b.coordinator_moves > 0,
            90.0,
            "a level change decided by the group coordinator",
        )
        assert len(predictions_a) > 0 and len(predictions_b) > 0

        # the freshness fields travel: a measured window ends after its level took effect
        def measured_statuses() -> list[Any]:
            return [s for s in list(statuses) if s.coordination_group == GROUP and s.window_mean_ms > 0.0]

        waiter(lambda: measured_statuses(), 30.0, "a coordination status with a measured window")
        measured = measured_statuses()
        for status in measured:
            assert 0.0 < status.window_start <= status.window_end
            assert 0.0 < status.level_since < status.window_end
            assert status.priority == "latency" and not status.locked
        moved = [s for s in statuses if s.coordination_group == GROUP and s.previous_level]
        assert all(s.previous_level != s.level for s in moved)
        peer_of_a = next(p for p in node_a.classifier.coordinator.peers(GROUP) if p.name == name_b)
        assert peer_of_a.since > 0.0 and peer_of_a.priority == "latency"
        levels = (node_a.classifier.manager.current_level, node_b.classifier.manager.current_level)
        assert min(levels) < len(core.table.levels)
        diag = node_a.diagnostics().status[0]
        values = {kv.key: kv.value for kv in diag.values}
        assert values["coordination"] == f"coordinated with {name_b}"

        # model_b goes away: model_a forgets it after the timeout and acts alone, still classifying
        harness.stop_node(node_b)
        waiter(lambda: node_a.peer_names() == [], 20.0, "model_a to forget model_b")
        values = {kv.key: kv.value for kv in node_a.diagnostics().status[0].values}
        assert values["coordination"] == "alone"
        count = len(predictions_a)
        waiter(lambda: len(predictions_a) > count + 5, 30.0, "model_a to keep classifying alone")
        assert node_a.classifier.manager.status().mode in ("lut", "reactive")
    finally:
        stop.set()
        thread.join()
    print(
        f"coordinator moves: model_a {node_a.coordinator_moves}, model_b {node_b.coordinator_moves}; "
        f"frames a={len(predictions_a)} b={len(predictions_b)}"
    )
