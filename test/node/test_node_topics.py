"""Every topic of the classifier node, end to end over Fast DDS from a separate probe node.

* ``image`` in every supported encoding (rgb8, bgr8, rgba8, bgra8, mono8; with row padding)
  gives exactly the core's result on the same pixels; ``image/compressed`` (JPEG, PNG) too.
* ``~/prediction`` copies the input header (stamp and frame_id) and fills every field.
* ``~/status`` arrives periodically and on every level switch; ``/diagnostics`` carries the
  manager's state.
* Latest-frame policy under a 60 fps publisher: frames are dropped, no backlog builds up.
"""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.ros


def _pin_level(harness: Any, node: Any, level: int) -> None:
    from dynamic_ofa_ros.srv import SetLevel

    client = harness.client(SetLevel, f"{node.get_fully_qualified_name()}/set_level")
    response, _ = harness.call(client, SetLevel.Request(level=level))
    assert response.accepted and response.level == level, response.message


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _send_and_wait(harness: Any, pub: Any, msg: Any, predictions: list[Any], waiter: Any) -> Any:
    """Publish ``msg`` (stamped now, unique) until its prediction arrives; return that prediction."""
    stamp = harness.now_ns()
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp // 1_000_000_000, stamp % 1_000_000_000

    def arrived() -> Any:
        return next((p for p in list(predictions) if _stamp_ns(p) == stamp), None)

    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:  # best effort: re-send if a sample got lost
        pub.publish(msg)
        try:
            return waiter(arrived, 2.0, "prediction")
        except AssertionError:
            continue
    raise AssertionError("no prediction for the published frame within 30 s")


def test_prediction_fields_and_header(harness: Any, photo: np.ndarray, image_msg: Any, waiter: Any) -> None:
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros import labels
    from dynamic_ofa_ros.msg import Prediction

    node = harness.start_node(top_k=7)
    ns = node.get_fully_qualified_name()
    predictions = harness.collect(Prediction, f"{ns}/prediction")
    pub = harness.publisher(Image, f"{harness.namespace}/image")
    msg = image_msg(photo, "rgb8", frame_id="front_camera")
    pred = _send_and_wait(harness, pub, msg, predictions, waiter)

    assert pred.header.frame_id == "front_camera"
    assert (pred.header.stamp.sec, pred.header.stamp.nanosec) == (
        msg.header.stamp.sec,
        msg.header.stamp.nanosec,
    )
    assert 0 <= pred.class_id < 1000
    assert pred.label == labels.label(pred.class_id) and pred.label
    assert len(pred.top_ids) == 7 and len(pred.top_scores) == 7
    assert pred.top_ids[0] == pred.class_id and pred.top_scores[0] == pytest.approx(pred.score)
    assert list(pred.top_scores) == sorted(pred.top_scores, reverse=True)
    assert 0.0 < pred.score <= 1.0
    n_levels = len(harness.core.table.levels)
    assert 1 <= pred.level <= n_levels
    assert pred.expected_accuracy == pytest.approx(harness.core.table.levels[pred.level - 1].accuracy)
    assert pred.inference_ms > 0.0
    # latency counts from the header stamp (same clock): it includes the model time
    assert pred.latency_ms >= pred.inference_ms


@pytest.mark.parametrize("pad", [0, 13])
def test_supported_encodings_match_core(
    harness: Any, core: Any, photo: np.ndarray, image_msg: Any, waiter: Any, pad: int
) -> None:
    """rgb8/bgr8/rgba8/bgra8 of one picture give the core's result bit for bit; mono8 its grey version."""
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import Prediction

    node = harness.start_node()
    _pin_level(harness, node, 1)
    predictions = harness.collect(Prediction, f"{node.get_fully_qualified_name()}/prediction")
    pub = harness.publisher(Image, f"{harness.namespace}/image")

    engine = core.engine()
    engine.switch(1)
    expected_rgb = engine.infer(photo)
    grey = np.repeat(photo[:, :, :1], 3, axis=2)
    expected_grey = engine.infer(np.ascontiguousarray(grey))
    for encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
        pred = _send_and_wait(harness, pub, image_msg(photo, encoding, pad=pad), predictions, waiter)
        expected = expected_grey if encoding == "mono8" else expected_rgb
        top = engine.topk(expected.probs, 5)
        assert pred.level == 1, encoding
        assert list(pred.top_ids) == [i for i, _ in top], encoding
        np.testing.assert_allclose(pred.top_scores, [p for _, p in top], rtol=1e-5, err_msg=encoding)
    assert node.errors == 0


def test_compressed_jpeg_and_png(harness: Any, core: Any, photo: np.ndarray, waiter: Any) -> None:
    """``<image>/compressed``: PNG equals the raw image's result; JPEG equals the core on the decoded JPEG."""
    from sensor_msgs.msg import CompressedImage

    from dynamic_ofa_ros.image_input import decode_compressed
    from dynamic_ofa_ros.msg import Prediction

    node = harness.start_node(use_compressed=True)
    _pin_level(harness, node, 2)
    predictions = harness.collect(Prediction, f"{node.get_fully_qualified_name()}/prediction")
    pub = harness.publisher(CompressedImage, f"{harness.namespace}/image/compressed")
    engine = core.engine()
    engine.switch(2)
    bgr = photo[:, :, ::-1]
    for fmt, ext in (("png", ".png"), ("rgb8; jpeg compressed bgr8", ".jpg")):
        ok, encoded = cv2.imencode(ext, bgr)
        assert ok
        msg = CompressedImage()
        msg.format = fmt
        msg.data = encoded.tobytes()
        pred = _send_and_wait(harness, pub, msg, predictions, waiter)
        decoded = decode_compressed(encoded.tobytes(), fmt=fmt)
        if ext == ".png":
            assert np.array_equal(decoded, photo)
        top = engine.topk(engine.infer(decoded).probs, 5)
        assert list(pred.top_ids) == [i for i, _ in top], fmt
        assert pred.level == 2


def test_status_periodic_and_on_switch(harness: Any, photo: np.ndarray, image_msg: Any, waiter: Any) -> None:
    from dynamic_ofa_ros.msg import ManagerStatus
    from dynamic_ofa_ros.srv import SetLevel

    node = harness.start_node(status_rate=4.0)
    ns = node.get_fully_qualified_name()
    statuses = harness.collect(ManagerStatus, f"{ns}/status")
    waiter(lambda: len(statuses) >= 3, 20.0, "three periodic status messages")
    first = statuses[0]
    n = len(harness.core.table.levels)
    assert first.node_name == ns
    assert first.n_levels == n and first.level == n  # no budget: the most accurate level
    assert first.mode in ("lut", "reactive", "manual")
    assert first.budget_ms == 0.0 and first.min_accuracy == 0.0
    assert first.device == "cpu"
    assert list(first.level_latency_ms) == pytest.approx([lv.latency_ms for lv in harness.core.table.levels])
    assert list(first.level_accuracy) == pytest.approx([lv.accuracy for lv in harness.core.table.levels])
    assert first.expected_accuracy == pytest.approx(first.level_accuracy[first.level - 1])

    # a switch publishes at once (long before the next periodic message at this low rate)
    node_slow = harness.start_node("slow_status", status_rate=0.1)
    slow = harness.collect(ManagerStatus, f"{node_slow.get_fully_qualified_name()}/status")
    time.sleep(0.5)
    before = len(slow)
    client = harness.client(SetLevel, f"{node_slow.get_fully_qualified_name()}/set_level")
    response, _ = harness.call(client, SetLevel.Request(level=1))
    assert response.accepted
    status = waiter(lambda: next((s for s in slow[before:] if s.level == 1), None), 5.0, "status on switch")
    assert status.mode == "manual" and status.switches >= 1


def test_diagnostics(harness: Any, photo: np.ndarray, image_msg: Any, waiter: Any) -> None:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import Prediction

    node = harness.start_node(latency_budget_ms=5000.0)
    ns = node.get_fully_qualified_name()
    diagnostics = harness.collect(DiagnosticArray, "/diagnostics")
    predictions = harness.collect(Prediction, f"{ns}/prediction")
    pub = harness.publisher(Image, f"{harness.namespace}/image")
    _send_and_wait(harness, pub, image_msg(photo), predictions, waiter)

    def ours() -> Any:
        for array in reversed(list(diagnostics)):
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if status.name.startswith(ns) and int(values.get("frames", 0)) >= 1:
                    return status
        return None

    status = waiter(ours, 20.0, "diagnostics of the node after a frame")
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.OK
    assert status.hardware_id == "cpu"
    for key in (
        "level",
        "n_levels",
        "mode",
        "budget_ms",
        "window_mean_ms",
        "dropped",
        "errors",
        "coordination",
    ):
        assert key in values, key
    assert float(values["budget_ms"]) == 5000.0
    assert values["coordination"] == "alone"
    assert "within budget" in status.message


def test_latest_frame_policy_at_60fps(harness: Any, photo: np.ndarray, image_msg: Any, waiter: Any) -> None:
    """A 60 fps stream into the slowest level: frames are dropped, never queued.

    No backlog means: after the publisher stops, the node processes at most the frame in flight
    and the one in the slot, and the last frame published is among them.
    """
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import ManagerStatus, Prediction

    node = harness.start_node()  # keep last 1 (the default image QoS)
    n = len(harness.core.table.levels)
    _pin_level(harness, node, n)  # the slowest level: well below 60 fps on this CPU
    ns = node.get_fully_qualified_name()
    predictions = harness.collect(Prediction, f"{ns}/prediction")
    statuses = harness.collect(ManagerStatus, f"{ns}/status")
    pub = harness.publisher(Image, f"{harness.namespace}/image", reliable=True, depth=100)
    frame = image_msg(photo)
    published: list[int] = []
    period = 1.0 / 60.0
    start = time.perf_counter()
    for i in range(150):
        stamp = harness.now_ns()
        frame.header.stamp.sec, frame.header.stamp.nanosec = stamp // 1_000_000_000, stamp % 1_000_000_000
        pub.publish(frame)
        published.append(stamp)
        delay = start + (i + 1) * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    last = published[-1]
    processed_at_stop = node.classifier.manager.status().frames  # counted in the node: no transport delay
    waiter(lambda: any(_stamp_ns(p) == last for p in predictions), 30.0, "the last frame's prediction")
    time.sleep(1.0)  # anything still queued would be processed now
    after_stop = node.classifier.manager.status().frames - processed_at_stop
    assert after_stop <= 2, f"{after_stop} frames processed after the stream stopped: a backlog"
    assert len(predictions) < len(published)
    stamps = [_stamp_ns(p) for p in predictions]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert node.dropped > 0
    waiter(lambda: any(s.dropped > 0 for s in statuses), 10.0, "status reporting drops")
    # Bounded latency: every frame waited at most for the one in flight before it.
    worst_inference = max(p.inference_ms for p in predictions)
    assert max(p.latency_ms for p in predictions) < 20 * worst_inference + 1000.0


def test_diagnostics_warn_when_level_1_misses_budget(
    harness: Any, photo: np.ndarray, image_msg: Any, waiter: Any
) -> None:
    """A budget no level can meet: level 1 runs, the status names the unmet constraint, diagnostics WARN."""
    from diagnostic_msgs.msg import DiagnosticStatus
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import Prediction

    node = harness.start_node(latency_budget_ms=0.5)
    predictions = harness.collect(Prediction, f"{node.get_fully_qualified_name()}/prediction")
    pub = harness.publisher(Image, f"{harness.namespace}/image")
    for _ in range(3):
        _send_and_wait(harness, pub, image_msg(photo), predictions, waiter)
    assert predictions[-1].level == 1
    status = node.status_message()
    assert status.level == 1 and status.unmet == "latency" and status.violations >= 3
    diag = node.diagnostics().status[0]
    assert diag.level == DiagnosticStatus.WARN
    assert "level 1" in diag.message


def test_diagnostics_warn_when_publishers_send_no_frames(
    harness: Any, photo: np.ndarray, image_msg: Any, waiter: Any
) -> None:
    """A publisher on the image topic but no frame: WARN with the transport advice, cleared by a frame."""
    from diagnostic_msgs.msg import DiagnosticStatus
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import Prediction

    node = harness.start_node(status_rate=5.0)
    predictions = harness.collect(Prediction, f"{node.get_fully_qualified_name()}/prediction")
    pub = harness.publisher(Image, f"{harness.namespace}/image")
    waiter(lambda: node.input_warning, 30.0, "the no-frames warning")
    status = node.diagnostics().status[0]
    assert status.level == DiagnosticStatus.WARN
    assert "no frame received" in status.message and "fastdds_large_frames.xml" in status.message
    assert f"qos_overrides.{harness.namespace}/image.subscription.reliability:=reliable" in status.message
    assert {kv.key: kv.value for kv in status.values}["frames_received"] == "0"
    _send_and_wait(harness, pub, image_msg(photo), predictions, waiter)
    waiter(lambda: not node.input_warning, 10.0, "the warning to clear after a frame")
    assert node.diagnostics().status[0].level == DiagnosticStatus.OK
