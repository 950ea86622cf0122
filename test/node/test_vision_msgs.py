"""The standard output: ``vision_msgs/Classification`` and a transient-local ``vision_msgs/LabelInfo``.

``vision_msgs`` is not on PyPI: the ``ros_deps`` fixture builds it from ``../shared/ros-deps``
(``scripts/build-ros-deps``; skipped with the reason when absent). The installed
``classifier_node`` runs in that environment, and a subscriber in a second process (the same
environment) receives both messages: the label map although it subscribed after the node had
published it (transient local), and classifications that agree with the ``Prediction`` of the
same frame. The node's params file sets a ``qos_overrides`` entry in the nested YAML form, and
the subscriber checks that the image subscription took it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

PROBE = """
import json, sys, time
import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from vision_msgs.msg import Classification, LabelInfo
from dynamic_ofa_ros.msg import Prediction

ns, photo, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
rgb = np.load(photo)
out = f"{ns}/dynamic_ofa_classifier"
with rclpy.init():
    node = Node("vision_probe")
    got = {"classification": [], "prediction": [], "label_info": []}
    node.create_subscription(Classification, f"{out}/classification", got["classification"].append, 10)
    node.create_subscription(Prediction, f"{out}/prediction", got["prediction"].append, 10)
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(LabelInfo, f"{out}/label_info", got["label_info"].append, latched)
    reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Image, f"{ns}/image", reliable)
    h, w, _ = rgb.shape
    msg = Image(height=h, width=w, encoding="rgb8", step=w * 3, data=rgb.tobytes())
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end and (len(got["classification"]) < 3 or not got["label_info"]):
        msg.header.frame_id = f"frame{i}"
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
        pub.publish(msg)
        i += 1
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
    image_subs = node.get_subscriptions_info_by_topic(f"{ns}/image")
    print(json.dumps({
        "classification": [
            {"frame_id": c.header.frame_id, "stamp": [c.header.stamp.sec, c.header.stamp.nanosec],
             "results": [[r.class_id, r.score] for r in c.results]}
            for c in got["classification"]
        ],
        "prediction": [
            {"frame_id": p.header.frame_id, "top_ids": list(p.top_ids), "top_scores": list(p.top_scores)}
            for p in got["prediction"]
        ],
        "label_info": [
            {"class_map": [[v.class_id, v.class_name] for v in l.class_map], "threshold": l.threshold}
            for l in got["label_info"]
        ],
        "image_subscription_reliability": [s.qos_profile.reliability.name for s in image_subs],
    }))
"""


def _start_node(
    install_prefix: Path, core: Any, env: dict[str, str], ns: str, params: Path
) -> tuple[subprocess.Popen[str], list[str], threading.Event]:
    exe = install_prefix / "dynamic_ofa_ros" / "lib" / "dynamic_ofa_ros" / "classifier_node"
    cmd = [str(exe), "--ros-args", "-r", f"__ns:={ns}", "--params-file", str(params)]
    for name, value in (
        ("model", "random"),
        ("device", "cpu"),
        ("level_table", core.table_path),
        ("threads", 1),
    ):
        cmd += ["-p", f"{name}:={value}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "ready:" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, lines, ready


def test_classification_and_label_info_received(
    ros_deps: dict[str, str], install_prefix: Path, core: Any, photo: np.ndarray, tmp_path: Path
) -> None:
    from dynamic_ofa_ros import labels

    env = {**ros_deps, "ROS_DOMAIN_ID": os.environ["ROS_DOMAIN_ID"]}
    ns = f"/vis{os.getpid()}"
    params = tmp_path / "params.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    qos_overrides:\n"
        f"      {ns}/image:\n        subscription:\n          reliability: reliable\n"
    )
    np.save(tmp_path / "photo.npy", photo)
    node, lines, ready = _start_node(install_prefix, core, env, ns, params)
    try:
        assert ready.wait(120.0), "node never became ready:\n" + "".join(lines)
        time.sleep(1.0)  # the label map is published at activation, before the subscriber exists
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, ns, str(tmp_path / "photo.npy"), "60"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert probe.returncode == 0, probe.stderr
        got = json.loads(probe.stdout.strip().splitlines()[-1])
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
    output = "".join(lines)
    assert node.returncode == 0, output
    assert "vision_msgs not installed" not in output, output

    assert got["image_subscription_reliability"] == ["RELIABLE"], got  # the params file's qos_overrides

    (label_info,) = got["label_info"]  # exactly one, received by a late subscriber: transient local
    assert label_info["threshold"] == 0.0
    names = labels.imagenet_labels()
    assert label_info["class_map"] == [[i, name] for i, name in enumerate(names)]

    assert len(got["classification"]) >= 3
    predictions = {p["frame_id"]: p for p in got["prediction"]}
    matched = 0
    for classification in got["classification"]:
        results = classification["results"]
        assert len(results) == 5  # top_k
        ids = [int(class_id) for class_id, _ in results]
        scores = [score for _, score in results]
        assert all(0 <= i < 1000 for i in ids) and all(0.0 <= s <= 1.0 for s in scores)
        assert scores == sorted(scores, reverse=True)
        assert classification["frame_id"].startswith("frame") and classification["stamp"][0] > 0
        prediction = predictions.get(classification["frame_id"])
        if prediction is not None:  # the same frame: the same classes and scores
            matched += 1
            assert ids == prediction["top_ids"]
            assert scores == pytest.approx(prediction["top_scores"], abs=1e-6)
    assert matched >= 1
