"""The commands users type, as they type them: `ros2 launch`, `ros2 node/service/param/topic/lifecycle`.

``launch``, ``launch_ros`` and ``ros2cli`` are not on PyPI: the ``ros_deps`` fixture builds them
from ``../shared/ros-deps`` (skipped with the reason when absent) and every command below runs
as a subprocess in that environment, against the installed package, over real Fast DDS (the
session's ROS domain, localhost discovery). Commands that discover nodes run with
``--no-daemon`` (no ROS 2 daemon outlives the tests).

One ``ros2 launch dynamic_ofa_ros classifier.launch.py`` (the shipped embedded model and CPU
level table, ``device:=cpu``, a budget, an image topic and a namespace given as launch
arguments) serves the tests of this module in order; the last one ends it with Ctrl-C (SIGINT).
``two_classifiers.launch.py`` runs with a params file of its own, and a ``launch_testing``
test (``launch_tests/classifier_launch.py``, run by ``launch_test``) checks the outputs of
the launch file the ROS way.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NODE_NAME = "dynamic_ofa_classifier"
# Discovery without the daemon: how long a command listens before deciding what exists.
DISCOVERY = ("--no-daemon", "--spin-time", "5")
# Messages that mean "not discovered yet" (discovery is asynchronous, slower on a busy machine:
# four retries are allowed).
NOT_DISCOVERED = ("Node not found", "Unable to find node", "does not appear to be published yet")
# A real photo the shipped model classifies right at every level (ImageNet 566, "French horn"),
# from the Imagenette validation set in <shared>/datasets.
PHOTO = ("datasets/imagenette/val-224px.zip", "val/n03394916/ILSVRC2012_val_00001492.JPEG", 566)

# Publishes one photo (a .npy file) as sensor_msgs/Image at 10 Hz until killed.
PUBLISHER = """
import sys, time
import numpy as np
import rclpy
from sensor_msgs.msg import Image

topic, photo = sys.argv[1], sys.argv[2]
rgb = np.load(photo)
rclpy.init()  # not `with rclpy.init()`: Jazzy's rclpy returns None
node = rclpy.create_node("photo_publisher")
pub = node.create_publisher(Image, topic, 10)
h, w, _ = rgb.shape
msg = Image(height=h, width=w, encoding="rgb8", step=w * 3, data=rgb.tobytes())
msg.header.frame_id = "photo"
while True:
    msg.header.stamp = node.get_clock().now().to_msg()
    pub.publish(msg)
    time.sleep(0.1)
"""


@dataclasses.dataclass
class Launched:
    """A ``ros2 launch`` process and everything it printed so far."""

    proc: subprocess.Popen[str]
    lines: list[str]
    ready: threading.Semaphore

    def output(self) -> str:
        """The launch's output (node logs included) so far."""
        return "".join(self.lines)

    def wait_ready(self, nodes: int = 1, timeout: float = 180.0) -> None:
        """Wait for ``nodes`` "ready:" log lines (each node logs one when active)."""
        deadline = time.monotonic() + timeout
        for _ in range(nodes):
            left = deadline - time.monotonic()
            if left <= 0 or not self.ready.acquire(timeout=left):
                pytest.fail(f"the launch did not become ready in {timeout:g} s:\n{self.output()}")

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C: SIGINT to the launch, then its exit code (killed after ``timeout`` s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"ros2 launch ignored SIGINT for {timeout:g} s:\n{self.output()}")
        return int(self.proc.returncode)


def ros2_launch(env: dict[str, str], launch_file: str, *arguments: str) -> Launched:
    """Start ``ros2 launch dynamic_ofa_ros <launch_file> <arguments>``, reading its output."""
    proc = subprocess.Popen(
        ["ros2", "launch", "dynamic_ofa_ros", launch_file, *arguments],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    launched = Launched(proc=proc, lines=[], ready=threading.Semaphore(0))

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            launched.lines.append(line)
            if "ready:" in line:
                launched.ready.release()

    threading.Thread(target=read, daemon=True).start()
    return launched


def ros2(env: dict[str, str], *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``ros2 <args>``; again (up to 5 tries) while it had not discovered the node/topic yet."""
    for attempt in (1, 2, 3, 4, 5):
        done = subprocess.run(
            ["ros2", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if attempt == 5 or not any(m in done.stdout + done.stderr for m in NOT_DISCOVERED):
            break
        time.sleep(2.0)
    return done


def node_list(env: dict[str, str], *expected: str) -> list[str]:
    """``ros2 node list``, again (up to 3 tries) while an ``expected`` node is not discovered yet."""
    for _ in range(3):
        listed = ros2(env, "node", "list", *DISCOVERY).stdout.split()
        if set(expected) <= set(listed):
            break
    return listed


def service_reply(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The ``field=value`` pairs of the response ``ros2 service call`` printed."""
    text = done.stdout + done.stderr
    assert done.returncode == 0 and "response:" in text, text
    body = text.split("response:", 1)[1]
    return {m[0]: m[1].strip("'\"") for m in re.findall(r"(\w+)=('[^']*'|\"[^\"]*\"|[^,()\[\]]+)", body)}


def param_value(env: dict[str, str], node: str, name: str) -> str:
    """``ros2 param get <node> <name>``: the printed value."""
    done = ros2(env, "param", "get", node, name, "--no-daemon", "--timeout", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"value is: (.*)", done.stdout)
    assert match, done.stdout
    return match.group(1).strip()


def echo_once(env: dict[str, str], topic: str, msg_type: str, timeout: float = 60.0) -> dict[str, Any]:
    """``ros2 topic echo --once <topic> <type>``: the message, parsed from its YAML."""
    done = ros2(env, "topic", "echo", "--once", "--timeout", f"{timeout:g}", *DISCOVERY, topic, msg_type)
    assert done.returncode == 0 and done.stdout.strip(), done.stdout + done.stderr
    message = yaml.safe_load(done.stdout.split("\n---", 1)[0])
    assert isinstance(message, dict), done.stdout
    return message


@pytest.fixture(scope="module")
def env(ros_deps: dict[str, str]) -> dict[str, str]:
    """The ros-deps environment in this session's ROS domain."""
    return {**ros_deps, "ROS_DOMAIN_ID": os.environ["ROS_DOMAIN_ID"], "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def photo_file(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """:data:`PHOTO` as an RGB ``.npy`` file, and its ImageNet class."""
    archive, member, label = PHOTO
    if not (shared_dir / archive).is_file():
        pytest.skip(f"{shared_dir / archive} not found (shared data set)")
    with zipfile.ZipFile(shared_dir / archive) as zf:
        bgr = cv2.imdecode(np.frombuffer(zf.read(member), np.uint8), cv2.IMREAD_COLOR)
    path = tmp_path_factory.mktemp("photo") / "photo.npy"
    np.save(path, np.ascontiguousarray(bgr[:, :, ::-1]))
    return path, label


@pytest.fixture(scope="module")
def ns() -> str:
    """A namespace of this module's own (the launch's ``namespace`` argument)."""
    return f"/cmd{os.getpid()}"


@pytest.fixture(scope="module")
def launch(env: dict[str, str], ns: str) -> Iterator[Launched]:
    """``ros2 launch dynamic_ofa_ros classifier.launch.py`` as a user types it, once per module."""
    launched = ros2_launch(
        env,
        "classifier.launch.py",
        f"namespace:={ns}",
        f"image_topic:={ns}/camera/image_raw",
        "device:=cpu",
        "latency_budget_ms:=30.0",
    )
    try:
        launched.wait_ready()
        yield launched
    finally:
        launched.interrupt()


@pytest.fixture(scope="module")
def node(launch: Launched, ns: str) -> str:
    """The full name of the launched node."""
    return f"{ns}/{NODE_NAME}"


def test_launch_arguments_reach_the_node(env: dict[str, str], node: str, ns: str) -> None:
    assert node in node_list(env, node)
    assert param_value(env, node, "latency_budget_ms") == "30.0"  # latency_budget_ms:=30.0
    assert param_value(env, node, "device") == "cpu"  # device:=cpu
    assert param_value(env, node, "model") == "embedded"  # the installed config/classifier.yaml
    info = ros2(env, "node", "info", node, *DISCOVERY)
    assert f"{ns}/camera/image_raw: sensor_msgs/msg/Image" in info.stdout, info.stdout  # image_topic:=
    for service in ("set_constraints", "set_level", "get_levels", "change_state", "get_state"):
        assert f"{node}/{service}:" in info.stdout, info.stdout


def test_set_constraints_service_agrees_with_the_parameter(env: dict[str, str], node: str) -> None:
    srv = ("service", "call", f"{node}/set_constraints", "dynamic_ofa_ros/srv/SetConstraints")
    reply = service_reply(ros2(env, *srv, "{latency_budget_ms: 25.0, min_accuracy: 0.0}"))
    assert reply["accepted"] == "True", reply
    assert reply["message"].startswith("budget 25 ms, min_accuracy 0 %: level"), reply
    assert param_value(env, node, "latency_budget_ms") == "25.0"

    refused = service_reply(ros2(env, *srv, "{latency_budget_ms: -1.0, min_accuracy: 0.0}"))
    assert refused["accepted"] == "False" and "-1.0 ms is not usable" in refused["message"], refused
    assert param_value(env, node, "latency_budget_ms") == "25.0"  # unchanged


def test_param_set_is_the_budget_and_rejects_bad_values(env: dict[str, str], node: str) -> None:
    done = ros2(env, "param", "set", node, "latency_budget_ms", "40.0", "--no-daemon", "--timeout", "10")
    assert "Set parameter successful" in done.stdout, done.stdout + done.stderr
    status = echo_once(env, f"{node}/status", "dynamic_ofa_ros/msg/ManagerStatus")
    assert status["budget_ms"] == 40.0, status  # the manager runs with the parameter's budget

    bad = ros2(env, "param", "set", node, "latency_budget_ms", "-5.0", "--no-daemon", "--timeout", "10")
    assert "Setting parameter failed" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    assert param_value(env, node, "latency_budget_ms") == "40.0"  # unchanged


def test_set_level_and_get_levels(env: dict[str, str], node: str) -> None:
    get = ("service", "call", f"{node}/get_levels", "dynamic_ofa_ros/srv/GetLevels")
    set_level = ("service", "call", f"{node}/set_level", "dynamic_ofa_ros/srv/SetLevel")
    listing = ros2(env, *get)
    n_levels = listing.stdout.count("LevelInfo(")
    assert n_levels >= 2 and "device='cpu'" in listing.stdout, listing.stdout

    locked = service_reply(ros2(env, *set_level, "{level: 2}"))
    assert locked["accepted"] == "True" and locked["level"] == "2", locked
    assert service_reply(ros2(env, *get))["current_level"] == "2"

    refused = service_reply(ros2(env, *set_level, f"{{level: {n_levels + 1}}}"))
    assert refused["accepted"] == "False" and refused["message"], refused
    assert service_reply(ros2(env, *get))["current_level"] == "2"  # the lock holds

    automatic = service_reply(ros2(env, *set_level, "{level: 0}"))
    assert automatic["accepted"] == "True", automatic


def test_topic_echo_prediction_of_a_real_photo(
    env: dict[str, str], node: str, ns: str, photo_file: tuple[Path, int]
) -> None:
    path, label = photo_file
    publisher = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, f"{ns}/camera/image_raw", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        prediction = echo_once(env, f"{node}/prediction", "dynamic_ofa_ros/msg/Prediction")
        status = echo_once(env, f"{node}/status", "dynamic_ofa_ros/msg/ManagerStatus")
    finally:
        publisher.kill()
        _, err = publisher.communicate()
    assert prediction["header"]["frame_id"] == "photo", (prediction, err)
    assert prediction["class_id"] == label and prediction["label"] == "French horn", prediction
    assert prediction["top_ids"][0] == label and len(prediction["top_ids"]) == 5, prediction
    assert 0.5 < prediction["score"] <= 1.0, prediction
    assert prediction["level"] >= 1 and prediction["latency_ms"] > 0.0, prediction
    assert status["node_name"].endswith(NODE_NAME), status
    assert status["device"] == "cpu" and status["n_levels"] >= 2, status


def test_lifecycle_get_and_set_through_a_cycle(env: dict[str, str], node: str) -> None:
    def state() -> str:
        done = ros2(env, "lifecycle", "get", node, *DISCOVERY)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip()

    def transition(label: str) -> subprocess.CompletedProcess[str]:
        return ros2(env, "lifecycle", "set", node, label, *DISCOVERY)

    assert state() == "active [3]"  # autostart: configured and activated by ros2 launch
    done = transition("deactivate")
    assert "Transitioning successful" in done.stdout, done.stdout + done.stderr
    assert state() == "inactive [2]"
    reply = service_reply(
        ros2(
            env,
            "service",
            "call",
            f"{node}/set_constraints",
            "dynamic_ofa_ros/srv/SetConstraints",
            "{latency_budget_ms: 20.0, min_accuracy: 0.0}",
        )
    )
    assert reply["accepted"] == "False" and "inactive" in reply["message"], reply  # a clear refusal
    invalid = transition("configure")  # not a transition out of inactive
    assert "Unknown transition requested" in invalid.stdout + invalid.stderr, invalid
    assert state() == "inactive [2]"
    done = transition("activate")
    assert "Transitioning successful" in done.stdout, done.stdout + done.stderr
    assert state() == "active [3]"


def test_ctrl_c_ends_the_launch_cleanly(launch: Launched) -> None:
    """Last in this module: SIGINT to ``ros2 launch`` ends the node cleanly, exit code 0."""
    code = launch.interrupt()
    output = launch.output()
    assert code == 0, output
    assert "process has finished cleanly" in output, output
    assert "SIGTERM" not in output and "Traceback" not in output, output


def test_two_classifiers_launch(env: dict[str, str], tmp_path: Path) -> None:
    params = tmp_path / "two.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "/**": {"ros__parameters": {"device": "cpu", "threads": 1, "status_rate": 5.0}},
                "/**/classifier_a": {"ros__parameters": {"latency_budget_ms": 40.0}},
                "/**/classifier_b": {"ros__parameters": {"latency_budget_ms": 60.0}},
            }
        )
    )
    ns = f"/two{os.getpid()}"
    launched = ros2_launch(
        env,
        "two_classifiers.launch.py",
        f"params_file:={params}",
        f"namespace:={ns}",
        f"image_topic:={ns}/camera/image_raw",
        "coordination_group:=pair",
    )
    try:
        launched.wait_ready(nodes=2, timeout=300.0)
        pair = {f"{ns}/classifier_a", f"{ns}/classifier_b"}
        assert pair <= set(node_list(env, *pair))
        assert param_value(env, f"{ns}/classifier_a", "coordination_group") == "pair"  # launch argument
        assert param_value(env, f"{ns}/classifier_b", "latency_budget_ms") == "60.0"  # params_file
        assert param_value(env, f"{ns}/classifier_b", "threads") == "1"
    finally:
        code = launched.interrupt()
    output = launched.output()
    assert code == 0, output
    assert output.count("process has finished cleanly") == 2, output  # SIGINT sufficed for both
    assert "SIGTERM" not in output and "Traceback" not in output, output


def test_launch_testing_checks_the_launch_file(env: dict[str, str], photo_file: tuple[Path, int]) -> None:
    """The ROS convention for integration tests: ``launch_test`` on a launch_testing file."""
    test_file = Path(__file__).resolve().parent / "launch_tests" / "classifier_launch.py"
    done = subprocess.run(
        ["launch_test", str(test_file)],
        env={**env, "DOFA_TEST_PHOTO": str(photo_file[0]), "DOFA_TEST_PHOTO_CLASS": str(photo_file[1])},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"Ran [1-9]\d* tests? in", output), output
    assert "FAILED" not in output, output
