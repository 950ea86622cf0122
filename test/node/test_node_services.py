"""Services and runtime parameters of the classifier node, called over DDS from a probe node.

* ``~/get_levels`` returns the level table; ``~/set_level`` locks a level and 0 releases it;
  ``~/set_constraints`` picks the level like the manager's LUT and rejects bad values.
* ``ros2 param set latency_budget_ms`` / ``min_accuracy`` (the parameter services) behave
  exactly like ``~/set_constraints``, and both keep the parameters in sync.
* Services answer within 100 ms while inference runs (the issue's functional requirement).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros


def _clients(harness: Any, node: Any) -> dict[str, Any]:
    from rcl_interfaces.srv import GetParameters, SetParameters

    from dynamic_ofa_ros.srv import GetLevels, SetConstraints, SetLevel

    ns = node.get_fully_qualified_name()
    return {
        "levels": harness.client(GetLevels, f"{ns}/get_levels"),
        "level": harness.client(SetLevel, f"{ns}/set_level"),
        "constraints": harness.client(SetConstraints, f"{ns}/set_constraints"),
        "set_param": harness.client(SetParameters, f"{ns}/set_parameters"),
        "get_param": harness.client(GetParameters, f"{ns}/get_parameters"),
    }


def _get_params(harness: Any, clients: dict[str, Any], *names: str) -> list[Any]:
    from rcl_interfaces.srv import GetParameters

    response, _ = harness.call(clients["get_param"], GetParameters.Request(names=list(names)))
    values = []
    for value in response.values:
        values.append(value.double_value if value.type == 3 else value.integer_value)
    return values


def _set_param(harness: Any, clients: dict[str, Any], name: str, value: float) -> Any:
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    response, _ = harness.call(clients["set_param"], request)
    return response.results[0]


def test_get_levels(harness: Any, core: Any) -> None:
    from dynamic_ofa_ros.srv import GetLevels

    node = harness.start_node()
    response, _ = harness.call(_clients(harness, node)["levels"], GetLevels.Request())
    table = core.table
    assert response.device == "cpu"
    assert response.current_level == len(table.levels)
    assert [info.level for info in response.levels] == [lv.level for lv in table.levels]
    for info, level in zip(response.levels, table.levels, strict=True):
        assert info.resolution == level.config.resolution
        assert list(info.ks) == list(level.config.ks) and len(info.ks) == 20
        assert list(info.e) == list(level.config.e) and len(info.e) == 20
        assert list(info.d) == list(level.config.d) and len(info.d) == 5
        assert info.latency_ms == pytest.approx(level.latency_ms, rel=1e-6)
        assert info.accuracy == pytest.approx(level.accuracy, rel=1e-6)
        assert info.macs_m == pytest.approx(level.macs_m, rel=1e-6)


def test_set_level_manual_and_back(harness: Any, core: Any) -> None:
    from dynamic_ofa_ros.srv import GetLevels, SetLevel

    node = harness.start_node()
    clients = _clients(harness, node)
    n = len(core.table.levels)
    response, _ = harness.call(clients["level"], SetLevel.Request(level=1))
    assert response.accepted and response.level == 1
    assert node.classifier.current_level == 1
    levels, _ = harness.call(clients["levels"], GetLevels.Request())
    assert levels.current_level == 1
    response, _ = harness.call(clients["level"], SetLevel.Request(level=0))
    assert response.accepted and response.level == n, response.message
    assert node.classifier.current_level == n
    assert node.classifier.manager.status().mode != "manual"


def test_set_constraints_selects_level(harness: Any, core: Any) -> None:
    from dynamic_ofa_ros.srv import SetConstraints

    node = harness.start_node(mode="lut")
    clients = _clients(harness, node)
    lat = [lv.latency_ms for lv in core.table.levels]
    n = len(lat)
    # a budget between level 1 and level 2: level 1
    tight = (lat[0] + lat[1]) / 2
    response, _ = harness.call(clients["constraints"], SetConstraints.Request(latency_budget_ms=tight))
    assert response.accepted, response.message
    assert response.level == 1 and node.classifier.current_level == 1
    assert _get_params(harness, clients, "latency_budget_ms")[0] == pytest.approx(tight, rel=1e-6)
    # loose: the most accurate level
    response, _ = harness.call(clients["constraints"], SetConstraints.Request(latency_budget_ms=lat[-1] * 3))
    assert response.accepted and response.level == n
    # accuracy floor above level 1 with a tight budget: latency wins by default and says so
    response, _ = harness.call(
        clients["constraints"], SetConstraints.Request(latency_budget_ms=tight, min_accuracy=75.0)
    )
    assert response.accepted and response.level == 1
    assert "accuracy" in response.message
    assert node.classifier.manager.status().unmet in ("accuracy", "both")
    # no budget (0): most accurate level again, reported as budget 0
    response, _ = harness.call(clients["constraints"], SetConstraints.Request(latency_budget_ms=0.0))
    assert response.accepted and response.level == n
    assert node.status_message().budget_ms == 0.0


@pytest.mark.parametrize(
    ("budget", "accuracy"),
    [(float("nan"), 0.0), (-5.0, 0.0), (1e9, 0.0), (float("inf"), 0.0), (10.0, float("nan")), (10.0, 101.0)],
)
def test_set_constraints_rejects_bad_values(harness: Any, core: Any, budget: float, accuracy: float) -> None:
    """NaN, negative, huge budgets and out-of-range accuracy floors: rejected, nothing changes."""
    from dynamic_ofa_ros.srv import SetConstraints

    node = harness.start_node(mode="lut")
    clients = _clients(harness, node)
    good = core.table.levels[1].latency_ms * 1.05
    response, _ = harness.call(clients["constraints"], SetConstraints.Request(latency_budget_ms=good))
    assert response.accepted and response.level == 2
    before = node.classifier.manager.status()
    response, _ = harness.call(
        clients["constraints"], SetConstraints.Request(latency_budget_ms=budget, min_accuracy=accuracy)
    )
    assert not response.accepted
    assert response.message
    assert response.level == 2
    after = node.classifier.manager.status()
    assert (after.budget_ms, after.min_accuracy, after.level) == (before.budget_ms, before.min_accuracy, 2)
    assert _get_params(harness, clients, "latency_budget_ms", "min_accuracy") == pytest.approx(
        [good, 0.0], rel=1e-6
    )


def test_param_set_behaves_like_service(harness: Any, core: Any) -> None:
    """``ros2 param set`` goes through the same core call: same level, same rejections."""
    node = harness.start_node(mode="lut")
    clients = _clients(harness, node)
    lat = [lv.latency_ms for lv in core.table.levels]
    result = _set_param(harness, clients, "latency_budget_ms", (lat[0] + lat[1]) / 2)
    assert result.successful, result.reason
    assert node.classifier.current_level == 1
    assert node.classifier.manager.status().budget_ms == pytest.approx((lat[0] + lat[1]) / 2)
    # an integer value (as `ros2 param set ... 500` sends it) is accepted too
    result = _set_param(harness, clients, "latency_budget_ms", int(lat[-1] * 3) + 1)
    assert result.successful, result.reason
    assert node.classifier.current_level == len(lat)
    for bad in (float("nan"), -1.0, 1e9):
        result = _set_param(harness, clients, "latency_budget_ms", bad)
        assert not result.successful and result.reason
    result = _set_param(harness, clients, "min_accuracy", 150.0)
    assert not result.successful and result.reason
    assert node.classifier.manager.status().budget_ms == pytest.approx(int(lat[-1] * 3) + 1)
    # min_accuracy alone keeps the budget
    result = _set_param(harness, clients, "min_accuracy", 65.0)
    assert result.successful, result.reason
    assert node.classifier.manager.status().min_accuracy == 65.0
    assert node.classifier.manager.status().budget_ms == pytest.approx(int(lat[-1] * 3) + 1)
    # read-only parameters cannot be changed at runtime
    result = _set_param(harness, clients, "window_size", 3)
    assert not result.successful


def test_services_answer_within_100ms_during_inference(
    harness: Any, core: Any, photo: np.ndarray, image_msg: Any, waiter: Any
) -> None:
    """While the slowest level classifies a 30 fps stream, every service answers promptly.

    Functional requirement of the issue (100 ms). Measured as the probe's round trip through
    DDS; the median must be within 100 ms, the worst case within a generous 2.5x on this
    shared 2-core machine.
    """
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import Prediction
    from dynamic_ofa_ros.srv import GetLevels, SetConstraints, SetLevel

    node = harness.start_node()
    n = len(core.table.levels)
    clients = _clients(harness, node)
    predictions = harness.collect(Prediction, f"{node.get_fully_qualified_name()}/prediction")
    pub = harness.publisher(Image, f"{harness.namespace}/image")
    stop = threading.Event()
    frame = image_msg(photo)

    def stream() -> None:
        while not stop.is_set():
            pub.publish(frame)
            time.sleep(1 / 30)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    try:
        waiter(lambda: len(predictions) >= 3, 30.0, "inference running")
        before = len(predictions)
        times: list[float] = []
        for i in range(10):
            time.sleep(0.05)
            _, ms = harness.call(clients["levels"], GetLevels.Request())
            times.append(ms)
            _, ms = harness.call(clients["level"], SetLevel.Request(level=n if i % 2 else 0))
            times.append(ms)
            request = SetConstraints.Request(latency_budget_ms=1000.0 + i, min_accuracy=0.0)
            response, ms = harness.call(clients["constraints"], request)
            assert response.accepted
            times.append(ms)
        frames_during = len(predictions) - before
    finally:
        stop.set()
        thread.join()
    print(
        f"service round trip during inference: median {statistics.median(times):.1f} ms, "
        f"max {max(times):.1f} ms over {len(times)} calls ({frames_during} predictions)"
    )
    assert frames_during > 0, "inference did not run during the calls"
    assert statistics.median(times) < 100.0
    assert max(times) < 250.0
