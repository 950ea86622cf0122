"""Bad input the node must survive (issue 4), each a test.

Per-frame problems (zero-size image, ``step * height != len(data)``, 8000x8000 frame,
corrupted JPEG, unsupported encodings) are counted in ``errors`` and the next good frame is
classified as usual. Bad requests (NaN/negative/huge budget, level out of range) are
rejected with a reason (see also test_node_services.py). Start-up failures (a level table
that does not match the model, a missing model file or table) end with one clear fatal line
naming the file, a non-zero exit code and no traceback; one of them runs the installed
executable as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros


@pytest.fixture
def live(harness: Any, image_msg: Any, photo: np.ndarray, waiter: Any) -> Any:
    """A running node, an Image and a CompressedImage publisher, and a ``check_alive()`` helper."""
    from sensor_msgs.msg import CompressedImage, Image

    from dynamic_ofa_ros.msg import Prediction

    node = harness.start_node(use_compressed=True)
    predictions = harness.collect(Prediction, f"{node.get_fully_qualified_name()}/prediction")
    raw = harness.publisher(Image, f"{harness.namespace}/image", reliable=True)
    compressed = harness.publisher(CompressedImage, f"{harness.namespace}/image/compressed", reliable=True)

    class Live:
        def __init__(self) -> None:
            self.node, self.raw, self.compressed, self.predictions = node, raw, compressed, predictions

        def send_bad(self, pub: Any, msg: Any, errors: int = 1) -> None:
            """Publish a bad frame and wait until the node has counted it."""
            before = node.errors
            pub.publish(msg)
            waiter(lambda: node.errors >= before + errors, 30.0, "the frame error to be counted")

        def check_alive(self) -> None:
            """A good frame still gives a prediction (the node survived)."""
            stamp = harness.now_ns()
            good = image_msg(photo, stamp_ns=stamp)
            raw.publish(good)
            waiter(
                lambda: any(
                    p.header.stamp.sec * 1_000_000_000 + p.header.stamp.nanosec == stamp for p in predictions
                ),
                30.0,
                "a prediction after the bad frame",
            )
            assert node.active  # the inference thread is alive

    return Live()


def _image(width: int, height: int, step: int, encoding: str, data: bytes) -> Any:
    from sensor_msgs.msg import Image

    msg = Image()
    msg.width, msg.height, msg.step, msg.encoding = width, height, step, encoding
    msg.data = data
    return msg


def test_zero_size_image(live: Any) -> None:
    live.send_bad(live.raw, _image(0, 0, 0, "rgb8", b""))
    assert "empty" in live.node.last_error
    live.check_alive()


def test_step_times_height_mismatch(live: Any) -> None:
    live.send_bad(live.raw, _image(32, 24, 32 * 3, "rgb8", bytes(32 * 3 * 24 - 5)))
    assert "step*height" in live.node.last_error
    live.send_bad(live.raw, _image(32, 24, 10, "rgb8", bytes(10 * 24)))  # step < width * channels
    live.check_alive()


def test_8000x8000_image(live: Any) -> None:
    """A real 8000x8000 mono8 frame (64 MB) crosses DDS and is refused before conversion."""
    live.send_bad(live.raw, _image(8000, 8000, 8000, "mono8", bytes(8000 * 8000)))
    assert "MP" in live.node.last_error
    live.check_alive()


def test_corrupted_jpeg(live: Any, photo: np.ndarray) -> None:
    import cv2
    from sensor_msgs.msg import CompressedImage

    ok, jpeg = cv2.imencode(".jpg", photo)
    assert ok
    data = bytearray(jpeg.tobytes())
    for fmt, payload in (
        ("jpeg", bytes(data[: len(data) // 3])),  # truncated
        ("jpeg", b"\xff\xd8" + bytes(range(256)) * 8),  # header then garbage
        ("jpeg", b""),  # empty
        ("tiff", bytes(data)),  # unsupported compressed format
    ):
        msg = CompressedImage()
        msg.format = fmt
        msg.data = payload
        live.send_bad(live.compressed, msg)
    live.check_alive()


@pytest.mark.parametrize("encoding", ["32FC1", "rgb16", "bayer_rggb16", "nv21", "nonsense"])
def test_unsupported_encoding(live: Any, encoding: str) -> None:
    live.send_bad(live.raw, _image(16, 8, 16 * 4, encoding, bytes(16 * 4 * 8)))
    assert "not supported" in live.node.last_error
    live.check_alive()


def test_throttled_warning_and_error_count(live: Any) -> None:
    """Many bad frames: every one counted, reported in ~/status, and the node keeps going."""
    for _ in range(5):
        live.send_bad(live.raw, _image(16, 8, 48, "32FC1", bytes(48 * 8)))
    status = live.node.status_message()
    assert status.errors >= 5
    live.check_alive()


def test_bad_budget_and_level_requests(harness: Any, core: Any) -> None:
    from dynamic_ofa_ros.srv import SetConstraints, SetLevel

    node = harness.start_node()
    ns = node.get_fully_qualified_name()
    constraints = harness.client(SetConstraints, f"{ns}/set_constraints")
    level = harness.client(SetLevel, f"{ns}/set_level")
    n = len(core.table.levels)
    for budget in (float("nan"), -1.0, 1e12):
        response, _ = harness.call(constraints, SetConstraints.Request(latency_budget_ms=budget))
        assert not response.accepted and response.message and response.level == n
    for bad in (n + 1, 99, 255):
        response, _ = harness.call(level, SetLevel.Request(level=bad))
        assert not response.accepted
        assert f"1..{n}" in response.message
        assert response.level == n
    assert node.classifier.manager.status().mode != "manual"
    assert node.classifier.current_level == n


# ----------------------------------------------------------------------------------- start-up


def _start(node: Any) -> None:
    """Configure + activate ``node`` as classifier_node's main() does; destroy it afterwards."""
    try:
        node.start()
    finally:
        node.destroy_node()


def test_level_table_not_matching_model(rclpy_context: Any, core: Any) -> None:
    """A table built for another super-network (other weights) refuses to start, naming the file."""
    from rclpy.parameter import Parameter

    from dynamic_ofa_ros.node import ClassifierNode, StartupError
    from dynamic_ofa_ros.supernet import load_supernet

    other = load_supernet("random:1", allow_random=True)
    with pytest.raises(StartupError) as info:
        _start(
            ClassifierNode(
                node_name="mismatch",
                context=rclpy_context,
                parameter_overrides=[
                    Parameter("model", value="random:1"),
                    Parameter("level_table", value=str(core.table_path)),
                    Parameter("device", value="cpu"),
                ],
                supernet=other,
            )
        )
    message = str(info.value)
    assert str(core.table_path) in message
    assert "sha256" in message.lower() or "checksum" in message.lower() or "super-network" in message.lower()


def _table_profiled_on_gpu(core: Any, folder: Path) -> Path:
    """The session's CPU table relabelled as profiled on a GPU (16 host threads), BN file beside it."""
    data = json.loads(core.table_path.read_text())
    data["device"], data["device_name"] = "cuda", "NVIDIA Test GPU"
    data["profiling"]["threads"] = 16
    shutil.copy(core.table_path.parent / data["bn_file"], folder / data["bn_file"])
    path = folder / "cuda.json"
    path.write_text(json.dumps(data))
    return path


def test_level_table_of_other_device(rclpy_context: Any, core: Any, harness: Any, tmp_path: Path) -> None:
    """A GPU table on the CPU: refused by default; accepted for accuracy checks, then reactive only."""
    from rclpy.parameter import Parameter

    from dynamic_ofa_ros.node import ClassifierNode, StartupError

    gpu_table = _table_profiled_on_gpu(core, tmp_path)
    accept = [Parameter("check_table_device", value=False)]
    for extra, expected in (([], "profiled on 'cuda'"), (accept, "lut")):
        with pytest.raises(StartupError) as info:
            _start(
                ClassifierNode(
                    node_name="other_device",
                    context=rclpy_context,
                    parameter_overrides=[
                        Parameter("model", value="random"),
                        Parameter("level_table", value=str(gpu_table)),
                        Parameter("device", value="cpu"),
                        Parameter("mode", value="lut"),
                        *extra,
                    ],
                    supernet=core.supernet,
                )
            )
        assert expected in str(info.value)
        assert str(gpu_table) in str(info.value)

    node = harness.start_node("other_device_ok", level_table=str(gpu_table), check_table_device=False)
    assert node.classifier.manager.mode == "reactive"
    assert node.classifier.manager.status().mode == "reactive"
    assert node.classifier.table.device == "cuda"
    assert node.classifier.engine.threads == 1  # the node's threads parameter, not the GPU host's 16


def test_invalid_parameter_at_start(rclpy_context: Any, core: Any) -> None:
    from rclpy.parameter import Parameter

    from dynamic_ofa_ros.node import ClassifierNode, StartupError

    for name, value in (("mode", "fastest"), ("device", "tpu"), ("window_size", 0)):
        with pytest.raises(StartupError) as info:
            _start(
                ClassifierNode(
                    node_name="badparam",
                    context=rclpy_context,
                    parameter_overrides=[
                        Parameter("model", value="random"),
                        Parameter("level_table", value=str(core.table_path)),
                        Parameter(name, value=value),
                    ],
                    supernet=core.supernet,
                )
            )
        assert name in str(info.value)


def _executable(install_prefix: Path) -> Path:
    path = install_prefix / "dynamic_ofa_ros" / "lib" / "dynamic_ofa_ros" / "classifier_node"
    assert path.is_file(), f"{path} missing: run make build"
    return path


def _run(cmd: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


@pytest.mark.slow
def test_executable_missing_model_file(install_prefix: Path, tmp_path: Path) -> None:
    """The installed executable with a missing checkpoint: one fatal line naming it, exit 1, no traceback."""
    missing = tmp_path / "no_such_weights.safetensors"
    proc = _run(
        [str(_executable(install_prefix)), "--ros-args", "-p", f"model:={missing}", "-p", "device:=cpu"]
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    fatal = [line for line in output.splitlines() if "FATAL" in line]
    assert len(fatal) == 1, output
    assert str(missing) in fatal[0]


@pytest.mark.slow
def test_executable_missing_level_table(install_prefix: Path, tmp_path: Path) -> None:
    missing = tmp_path / "levels" / "cpu.json"
    proc = _run(
        [
            str(_executable(install_prefix)),
            "--ros-args",
            "-p",
            "model:=random",
            "-p",
            "device:=cpu",
            "-p",
            f"level_table:={missing}",
        ]
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    fatal = [line for line in output.splitlines() if "FATAL" in line]
    assert len(fatal) == 1 and str(missing) in fatal[0] and "dofa-levels" in fatal[0], output


@pytest.mark.slow
def test_executable_runs_and_stops_cleanly(install_prefix: Path, core: Any, tmp_path: Path) -> None:
    """The installed executable starts on a table, classifies a frame, and exits 0 on SIGINT."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import Prediction

    proc = subprocess.Popen(
        [
            str(_executable(install_prefix)),
            "--ros-args",
            "-r",
            "__ns:=/subproc",
            "-p",
            "model:=random",
            "-p",
            "device:=cpu",
            "-p",
            f"level_table:={core.table_path}",
            "-p",
            "threads:=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )
    context = Context()
    rclpy.init(context=context)
    node = Node("subproc_probe", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    got: list[Any] = []
    node.create_subscription(Prediction, "/subproc/dynamic_ofa_classifier/prediction", got.append, 10)
    pub = node.create_publisher(Image, "/subproc/image", 10)
    try:
        deadline = time.monotonic() + 90.0
        rgb = np.full((48, 64, 3), 128, np.uint8)
        while not got and time.monotonic() < deadline and proc.poll() is None:
            msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=rgb.tobytes())
            pub.publish(msg)
            executor.spin_once(timeout_sec=0.2)
        assert got, f"no prediction from the subprocess (exit {proc.poll()})"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    assert got[0].level >= 1
    print(output[-2000:], file=sys.stderr)
