"""The classifier as a managed (lifecycle) node, driven over DDS through its lifecycle services.

The probe calls ``~/change_state`` and ``~/get_state`` (``lifecycle_msgs``) exactly as
``ros2 lifecycle set/get`` does:

* ``autostart: false`` waits unconfigured; services answer with a refusal naming the state;
  invalid transitions are refused and change nothing;
* configure -> activate classifies; deactivate stops taking frames (no subscription, no
  inference thread); activate resumes; cleanup drops the model; configure again works;
  shutdown finalises;
* a configure that fails (missing level table) leaves the node unconfigured with the reason;
* QoS comes from rclpy's standard ``qos_overrides`` parameters (REP-2003 default kept).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros


class Lifecycle:
    """``ros2 lifecycle get/set`` for one node, through the probe's service clients."""

    def __init__(self, harness: Any, node_name: str) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState

        self.harness = harness
        self.change = harness.client(ChangeState, f"{node_name}/change_state")
        self.get = harness.client(GetState, f"{node_name}/get_state")

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        response, _ = self.harness.call(self.get, GetState.Request())
        return str(response.current_state.label)

    def set(self, label: str) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request(transition=Transition(label=label))
        response, _ = self.harness.call(self.change, request, timeout=60.0)
        return bool(response.success)


def _clients(harness: Any, name: str) -> dict[str, Any]:
    from rcl_interfaces.srv import SetParameters

    from dynamic_ofa_ros.srv import GetLevels, SetConstraints, SetLevel

    return {
        "levels": harness.client(GetLevels, f"{name}/get_levels"),
        "level": harness.client(SetLevel, f"{name}/set_level"),
        "constraints": harness.client(SetConstraints, f"{name}/set_constraints"),
        "params": harness.client(SetParameters, f"{name}/set_parameters"),
    }


def _set_param(harness: Any, clients: dict[str, Any], name: str, value: float) -> Any:
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    response, _ = harness.call(clients["params"], request)
    return response.results[0]


def _inference_threads(node: Any) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"{node.get_name()}-inference"]


class Stream:
    """A best-effort camera at about 20 fps on the harness namespace's ``image`` topic."""

    def __init__(self, harness: Any, image_msg: Any, photo: np.ndarray) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.pub = harness.probe.create_publisher(
            Image,
            f"{harness.namespace}/image",
            QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT),
        )
        self.msg = image_msg(photo)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.pub.publish(self.msg)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def test_autostart_false_waits_unconfigured_and_refuses_cleanly(harness: Any) -> None:
    from dynamic_ofa_ros.srv import GetLevels, SetConstraints, SetLevel

    node = harness.start_node(autostart=False)
    name = node.get_fully_qualified_name()
    life = Lifecycle(harness, name)
    assert life.state() == "unconfigured"
    assert node._classifier is None and not node.active
    clients = _clients(harness, name)

    levels, _ = harness.call(clients["levels"], GetLevels.Request())
    assert list(levels.levels) == [] and levels.current_level == 0 and levels.device == ""
    refused, _ = harness.call(clients["constraints"], SetConstraints.Request(latency_budget_ms=30.0))
    assert not refused.accepted and "not configured" in refused.message
    refused, _ = harness.call(clients["level"], SetLevel.Request(level=1))
    assert not refused.accepted and "not configured" in refused.message

    # Runtime parameters: checked by the core's rules now, applied at configure.
    bad = _set_param(harness, clients, "latency_budget_ms", -5.0)
    assert not bad.successful and "latency budget" in bad.reason
    assert _set_param(harness, clients, "latency_budget_ms", 5000.0).successful

    assert not life.set("activate")  # not configured yet: refused, nothing changes
    assert life.state() == "unconfigured"
    assert life.set("configure")
    assert life.state() == "inactive"
    assert not life.set("configure")  # twice: refused
    assert life.state() == "inactive"
    assert node.classifier.status().budget_ms == 5000.0  # the value set while unconfigured

    levels, _ = harness.call(clients["levels"], GetLevels.Request())  # read-only: answers
    assert len(levels.levels) == len(harness.core.table.levels) and levels.device == "cpu"
    refused, _ = harness.call(clients["level"], SetLevel.Request(level=1))
    assert not refused.accepted and "inactive" in refused.message and "activate" in refused.message
    assert not _inference_threads(node)


def test_deactivate_activate_cleanup_configure_shutdown(
    harness: Any, photo: np.ndarray, image_msg: Any, waiter: Any
) -> None:
    from dynamic_ofa_ros.msg import Prediction

    node = harness.start_node()
    name = node.get_fully_qualified_name()
    life = Lifecycle(harness, name)
    assert life.state() == "active"
    predictions = harness.collect(Prediction, f"{name}/prediction")
    stream = Stream(harness, image_msg, photo)
    try:
        waiter(lambda: len(predictions) >= 3, 30.0, "predictions while active")
        assert len(_inference_threads(node)) == 1

        assert life.set("deactivate")
        assert life.state() == "inactive"
        assert not node.active and not _inference_threads(node)
        waiter(lambda: stream.pub.get_subscription_count() == 0, 10.0, "the image subscription to go")
        time.sleep(0.5)  # anything in flight arrives now
        with harness._lock:
            count = len(predictions)
        frames = node.classifier.status().frames
        time.sleep(1.5)
        assert len(predictions) == count and node.classifier.status().frames == frames

        assert life.set("activate")
        waiter(lambda: len(predictions) >= count + 3, 30.0, "predictions after activate")

        assert life.set("deactivate") and life.set("cleanup")
        assert life.state() == "unconfigured"
        assert node._classifier is None and node.supernet is None and node._outputs is None
        waiter(lambda: harness.probe.count_publishers(f"{name}/prediction") == 0, 10.0, "publishers gone")

        assert life.set("configure") and life.set("activate")  # a second configuration works
        with harness._lock:
            count = len(predictions)
        waiter(lambda: len(predictions) >= count + 3, 30.0, "predictions after a new configure")

        assert life.set("shutdown")
        assert node.finalized and node._classifier is None and not _inference_threads(node)
    finally:
        stream.stop()


def test_failed_configure_stays_unconfigured(harness: Any, tmp_path: Any) -> None:
    from dynamic_ofa_ros.srv import GetLevels

    missing = tmp_path / "no_table.json"
    node = harness.start_node("no_table", autostart=False, level_table=str(missing))
    name = node.get_fully_qualified_name()
    life = Lifecycle(harness, name)
    assert not life.set("configure")
    assert life.state() == "unconfigured"
    assert str(missing) in node.transition_error
    assert node._classifier is None and node.supernet is None and node._outputs is None
    levels, _ = harness.call(_clients(harness, name)["levels"], GetLevels.Request())
    assert list(levels.levels) == []


def test_image_qos_default_and_override(harness: Any) -> None:
    from rclpy.qos import HistoryPolicy, ReliabilityPolicy

    default = harness.start_node("qos_default")
    topic = f"{harness.namespace}/image"
    infos = harness.probe.get_subscriptions_info_by_topic(topic)
    assert len(infos) == 1
    assert infos[0].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT  # REP-2003 sensor data
    assert default.get_parameter(f"qos_overrides.{topic}.subscription.depth").value == 1
    assert default.get_parameter(f"qos_overrides.{topic}.subscription.history").value == "keep_last"
    harness.stop_node(default)

    prediction = f"{harness.namespace}/qos_reliable/prediction"
    node = harness.start_node(
        "qos_reliable",
        **{
            f"qos_overrides.{topic}.subscription.reliability": "reliable",
            f"qos_overrides.{prediction}.publisher.reliability": "best_effort",
        },
    )
    infos = harness.probe.get_subscriptions_info_by_topic(topic)
    assert [info.qos_profile.reliability for info in infos] == [ReliabilityPolicy.RELIABLE]
    assert infos[0].qos_profile.history in (HistoryPolicy.KEEP_LAST, HistoryPolicy.UNKNOWN)
    pubs = harness.probe.get_publishers_info_by_topic(prediction)
    assert [info.qos_profile.reliability for info in pubs] == [ReliabilityPolicy.BEST_EFFORT]
    # read-only, like every QoS parameter: changing it at runtime is refused
    from rclpy.parameter import Parameter

    result = node.set_parameters(
        [Parameter(f"qos_overrides.{topic}.subscription.reliability", value="best_effort")]
    )
    assert not result[0].successful


def test_invalid_qos_override_fails_activate_with_the_reason(harness: Any) -> None:
    from dynamic_ofa_ros.node import StartupError

    topic = f"{harness.namespace}/image"
    for value, reason in (({"depth": 5000}, "depth 5000"), ({"reliability": "sometimes"}, "sometimes")):
        policy, setting = next(iter(value.items()))
        with pytest.raises(StartupError) as info:
            harness.start_node("qos_bad", **{f"qos_overrides.{topic}.subscription.{policy}": setting})
        assert reason in str(info.value)


def test_without_vision_msgs_only_prediction_is_published(harness: Any) -> None:
    try:
        import vision_msgs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vision_msgs is installed here (test/node/test_vision_msgs.py covers it)")
    node = harness.start_node()
    name = node.get_fully_qualified_name()
    assert harness.probe.count_publishers(f"{name}/prediction") == 1
    assert harness.probe.count_publishers(f"{name}/classification") == 0
    assert harness.probe.count_publishers(f"{name}/label_info") == 0
