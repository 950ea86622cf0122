"""Camera-sized frames from another process reach the node's best-effort subscription.

A 640x480 rgb8 frame (900 KiB) is larger than Fast DDS's default 512 KiB shared-memory segment;
with the default transports such frames from another process never reached the node's
best-effort (sensor-data QoS) subscription on this machine (docs/node.md, "Large frames").
``config/fastdds_large_frames.xml`` is the fix the package ships: here a camera process and the
installed ``classifier_node`` both load it, and the frames arrive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

# A camera in its own process: 640x480 rgb8 at 10 Hz with a reliable publisher (like most drivers).
CAMERA = """
import sys, time
import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image

topic, seconds = sys.argv[1], float(sys.argv[2])
with rclpy.init():
    node = Node("large_frame_camera")
    pub = node.create_publisher(Image, topic, 10)
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    msg = Image(height=480, width=640, encoding="rgb8", step=640 * 3, data=rgb.tobytes())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        pub.publish(msg)
        time.sleep(0.1)
"""


def test_640x480_frames_from_another_process(install_prefix: Path, core: Any) -> None:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from dynamic_ofa_ros.msg import Prediction

    profile = (
        install_prefix
        / "dynamic_ofa_ros"
        / "share"
        / "dynamic_ofa_ros"
        / "config"
        / "fastdds_large_frames.xml"
    )
    assert profile.is_file(), f"{profile} missing: run make build"
    env = {
        **os.environ,
        "FASTDDS_DEFAULT_PROFILES_FILE": str(profile),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    }
    exe = install_prefix / "dynamic_ofa_ros" / "lib" / "dynamic_ofa_ros" / "classifier_node"
    node_args = ["-p", "model:=random", "-p", "device:=cpu", "-p", f"level_table:={core.table_path}"]
    classifier = subprocess.Popen(
        [str(exe), "--ros-args", "-r", "__ns:=/large", *node_args, "-p", "threads:=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    camera = subprocess.Popen([sys.executable, "-c", CAMERA, "/large/image", "120"], env=env)
    context = Context()
    rclpy.init(context=context)
    probe = Node("large_frames_probe", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(probe)
    got: list[Any] = []
    probe.create_subscription(Prediction, "/large/dynamic_ofa_classifier/prediction", got.append, 10)
    try:
        deadline = time.monotonic() + 100.0
        while len(got) < 5 and time.monotonic() < deadline and classifier.poll() is None:
            executor.spin_once(timeout_sec=0.2)
        assert len(got) >= 5, (
            f"{len(got)} predictions of 640x480 frames (classifier exit {classifier.poll()})"
        )
        assert all(p.latency_ms >= p.inference_ms > 0.0 for p in got)
    finally:
        executor.shutdown()
        probe.destroy_node()
        rclpy.shutdown(context=context)
        for proc in (camera, classifier):
            proc.send_signal(signal.SIGINT)
        for proc in (camera, classifier):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
