"""What the ROS-side tools share: the installed node as a subprocess, a spun tool node, result files.

* :class:`ClassifierProcess` starts the installed ``classifier_node`` (its own process, real DDS
  transport) with parameters, logs to a file and stops it with SIGINT.
* :class:`ToolNode` is a tool's own rclpy node spun by a private executor thread, with a
  blocking service call that cannot hang.
* :func:`image_msg` builds a ``sensor_msgs/Image`` of an RGB frame; :func:`write_result` writes a
  tool's result JSON atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from dynamic_ofa_ros.paths import PACKAGE
from dynamic_ofa_ros.timing import finite_json, json_default, write_json

if TYPE_CHECKING:
    from rclpy.client import Client
    from rclpy.context import Context
    from rclpy.node import Node
    from sensor_msgs.msg import Image

__all__ = [
    "CAMERA_TOPIC",
    "ClassifierProcess",
    "ToolNode",
    "classifier_command",
    "image_msg",
    "write_result",
]

#: the camera topic every tool publishes on; the classifier's ``image`` input is remapped to it
CAMERA_TOPIC = "/camera/image_raw"


def classifier_command() -> list[str]:
    """The installed ``classifier_node`` executable, else ``python -m dynamic_ofa_ros.node``."""
    try:
        from ament_index_python.packages import get_package_prefix

        exe = Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / "classifier_node"
        if exe.is_file() and os.access(exe, os.X_OK):
            return [str(exe)]
    except (ImportError, LookupError, ValueError):  # not installed through colcon: run the module
        pass
    return [sys.executable, "-m", "dynamic_ofa_ros.node"]


@dataclass
class ClassifierProcess:
    """A ``classifier_node`` subprocess named ``name``, its output going to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @classmethod
    def start(
        cls, name: str, params: dict[str, Any], log_path: Path, *, topic: str = CAMERA_TOPIC
    ) -> ClassifierProcess:
        """Start the node listening on ``topic``.

        Args:
            name: the node's name (``__node:=``); its topics and services live under ``/<name>/``.
            params: ROS parameters; ``""`` and ``None`` values keep the node's default, booleans
                are written ``true``/``false``.
            log_path: file receiving the node's stdout and stderr.
            topic: the camera topic its ``image`` input is remapped to.
        """
        args = [*classifier_command(), "--ros-args", "-r", f"__node:={name}", "-r", f"image:={topic}"]
        for key, value in params.items():
            if value == "" or value is None:
                continue  # keep the node's default
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            args += ["-p", f"{key}:={text}"]
        log_file = log_path.open("wb")  # closed by stop()
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ))
        return cls(name=name, process=process, log_path=log_path, log_file=log_file)

    @property
    def pid(self) -> int:
        """The node's process id."""
        return self.process.pid

    def exit_code(self) -> int | None:
        """The exit code once the node has exited, else ``None``."""
        return self.process.poll()

    def check_running(self) -> None:
        """Raise ``RuntimeError`` with the end of the log when the node has exited."""
        code = self.exit_code()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with code {code}:\n{self.tail()}")

    def stop(self) -> int | None:
        """SIGINT, then wait (escalating to SIGTERM/SIGKILL); close the log; returns the exit code."""
        proc = self.process
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    return proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.terminate()
                    try:
                        return proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        return proc.wait()
            return proc.returncode
        finally:
            self.log_file.close()

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the node's log ("" when unreadable)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ToolNode:
    """A tool's rclpy node, spun by its own ``SingleThreadedExecutor`` thread.

    Args:
        name: the node's name.
        context: the rclpy context (initialised by the caller).
    """

    def __init__(self, name: str, context: Context) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.node: Node = Node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True, name=f"{name}-spin")
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException):
            self.executor.spin()

    # Generated rosidl service types carry no static types: requests and responses are Any.
    def call(self, srv_type: type[Any], name: str, request: Any, timeout: float = 30.0) -> Any:  # noqa: ANN401
        """Call service ``name`` and wait for its response (the executor thread delivers it).

        Raises:
            RuntimeError: the service did not appear or answer within ``timeout`` seconds.
        """
        client: Client[Any, Any] = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise RuntimeError(f"service {name} did not appear within {timeout:g} s")
            done = threading.Event()
            future = client.call_async(request)
            future.add_done_callback(lambda _f: done.set())
            if not done.wait(timeout):
                raise RuntimeError(f"service {name} did not answer within {timeout:g} s")
            response = future.result()
            if response is None:
                raise RuntimeError(f"service {name} returned no response")
            return response
        finally:
            self.node.destroy_client(client)

    def lock_level(self, classifier: str, level: int, timeout: float = 30.0) -> str:
        """Lock node ``classifier`` at ``level`` by its ``~/set_level`` (0 = automatic); its message.

        Raises:
            RuntimeError: the service is missing, silent or rejects the level.
        """
        from dynamic_ofa_ros.srv import SetLevel

        response = self.call(SetLevel, f"/{classifier}/set_level", SetLevel.Request(level=level), timeout)
        if not response.accepted:
            raise RuntimeError(f"{classifier}: set_level {level} rejected: {response.message}")
        return str(response.message)

    def close(self) -> None:
        """Stop spinning and destroy the node."""
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=10.0)
        self.node.destroy_node()


def image_msg(rgb: np.ndarray, *, frame_id: str = "camera") -> Image:
    """A ``sensor_msgs/Image`` (rgb8) holding ``rgb`` (H, W, 3 uint8); the header stamp is left 0."""
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.step = msg.width * 3
    msg.data = rgb.tobytes()
    return msg


def write_result(result: dict[str, Any], out: Path | None) -> str:
    """``result`` as indented JSON text, also written atomically to ``out`` when given."""
    if out is not None:
        return write_json(out, result)
    return json.dumps(finite_json(result), indent=1, allow_nan=False, default=json_default) + "\n"
