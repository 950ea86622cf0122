"""Hostile input over real transport (issue 15): the node keeps classifying and answering.

* a flood of 300 fake coordination peers (distinct names, all claiming a violated budget),
  re-sent every 0.5 s: before the fix the planner's cost grew with the 4th power of the peer
  count on the inference thread, inside locks the services and status need, and the node froze;
* compressed payloads whose content is not JPEG/PNG (a TIFF labelled ``jpeg``) or whose header
  claims 20000x20000 pixels are refused before decoding, and the node goes on classifying.

Liveness is what is asserted (frames keep being classified, services answer within a generous
limit, /diagnostics keep coming); rates and latencies are measured by ``make soak``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

GROUP = "hostile"


def test_coordination_flood_does_not_freeze_the_node(
    harness: Any, photo: np.ndarray, image_msg: Any, waiter: Any
) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import ManagerStatus
    from dynamic_ofa_ros.node import COORDINATION_TOPIC
    from dynamic_ofa_ros.ros_tools.soak import fake_peer_statuses
    from dynamic_ofa_ros.srv import GetLevels

    node = harness.start_node(coordination_group=GROUP, latency_budget_ms=500.0, window_size=3)
    name = node.get_fully_qualified_name()
    diagnostics = harness.collect(DiagnosticArray, "/diagnostics")
    camera = harness.publisher(Image, f"{harness.namespace}/image")
    peers = harness.probe.create_publisher(ManagerStatus, COORDINATION_TOPIC, 1000)
    client = harness.client(GetLevels, f"{name}/get_levels")
    frame = image_msg(photo)

    def ours() -> int:
        with harness._lock:
            return sum(1 for a in diagnostics for s in a.status if s.name.startswith(name))

    camera.publish(frame)
    waiter(lambda: node.classifier.status().frames >= 1, 30.0, "a first classified frame")
    flood_end = time.monotonic() + 8.0
    frames_before, diagnostics_before = node.classifier.status().frames, ours()
    answered_ms = []
    next_flood = 0.0
    while (now := time.monotonic()) < flood_end:
        if now >= next_flood:
            for msg in fake_peer_statuses(300, GROUP, stamp_ns=time.time_ns()):
                peers.publish(msg)
            next_flood = now + 0.5
        camera.publish(frame)
        _response, ms = harness.call(client, GetLevels.Request(), timeout=10.0)
        answered_ms.append(ms)
        time.sleep(0.05)
    frames = node.classifier.status().frames - frames_before
    assert frames >= 10, f"only {frames} frames classified during the flood"
    assert ours() > diagnostics_before, "/diagnostics stopped during the flood"
    assert node.classifier.coordinator is not None
    assert len(node.peer_names()) <= node.classifier.coordinator.max_peers
    assert node.classifier.coordinator.ignored > 0  # the statuses beyond the bound were counted
    status = node.status_message()
    assert status.peers_ignored == node.classifier.coordinator.ignored > 0


def test_compressed_payloads_checked_by_content(
    harness: Any, photo: np.ndarray, image_msg: Any, waiter: Any
) -> None:
    from sensor_msgs.msg import CompressedImage, Image

    from dynamic_ofa_ros.ros_tools.soak import png_bomb, tiff_payload

    node = harness.start_node(use_compressed=True)
    camera = harness.publisher(Image, f"{harness.namespace}/image")
    compressed = harness.publisher(CompressedImage, f"{harness.namespace}/image/compressed", reliable=True)
    compressed.publish(CompressedImage(format="jpeg", data=tiff_payload()))
    compressed.publish(CompressedImage(format="png", data=png_bomb()))
    waiter(lambda: node.errors >= 2, 20.0, "both payloads to be refused")
    assert "TIFF" in node.last_error or "PNG" in node.last_error or "20000" in node.last_error
    before = node.classifier.status().frames
    camera.publish(image_msg(photo))
    waiter(lambda: node.classifier.status().frames > before, 20.0, "classification to go on")
