"""The package's rosidl interfaces over real rclpy + Fast DDS (no mocks).

A peer process (its own DDS participant) publishes ``Prediction`` messages, echoes
``ManagerStatus`` messages and serves ``SetConstraints``, ``SetLevel`` and ``GetLevels``; this
process subscribes and calls. A second test passes a ``Prediction`` between two nodes of one
process. The last tests check that a shell set up with ``source install/setup.bash`` imports the
generated types, and that pytest itself imported the install space (which has them).
"""

from __future__ import annotations

import array
import math
import os
import shlex
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: run via `make test` or scripts/ros-env")

from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402

pytestmark = pytest.mark.ros

NS = "/dofa_interfaces_test"
TIMEOUT_S = 30.0
# QoS of the test topics: reliable, and transient-local so a late subscriber gets the history.
QOS = QoSProfile(
    depth=10, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
)

# The peer: a separate process and DDS participant. It reads nothing from the test but its
# environment (ROS_DOMAIN_ID etc.) and exits when its stdin closes.
PEER = textwrap.dedent(
    f"""
    import array, sys, threading
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
    from dynamic_ofa_ros.msg import LevelInfo, ManagerStatus, Prediction
    from dynamic_ofa_ros.srv import GetLevels, SetConstraints, SetLevel

    QOS = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    LEVELS = [(1, 128, 2, 3, 9.5, 70.25, 98.5), (2, 160, 3, 4, 14.0, 74.5, 180.0),
              (3, 224, 4, 6, 30.0, 79.75, 400.0)]

    class Peer(Node):
        def __init__(self):
            super().__init__("interfaces_peer", namespace="{NS}")
            self.level = 3
            self.pub = self.create_publisher(Prediction, "prediction", QOS)
            self.status_pub = self.create_publisher(ManagerStatus, "status_echo", QOS)
            self.create_subscription(ManagerStatus, "status", self.status_pub.publish, QOS)
            self.create_service(SetConstraints, "set_constraints", self.set_constraints)
            self.create_service(SetLevel, "set_level", self.set_level)
            self.create_service(GetLevels, "get_levels", self.get_levels)
            self.seq = 0
            self.create_timer(0.05, self.publish)

        def publish(self):
            if self.seq >= 5:
                return
            self.seq += 1
            msg = Prediction()
            msg.header.stamp.sec = 1700000000 + self.seq
            msg.header.stamp.nanosec = 123456789
            msg.header.frame_id = "camera_optical"
            msg.class_id = 207
            msg.label = "golden retriever"
            msg.score = 0.875
            msg.top_ids = array.array("i", [207, 208, 219])
            msg.top_scores = array.array("f", [0.875, 0.0625, 0.03125])
            msg.level = self.level
            msg.inference_ms = 12.5
            msg.latency_ms = 20.25
            msg.expected_accuracy = 79.75
            self.pub.publish(msg)

        def set_constraints(self, req, resp):
            if not (req.latency_budget_ms >= 0.0 and 0.0 <= req.min_accuracy <= 100.0):
                resp.accepted = False
                resp.message = "invalid constraints"
            else:
                fits = [lv[0] for lv in LEVELS
                        if (req.latency_budget_ms == 0.0 or lv[4] <= req.latency_budget_ms)
                        and lv[5] >= req.min_accuracy]
                resp.accepted = bool(fits)
                if fits:
                    self.level = max(fits)
                resp.message = f"budget={{req.latency_budget_ms:g}} floor={{req.min_accuracy:g}}"
            resp.level = self.level
            return resp

        def set_level(self, req, resp):
            resp.accepted = 0 <= req.level <= len(LEVELS)
            if resp.accepted and req.level:
                self.level = req.level
            resp.message = "auto" if req.level == 0 else f"pinned {{req.level}}"
            resp.level = self.level
            return resp

        def get_levels(self, req, resp):
            for level, res, k, e, lat, acc, macs in LEVELS:
                info = LevelInfo()
                info.level = level
                info.resolution = res
                info.ks = [k + 1] * 20
                info.e = [e] * 20
                info.d = [k] * 5
                info.latency_ms = lat
                info.accuracy = acc
                info.macs_m = macs
                resp.levels.append(info)
            resp.current_level = self.level
            resp.device = "cpu"
            return resp

    rclpy.init()
    node = Peer()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=lambda: (sys.stdin.read(), rclpy.try_shutdown()), daemon=True).start()
    print("peer ready", flush=True)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    """
)


def _spin_until(executor: SingleThreadedExecutor, done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {TIMEOUT_S:g} s waiting for {what}")
        executor.spin_once(timeout_sec=0.05)


@pytest.fixture
def peer() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PEER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if "peer ready" not in first:
            rest = proc.stdout.read() if proc.poll() is not None else ""
            pytest.fail(f"interface peer failed to start: {first}{rest}")
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def node(rclpy_context: Context) -> Iterator[tuple[Node, SingleThreadedExecutor]]:
    test_node = Node("interfaces_test", namespace=NS, context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(test_node)
    try:
        yield test_node, executor
    finally:
        executor.shutdown()
        test_node.destroy_node()


def _call(node: Node, executor: SingleThreadedExecutor, srv_type: Any, name: str, request: Any) -> Any:
    client = node.create_client(srv_type, name)
    _spin_until(executor, lambda: client.service_is_ready(), f"service {name}")
    future = client.call_async(request)
    _spin_until(executor, future.done, f"response of {name}")
    node.destroy_client(client)
    return future.result()


def test_prediction_and_status_across_processes(
    peer: subprocess.Popen[str], node: tuple[Node, SingleThreadedExecutor]
) -> None:
    from dynamic_ofa_ros.msg import ManagerStatus, Prediction

    test_node, executor = node
    got: list[Prediction] = []
    test_node.create_subscription(Prediction, "prediction", got.append, QOS)
    _spin_until(executor, lambda: len(got) >= 5, "5 Prediction messages from the peer")

    msg = got[0]
    assert msg.header.frame_id == "camera_optical"
    assert msg.header.stamp.nanosec == 123456789
    assert [m.header.stamp.sec for m in got[:5]] == [1700000001 + i for i in range(5)]
    assert (msg.class_id, msg.label, msg.level) == (207, "golden retriever", 3)
    assert msg.score == pytest.approx(0.875)
    assert list(msg.top_ids) == [207, 208, 219]
    assert list(msg.top_scores) == pytest.approx([0.875, 0.0625, 0.03125])
    assert (msg.inference_ms, msg.latency_ms, msg.expected_accuracy) == pytest.approx((12.5, 20.25, 79.75))

    # ManagerStatus: sent by us, echoed back unchanged by the peer.
    echoed: list[ManagerStatus] = []
    test_node.create_subscription(ManagerStatus, "status_echo", echoed.append, QOS)
    pub = test_node.create_publisher(ManagerStatus, "status", QOS)
    status = ManagerStatus()
    status.header.frame_id = "status"
    status.node_name = "/cam/dynamic_ofa_classifier"
    status.coordination_group = "gpu0"
    status.level = 2
    status.n_levels = 3
    status.mode = "reactive"
    status.priority = "accuracy"
    status.locked = True
    status.previous_level = 3
    status.level_since = 12345.678901234  # float64: monotonic seconds keep microseconds
    status.budget_ms = 15.0
    status.min_accuracy = 72.5
    status.expected_accuracy = 74.5
    status.unmet = ""
    status.window_mean_ms = 13.25
    status.window_p95_ms = 14.75
    status.window_start = 12346.5
    status.window_end = 12346.987654321
    status.frames = 4_000_000_000  # uint32 range
    status.violations = 7
    status.switches = 3
    status.dropped = 11
    status.errors = 1
    status.device = "cpu"
    status.level_latency_ms = array.array("f", [9.5, 14.0, 30.0])
    status.level_accuracy = array.array("f", [70.25, 74.5, 79.75])
    pub.publish(status)
    _spin_until(executor, lambda: len(echoed) >= 1, "the echoed ManagerStatus")
    assert echoed[0] == status


def test_services_across_processes(
    peer: subprocess.Popen[str], node: tuple[Node, SingleThreadedExecutor]
) -> None:
    from dynamic_ofa_ros.srv import GetLevels, SetConstraints, SetLevel

    test_node, executor = node

    resp = _call(
        test_node,
        executor,
        SetConstraints,
        "set_constraints",
        SetConstraints.Request(latency_budget_ms=15.0, min_accuracy=0.0),
    )
    assert (resp.accepted, resp.level, resp.message) == (True, 2, "budget=15 floor=0")
    resp = _call(
        test_node,
        executor,
        SetConstraints,
        "set_constraints",
        SetConstraints.Request(latency_budget_ms=math.nan, min_accuracy=0.0),
    )
    assert (resp.accepted, resp.level, resp.message) == (False, 2, "invalid constraints")

    resp = _call(test_node, executor, SetLevel, "set_level", SetLevel.Request(level=1))
    assert (resp.accepted, resp.level, resp.message) == (True, 1, "pinned 1")
    resp = _call(test_node, executor, SetLevel, "set_level", SetLevel.Request(level=9))
    assert (resp.accepted, resp.level) == (False, 1)

    resp = _call(test_node, executor, GetLevels, "get_levels", GetLevels.Request())
    assert (resp.current_level, resp.device) == (1, "cpu")
    assert [lv.level for lv in resp.levels] == [1, 2, 3]
    assert [lv.resolution for lv in resp.levels] == [128, 160, 224]
    third = resp.levels[2]
    assert (list(third.ks), list(third.e), list(third.d)) == ([5] * 20, [6] * 20, [4] * 5)
    assert (third.latency_ms, third.accuracy, third.macs_m) == pytest.approx((30.0, 79.75, 400.0))


def test_prediction_between_two_nodes_in_one_process(rclpy_context: Context) -> None:
    from dynamic_ofa_ros.msg import Prediction

    talker = Node("talker", namespace=NS, context=rclpy_context)
    listener = Node("listener", namespace=NS, context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(talker)
    executor.add_node(listener)
    try:
        got: list[Prediction] = []
        listener.create_subscription(Prediction, "local_prediction", got.append, QOS)
        pub = talker.create_publisher(Prediction, "local_prediction", QOS)
        sent = Prediction(
            class_id=1, label="goldfish", score=0.5, level=1, top_ids=[1, 2], top_scores=[0.5, 0.25]
        )
        sent.header.frame_id = "cam"
        _spin_until(executor, lambda: pub.get_subscription_count() > 0, "the listener to match")
        pub.publish(sent)
        _spin_until(executor, lambda: bool(got), "the Prediction")
        assert got[0] == sent
    finally:
        executor.shutdown()
        talker.destroy_node()
        listener.destroy_node()


def _clean_shell_env() -> dict[str, str]:
    """A login-like environment: no PYTHONPATH, AMENT_PREFIX_PATH, or venv from this process."""
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "ROS_DOMAIN_ID", "RMW_IMPLEMENTATION")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return env


@pytest.mark.parametrize("cwd_kind", ["elsewhere", "repo_root"])
def test_generated_types_import_after_sourcing_setup_bash(
    install_prefix: Path, repo_root: Path, tmp_path: Path, cwd_kind: str
) -> None:
    """A user's shell: (activate the venv,) ``source install/setup.bash``, run python.

    ``repo_root`` is the common case of this repository, which is its own colcon workspace:
    ``python -c`` puts the current directory, with the source package, first on sys.path.
    """
    steps = []
    if sys.prefix != sys.base_prefix:  # PyPI ROS in a venv (make build); a system ROS needs none
        steps += [
            f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}",
            f"export AMENT_PREFIX_PATH={shlex.quote(sys.prefix)}",
        ]
    code = (
        "from dynamic_ofa_ros.msg import Prediction; from dynamic_ofa_ros.srv import SetConstraints; "
        "print('ok')"
    )
    steps += [f"source {shlex.quote(str(install_prefix / 'setup.bash'))}", f"python3 -c {shlex.quote(code)}"]
    script = " && ".join(steps)
    cwd = tmp_path if cwd_kind == "elsewhere" else repo_root
    result = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=_clean_shell_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", (
        f"in {cwd}: {script}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )


def test_pytest_imports_the_install_space(install_prefix: Path, repo_root: Path) -> None:
    import dynamic_ofa_ros
    import dynamic_ofa_ros.msg
    import dynamic_ofa_ros.srv

    pkg_dir = Path(dynamic_ofa_ros.__file__ or "").parent
    assert pkg_dir != repo_root / "dynamic_ofa_ros", "pytest imported the bare source tree"
    assert pkg_dir.is_relative_to(install_prefix), f"{pkg_dir} is not in {install_prefix}"
    assert Path(dynamic_ofa_ros.msg.__file__ or "").parent == pkg_dir / "msg"
    assert Path(dynamic_ofa_ros.srv.__file__ or "").parent == pkg_dir / "srv"
    # With --symlink-install (make build) the installed modules are the source files themselves.
    init = pkg_dir / "__init__.py"
    if init.is_symlink():
        assert init.resolve() == (repo_root / "dynamic_ofa_ros" / "__init__.py").resolve()


# Field names and types are public API (issue 2); a change here is a breaking change.
EXPECTED_FIELDS: dict[str, dict[str, str]] = {
    "msg.Prediction": {
        "header": "std_msgs/Header",
        "class_id": "int32",
        "label": "string",
        "score": "float",
        "top_ids": "sequence<int32>",
        "top_scores": "sequence<float>",
        "level": "uint8",
        "inference_ms": "float",
        "latency_ms": "float",
        "expected_accuracy": "float",
    },
    "msg.LevelInfo": {
        "level": "uint8",
        "resolution": "uint16",
        "ks": "sequence<int8>",
        "e": "sequence<int8>",
        "d": "sequence<int8>",
        "latency_ms": "float",
        "accuracy": "float",
        "macs_m": "float",
    },
    "msg.ManagerStatus": {
        "header": "std_msgs/Header",
        "node_name": "string",
        "coordination_group": "string",
        "level": "uint8",
        "n_levels": "uint8",
        "mode": "string",
        "priority": "string",
        "locked": "boolean",
        "previous_level": "uint8",
        "level_since": "double",
        "budget_ms": "float",
        "min_accuracy": "float",
        "expected_accuracy": "float",
        "unmet": "string",
        "window_mean_ms": "float",
        "window_p95_ms": "float",
        "window_start": "double",
        "window_end": "double",
        "frames": "uint32",
        "violations": "uint32",
        "switches": "uint32",
        "dropped": "uint32",
        "errors": "uint32",
        "device": "string",
        "level_latency_ms": "sequence<float>",
        "level_accuracy": "sequence<float>",
        "peers_ignored": "uint32",
        "peers_rejected": "uint32",
    },
    "srv.SetConstraints.Request": {"latency_budget_ms": "float", "min_accuracy": "float"},
    "srv.SetConstraints.Response": {"accepted": "boolean", "message": "string", "level": "uint8"},
    "srv.SetLevel.Request": {"level": "uint8"},
    "srv.SetLevel.Response": {"accepted": "boolean", "message": "string", "level": "uint8"},
    "srv.GetLevels.Request": {},
    "srv.GetLevels.Response": {
        "levels": "sequence<dynamic_ofa_ros/LevelInfo>",
        "current_level": "uint8",
        "device": "string",
    },
}


@pytest.mark.parametrize("type_path", sorted(EXPECTED_FIELDS))
def test_interface_fields_are_the_public_api(type_path: str) -> None:
    import importlib

    kind, name, *part = type_path.split(".")
    cls = getattr(importlib.import_module(f"dynamic_ofa_ros.{kind}"), name)
    if part:
        cls = getattr(cls, part[0])
    fields = dict(cls.get_fields_and_field_types())
    # an empty request still carries rosidl's placeholder field
    fields.pop("structure_needs_at_least_one_member", None)
    assert fields == EXPECTED_FIELDS[type_path]
