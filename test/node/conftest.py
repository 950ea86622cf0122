"""Fixtures for the ROS tests of the classifier node: real rclpy, real Fast DDS, no mocks.

The node runs in-process (fast) on its own ``SingleThreadedExecutor`` thread, exactly as
``main()`` spins it; a separate *probe* node, spun by another executor thread, talks to it
over DDS: it publishes images, subscribes to every output topic and calls every service.

Random-weight super-network and a small three-level table (built once per session, 1 thread)
keep the suite fast; accuracy values in that table are synthetic and say so. The ROS domain
comes from the top-level ``conftest.py`` (one per pytest session).

pytest runs with ``--import-mode=importlib``, so helpers are handed to the tests as fixtures
(``harness``, ``image_msg``, ``core``) rather than imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

# Three levels far apart in latency (random weights; latency does not depend on the values).
_LEVEL_ARCHS = (
    {"resolution": 128, "ks": [3] * 20, "e": [3] * 20, "d": [2] * 5},
    {"resolution": 160, "ks": [5] * 20, "e": [4] * 20, "d": [3] * 5},
    {"resolution": 192, "ks": [7] * 20, "e": [6] * 20, "d": [4] * 5},
)
SYNTHETIC_ACCURACY = (60.0, 70.0, 80.0)


@dataclasses.dataclass
class CoreModel:
    """The session's super-network and level table (what the node under test loads)."""

    supernet: Any
    table_path: Path
    table: Any

    def engine(self) -> Any:
        """A fresh LevelEngine on the same model and table (1 thread), for comparisons."""
        from dynamic_ofa_ros.engine import LevelEngine

        return LevelEngine(self.supernet, self.table, device="cpu", threads=1)


@pytest.fixture(scope="session")
def core(tmp_path_factory: pytest.TempPathFactory) -> CoreModel:
    """Random-weight supernet (seed 0) + a three-level CPU table written with the core's own writer."""
    from dynamic_ofa_ros.arch import SubnetConfig
    from dynamic_ofa_ros.levels import load_level_table, save_level_table
    from dynamic_ofa_ros.supernet import load_supernet
    from dynamic_ofa_ros.table_builder import build_level_table

    supernet = load_supernet("random", allow_random=True)
    configs = [SubnetConfig.from_dict(arch) for arch in _LEVEL_ARCHS]
    table = build_level_table(supernet, configs, threads=1, warmup=1, iterations=5)
    table.levels = [
        dataclasses.replace(
            level,
            accuracy=SYNTHETIC_ACCURACY[i],
            accuracy_dataset="synthetic (random weights: accuracy meaningless)",
        )
        for i, level in enumerate(table.levels)
    ]
    path = tmp_path_factory.mktemp("levels") / "cpu.json"
    save_level_table(table, path, supernet=supernet)
    return CoreModel(supernet=supernet, table_path=path, table=load_level_table(path, supernet=supernet))


def make_image(
    rgb: np.ndarray,
    encoding: str = "rgb8",
    *,
    pad: int = 0,
    stamp_ns: int | None = None,
    frame_id: str = "cam",
) -> Any:
    """A ``sensor_msgs/Image`` of the (H, W, 3) RGB array ``rgb`` in ``encoding``, rows padded by ``pad``."""
    from sensor_msgs.msg import Image

    h, w, _ = rgb.shape
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding == "rgba8":
        pixels = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    elif encoding == "bgra8":
        pixels = np.concatenate([rgb[:, :, ::-1], np.full((h, w, 1), 7, np.uint8)], axis=2)
    elif encoding == "mono8":
        pixels = rgb[:, :, :1]
    else:
        raise ValueError(encoding)
    channels = pixels.shape[2]
    step = w * channels + pad
    buf = np.zeros((h, step), np.uint8)
    buf[:, : w * channels] = pixels.reshape(h, w * channels)
    if pad:
        buf[:, w * channels :] = 0xAB  # garbage in the padding must be ignored
    msg = Image()
    msg.header.frame_id = frame_id
    if stamp_ns is not None:
        msg.header.stamp.sec = stamp_ns // 1_000_000_000
        msg.header.stamp.nanosec = stamp_ns % 1_000_000_000
    msg.height, msg.width, msg.step = h, w, step
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.data = buf.tobytes()
    return msg


@pytest.fixture(scope="session")
def image_msg() -> Callable[..., Any]:
    """``image_msg(rgb, encoding, pad=..., stamp_ns=...)`` builds a sensor_msgs/Image (see make_image)."""
    return make_image


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A deterministic 120x160 RGB test picture with structure (gradients + a disc)."""
    h, w = 120, 160
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack(
        [
            (x * 255 // w),
            (y * 255 // h),
            ((x + y) * 127 // (w + h)) + 60 * ((x - 80) ** 2 + (y - 60) ** 2 < 900),
        ],
        axis=2,
    )
    return np.ascontiguousarray(rgb.astype(np.uint8))


class Harness:
    """The node under test plus a probe node, each spun by its own executor thread."""

    def __init__(self, context: Any, core: CoreModel, namespace: str) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.context = context
        self.core = core
        self.namespace = namespace
        self.nodes: list[Any] = []
        self._executors: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.probe = self._spin(
            Node("probe", namespace=namespace, context=context), SingleThreadedExecutor(context=context)
        )

    # -------------------------------------------------------------------------- spinning

    def _spin(self, node: Any, executor: Any) -> Any:
        executor.add_node(node)
        thread = threading.Thread(target=self._run, args=(executor,), daemon=True)
        thread.start()
        self._executors.append(executor)
        self._threads.append(thread)
        return node

    @staticmethod
    def _run(executor: Any) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException):
            executor.spin()

    def start_node(self, name: str = "classifier", **params: Any) -> Any:
        """Start a ClassifierNode (random weights, the session table, 1 thread) with ``params`` overrides.

        Configured and activated like ``classifier_node`` with ``autostart`` (the default); with
        ``autostart=False`` it stays unconfigured, for the lifecycle tests.
        """
        from rclpy.parameter import Parameter

        from dynamic_ofa_ros.node import ClassifierNode

        values: dict[str, Any] = {
            "model": "random",
            "level_table": str(self.core.table_path),
            "device": "cpu",
            "threads": 1,
            "status_rate": 5.0,
            "window_size": 5,
        }
        values.update(params)
        overrides = [Parameter(key, value=value) for key, value in values.items()]
        node = ClassifierNode(
            node_name=name,
            namespace=self.namespace,
            context=self.context,
            parameter_overrides=overrides,
            supernet=self.core.supernet if values["model"] == "random" else None,
        )
        from rclpy.executors import SingleThreadedExecutor

        if values.get("autostart", True):
            try:
                node.start()  # configure + activate, as classifier_node's main() with autostart
            except BaseException:
                node.destroy_node()
                raise
        self.nodes.append(node)
        self._spin(node, SingleThreadedExecutor(context=self.context))  # as classifier_node's main()
        return node

    def stop_node(self, node: Any) -> None:
        """Shut down one node's executor and destroy it (as when its process ends)."""
        index = self._executors_index(node)
        executor = self._executors[index]
        executor.shutdown(timeout_sec=5.0)
        self._threads[index].join(timeout=10.0)
        node.destroy_node()
        self.nodes.remove(node)

    def _executors_index(self, node: Any) -> int:
        for i, executor in enumerate(self._executors):
            if node in executor.get_nodes():
                return i
        raise KeyError(node.get_name())

    def close(self) -> None:
        for executor in self._executors:
            executor.shutdown(timeout_sec=5.0)
        for thread in self._threads:
            thread.join(timeout=10.0)
        for node in self.nodes:
            node.destroy_node()
        self.probe.destroy_node()

    # -------------------------------------------------------------------------- probe helpers

    def collect(self, msg_type: Any, topic: str, qos: Any = 10) -> list[Any]:
        """Subscribe the probe to ``topic``; the returned list fills up with received messages."""
        received: list[Any] = []

        def store(msg: Any) -> None:
            with self._lock:
                received.append(msg)

        self.probe.create_subscription(msg_type, topic, store, qos)
        return received

    def publisher(self, msg_type: Any, topic: str, *, reliable: bool = False, depth: int = 10) -> Any:
        """A probe publisher; waits until the node's subscription has matched it."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = QoSProfile(
            depth=depth, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        )
        pub = self.probe.create_publisher(msg_type, topic, qos)
        wait_for(lambda: pub.get_subscription_count() > 0, 20.0, f"a subscriber on {topic}")
        return pub

    def client(self, srv_type: Any, name: str) -> Any:
        """A probe service client, waited for."""
        client = self.probe.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=20.0):
            raise AssertionError(f"service {name} not available")
        return client

    def call(self, client: Any, request: Any, timeout: float = 20.0) -> tuple[Any, float]:
        """Call a service; returns (response, round-trip milliseconds)."""
        done = threading.Event()
        start = time.perf_counter()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            raise AssertionError(f"no answer from {client.srv_name} within {timeout} s")
        elapsed = (time.perf_counter() - start) * 1000.0
        return future.result(), elapsed

    def now_ns(self) -> int:
        """The probe's ROS clock (the node uses the same system clock)."""
        return int(self.probe.get_clock().now().nanoseconds)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


_counter = iter(range(1, 1_000_000))


@pytest.fixture
def harness(rclpy_context: Any, core: CoreModel) -> Iterator[Harness]:
    """A probe node and a factory for classifier nodes, in a namespace unique to the test."""
    h = Harness(rclpy_context, core, namespace=f"/t{next(_counter)}")
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="session")
def waiter() -> Callable[..., Any]:
    """``waiter(predicate, timeout, what)``: poll until truthy (see wait_for)."""
    return wait_for
