"""The ROS 2 node ``dynamic_ofa_classifier``: camera in, predictions out, latency budgets by service.

This module is deliberately thin. It translates ROS messages, parameters and services into
calls of the ROS-free :class:`~dynamic_ofa_ros.classifier.DynamicClassifier` and publishes the
results; every decision (which level runs, how constraints are validated, how co-located models
share a device) is made by the core. Parameters are declared in
:mod:`dynamic_ofa_ros.node_parameters`.

Threads: subscriptions only store the newest frame in a single-slot
:class:`~dynamic_ofa_ros.latest.LatestSlot`
(replacing an unprocessed one counts as *dropped*, so no backlog can build up); one worker
thread converts, infers and publishes; services, parameters, timers and subscriptions run on
one ``SingleThreadedExecutor`` thread (all callbacks are short, so they answer while inference
runs). rclpy's ``MultiThreadedExecutor`` is not used: in ``dynamic_ofa_ros.node_bench`` its
dispatch thread spent 22-78 ms of CPU per frame and added up to 0.7 s (p99) to a frame's
latency on a 2-core machine, against about 1-2 ms with the single-threaded one (docs/node.md).

See ``docs/node.md`` for topics, services, parameters and the latency definition.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy._rclpy_pybind11 import RCLError
from rclpy.context import Context
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_parameters,
)
from sensor_msgs.msg import CompressedImage, Image

from dynamic_ofa_ros import labels
from dynamic_ofa_ros.classifier import DynamicClassifier
from dynamic_ofa_ros.coordinator import Coordinator
from dynamic_ofa_ros.engine import LevelEngine
from dynamic_ofa_ros.errors import ConstraintError, DofaError, ImageError, UnknownLevelError
from dynamic_ofa_ros.input_watch import InputWatch
from dynamic_ofa_ros.latest import LatestSlot
from dynamic_ofa_ros.levels import LevelTable, load_level_table
from dynamic_ofa_ros.manager import Decision, LevelSpec, RuntimeManager
from dynamic_ofa_ros.msg import ManagerStatus, Prediction
from dynamic_ofa_ros.node_messages import diagnostic_summary, level_infos, peer_from_message, status_message
from dynamic_ofa_ros.node_parameters import (
    PARAMETERS,
    Settings,
    SettingsError,
    budget_value,
    descriptor,
    dropped_overrides,
    settings_from,
)
from dynamic_ofa_ros.paths import config_file, default_level_table
from dynamic_ofa_ros.preprocess import decode_compressed, image_from_buffer
from dynamic_ofa_ros.srv import GetLevels, SetConstraints, SetLevel
from dynamic_ofa_ros.supernet import Supernet, load_supernet

__all__ = ["COORDINATION_TOPIC", "NODE_NAME", "PARAMETERS", "ClassifierNode", "StartupError", "main"]

NODE_NAME = "dynamic_ofa_classifier"
#: Topic on which the nodes of a coordination group exchange their ManagerStatus.
COORDINATION_TOPIC = "/dynamic_ofa/coordination"
_WARN_PERIOD_S = 5.0
#: Services answer every request of a burst: rclpy's default service QoS keeps only 10, and 189 of
#: 200 concurrent calls went unanswered with it (issue 15); this is the depth of parameter services.
_SERVICE_QOS = qos_profile_parameters


class StartupError(Exception):
    """The node cannot start; the message says what is wrong and how to fix it (no traceback)."""


@dataclass(frozen=True)
class Frame:
    """A received image message and when it arrived (ROS clock, nanoseconds)."""

    msg: Image | CompressedImage
    received_ns: int


class ClassifierNode(Node):
    """Dynamic-OFA image classifier with a runtime manager (see the module docstring).

    ``supernet``: an already loaded super-network to use instead of the ``model`` parameter
    (tests and the in-process demo share one between nodes to save start-up time).
    Construction raises :class:`StartupError` when the model or level table cannot be used.
    """

    def __init__(
        self,
        *,
        node_name: str = NODE_NAME,
        namespace: str | None = None,
        context: Context | None = None,
        cli_args: list[str] | None = None,
        parameter_overrides: list[Parameter[Any]] | None = None,
        supernet: Supernet | None = None,
    ) -> None:
        super().__init__(
            node_name,
            namespace=namespace,
            context=context,
            cli_args=cli_args,
            parameter_overrides=parameter_overrides,
        )
        self._closed = False
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._slot: LatestSlot[Frame] = LatestSlot()
        self._lock = threading.RLock()  # constraints, counters, status publishing
        self._errors = 0
        self._last_error = ""
        self._peer_errors = 0
        #: level changes decided by the group coordinator (the rest: constraints, manual, own rule)
        self.coordinator_moves = 0
        self._status_pub: Any = None
        self._coord_pub: Any = None
        self._image_topics: list[str] = []
        try:
            for spec in PARAMETERS:
                self.declare_parameter(spec.name, spec.default, descriptor(spec))
            self.settings: Settings = settings_from(
                {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
            )
            self.classifier = self._load(supernet)
            self._apply_constraints(
                self.get_parameter("latency_budget_ms").value, self.get_parameter("min_accuracy").value
            )
        except (ParameterException, SettingsError) as exc:
            self.destroy_node()
            raise StartupError(f"invalid parameter: {exc}") from None
        except DofaError as exc:
            self.destroy_node()
            raise StartupError(str(exc)) from None
        effective = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        for warning in dropped_overrides([*sys.argv, *(cli_args or [])], node_name, effective):
            self.get_logger().warning(warning)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._setup_ros()
        self._worker = threading.Thread(target=self._work, name=f"{node_name}-inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: {len(self.table.levels)} levels on {self.settings.device} (table {self.table.path}, "
            f"model {self.supernet.source}), level {self.classifier.current_level}, listening on "
            f"{', '.join(self._image_topics)}"
        )

    # ------------------------------------------------------------------------------ start-up

    def _load(self, supernet: Supernet | None) -> DynamicClassifier:
        s = self.settings
        if supernet is None:
            supernet = load_supernet(s.model, device=s.device, allow_random=s.model.startswith("random"))
        self.supernet = supernet
        table_path = Path(s.level_table).expanduser() if s.level_table else default_level_table(s.device)
        table = load_level_table(
            table_path, supernet=supernet, expected_device=s.device if s.check_table_device else None
        )
        classifier = DynamicClassifier.from_table(
            supernet,
            table,
            s.classifier_config(),
            name=self.get_fully_qualified_name(),
            frame_clock=self._ros_seconds,  # header stamps are ROS time
            on_switch=self._on_switch,
        )
        for warning in classifier.warnings:
            self.get_logger().warning(warning)
        return classifier

    def _setup_ros(self) -> None:
        s = self.settings
        image_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=s.qos_depth,
            reliability=(
                ReliabilityPolicy.BEST_EFFORT
                if s.qos_reliability == "best_effort"
                else ReliabilityPolicy.RELIABLE
            ),
            durability=DurabilityPolicy.VOLATILE,
        )
        self._image_sub = self.create_subscription(Image, "image", self._on_image, image_qos)
        self._image_topics = [self._image_sub.topic_name]
        self._compressed_sub = None
        if s.use_compressed:
            topic = self._compressed_topic()
            self._compressed_sub = self.create_subscription(CompressedImage, topic, self._on_image, image_qos)
            self._image_topics.append(self._compressed_sub.topic_name)
        self._prediction_pub = self.create_publisher(Prediction, "~/prediction", 10)
        self._status_pub = self.create_publisher(ManagerStatus, "~/status", 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._coord_sub = None
        if self.classifier.coordinator is not None:
            self._coord_pub = self.create_publisher(ManagerStatus, COORDINATION_TOPIC, 10)
            self._coord_sub = self.create_subscription(
                ManagerStatus, COORDINATION_TOPIC, self._on_peer_status, 10
            )
        self.create_service(
            SetConstraints, "~/set_constraints", self._srv_set_constraints, qos_profile=_SERVICE_QOS
        )
        self.create_service(SetLevel, "~/set_level", self._srv_set_level, qos_profile=_SERVICE_QOS)
        self.create_service(GetLevels, "~/get_levels", self._srv_get_levels, qos_profile=_SERVICE_QOS)
        self._status_timer = self.create_timer(1.0 / s.status_rate, self._on_status_timer)
        self._input_watch = InputWatch(
            timeout_s=s.input_timeout_s,
            hint=(
                "if they publish frames over 512 KiB (640x480 rgb8 and up) with Fast DDS's default "
                "transports, start the publisher with FASTDDS_DEFAULT_PROFILES_FILE="
                f"{config_file('fastdds_large_frames.xml')} or set qos_reliability:=reliable"
            ),
        )
        self.input_warning = ""

    def _compressed_topic(self) -> str:
        """``<resolved image topic>/compressed``, unless ``image/compressed`` itself is remapped."""
        remapped = self.resolve_topic_name("image/compressed")
        if remapped != self.resolve_topic_name("image/compressed", only_expand=True):
            return remapped
        return self.resolve_topic_name("image").rstrip("/") + "/compressed"

    # ------------------------------------------------------------------------------ core access

    @property
    def engine(self) -> LevelEngine:
        """The classifier's engine."""
        return self.classifier.engine

    @property
    def manager(self) -> RuntimeManager:
        """The classifier's runtime manager (owner of the current level)."""
        return self.classifier.manager

    @property
    def coordinator(self) -> Coordinator | None:
        """The classifier's coordinator (``coordination_group`` set), else ``None``."""
        return self.classifier.coordinator

    @property
    def table(self) -> LevelTable:
        """The level table in use."""
        return self.classifier.table

    @property
    def levels(self) -> tuple[LevelSpec, ...]:
        """The levels as the manager sees them."""
        return self.classifier.levels

    # ------------------------------------------------------------------------------ shutdown

    def destroy_node(self) -> None:
        """Stop the inference thread, then destroy the ROS entities."""
        if not self._closed:
            self._closed = True
            self._stop.set()
            self._slot.close()
            worker = self._worker
            if worker is not None and worker is not threading.current_thread():
                worker.join(timeout=10.0)
        super().destroy_node()

    # ------------------------------------------------------------------------------ counters

    @property
    def dropped(self) -> int:
        """Frames replaced by a newer one before inference (latest-frame policy)."""
        return self._slot.dropped

    @property
    def errors(self) -> int:
        """Frames that could not be classified (bad encoding, size, data)."""
        return self._errors

    def _frame_error(self, message: str) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = message
            count = self._errors
        self.get_logger().warning(
            f"frame rejected ({count} so far): {message}", throttle_duration_sec=_WARN_PERIOD_S
        )

    # ------------------------------------------------------------------------------ frames

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._input_watch.arrived(time.monotonic())
        self._slot.put(Frame(msg=msg, received_ns=self.get_clock().now().nanoseconds))

    def _to_rgb(self, msg: Image | CompressedImage) -> np.ndarray:
        if isinstance(msg, CompressedImage):
            return decode_compressed(
                memoryview(msg.data), fmt=msg.format, max_pixels=self.settings.max_image_pixels
            )
        return image_from_buffer(
            memoryview(msg.data),
            width=msg.width,
            height=msg.height,
            step=msg.step,
            encoding=msg.encoding,
            is_bigendian=msg.is_bigendian,
            max_pixels=self.settings.max_image_pixels,
        )

    def _captured_at(self, frame: Frame) -> float:
        """When the frame was captured (ROS clock, s): its header stamp when plausible, else arrival."""
        stamp = frame.msg.header.stamp
        stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        if stamp_ns > 0:
            age_ns = self.get_clock().now().nanoseconds - stamp_ns
            if 0 <= age_ns <= self.settings.max_stamp_age_s * 1e9:
                return stamp_ns * 1e-9
        return frame.received_ns * 1e-9

    def _ros_seconds(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _work(self) -> None:
        while not self._stop.is_set():
            frame = self._slot.take(timeout=0.2)
            if frame is None or self._stop.is_set():
                continue
            try:
                self._process(frame)
            except (ImageError, DofaError) as exc:
                self._frame_error(str(exc))
            except Exception as exc:  # never let one frame kill the node
                if self._stop.is_set() or not self.context.ok():
                    return  # shutting down: a frame in flight is neither an error nor a warning
                self._frame_error(f"unexpected {type(exc).__name__}: {exc}")

    def _process(self, frame: Frame) -> None:
        rgb = self._to_rgb(frame.msg)
        captured_at = self._captured_at(frame)
        result = self.classifier.classify(rgb, captured_at=captured_at)
        msg = Prediction()
        msg.header = frame.msg.header
        msg.class_id = result.top[0][0]
        msg.label = labels.label(result.top[0][0])
        msg.score = result.top[0][1]
        msg.top_ids = [index for index, _ in result.top]
        msg.top_scores = [score for _, score in result.top]
        msg.level = result.level
        msg.inference_ms = result.inference_ms
        msg.expected_accuracy = result.expected_accuracy
        msg.latency_ms = result.latency_ms
        self._prediction_pub.publish(msg)

    # ------------------------------------------------------------------------------ constraints

    def _on_switch(self, decision: Decision) -> None:
        """Every level change (any cause): log it and publish the status."""
        if decision.reason == "coordinator":
            self.coordinator_moves += 1
        self.get_logger().info(
            f"level {decision.previous_level} -> {decision.level} ({decision.reason}, mode {decision.mode}"
            + (f", unmet: {decision.unmet}" if decision.unmet else "")
            + ")"
        )
        self._publish_status()

    def _apply_constraints(self, budget_ms: object, min_accuracy: object) -> Decision:
        """The one path for constraints (parameters, service, start-up); raises ConstraintError."""
        with self._lock:
            return self.classifier.set_constraints(
                latency_budget_ms=budget_value(budget_ms),  # type: ignore[arg-type]  # the core checks
                min_accuracy=budget_value(min_accuracy),  # type: ignore[arg-type]
            )

    def _on_set_parameters(self, params: list[Parameter[Any]]) -> SetParametersResult:
        values = {p.name: p.value for p in params}
        try:
            with self._lock:
                if values.keys() & {"latency_budget_ms", "min_accuracy"}:
                    self._apply_constraints(
                        values.get("latency_budget_ms", self.get_parameter("latency_budget_ms").value),
                        values.get("min_accuracy", self.get_parameter("min_accuracy").value),
                    )
                if "top_k" in values:
                    self.classifier.top_k = values["top_k"]
        except ConstraintError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------ services

    def _srv_set_constraints(
        self, request: SetConstraints.Request, response: SetConstraints.Response
    ) -> SetConstraints.Response:
        budget = float(request.latency_budget_ms)
        accuracy = float(request.min_accuracy)
        with self._lock:
            # Through the parameters, so that `ros2 param get` agrees and both paths are one.
            result = self.set_parameters_atomically(
                [
                    Parameter("latency_budget_ms", Parameter.Type.DOUBLE, budget),
                    Parameter("min_accuracy", Parameter.Type.DOUBLE, accuracy),
                ]
            )
            state = self.classifier.status()
        response.accepted = bool(result.successful)
        response.level = int(state.level)
        if result.successful:
            response.message = f"budget {budget:g} ms, min_accuracy {accuracy:g} %: level {state.level}" + (
                f" (cannot meet: {state.unmet})" if state.unmet else ""
            )
        else:
            response.message = result.reason
        return response

    def _srv_set_level(self, request: SetLevel.Request, response: SetLevel.Response) -> SetLevel.Response:
        try:
            decision = self.classifier.set_level(int(request.level))
        except UnknownLevelError as exc:
            response.accepted = False
            response.message = str(exc)
            response.level = int(self.classifier.current_level)
            return response
        response.accepted = True
        response.level = int(decision.level)
        response.message = (
            f"level {decision.level} locked (manual)"
            if request.level
            else f"automatic ({decision.mode}), level {decision.level}"
        )
        return response

    def _srv_get_levels(self, request: GetLevels.Request, response: GetLevels.Response) -> GetLevels.Response:
        infos = level_infos(self.table, self.classifier.levels)
        response.levels = infos
        response.current_level = int(self.classifier.current_level)
        response.device = self.table.device
        return response

    # ------------------------------------------------------------------------------ status

    def status_message(self, *, coordination: bool = False) -> ManagerStatus:
        """The node's ManagerStatus.

        On ``~/status`` the window fields cover the last ``window_size`` frames. On the
        coordination topic (``coordination=True``) they are those of the manager's last complete
        window *at the current level* (0 = not measured yet), as the coordinator expects.
        """
        msg = status_message(
            self.classifier.status(),
            self.classifier.peer_status(),
            coordination=coordination,
            device=self.settings.device,
            dropped=self._slot.dropped,
            errors=self._errors,
        )
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg

    def _publish_status(self) -> None:
        if self._closed or self._status_pub is None:
            return
        with self._lock:
            self._status_pub.publish(self.status_message())
            if self._coord_pub is not None:
                self._coord_pub.publish(self.status_message(coordination=True))

    def _on_status_timer(self) -> None:
        self._publish_status()
        if not self._closed:
            self._check_input()
            self._diagnostics_pub.publish(self.diagnostics())

    def _check_input(self) -> None:
        """Update :attr:`input_warning`: frames never arrived, or stopped arriving (input_watch)."""
        publishers = sum(self.count_publishers(topic) for topic in self._image_topics)
        state = self._input_watch.check(
            time.monotonic(), publishers=publishers, topics=", ".join(self._image_topics)
        )
        self.input_warning = state.warning
        if state.changed:
            if state.warning:
                self.get_logger().warning(state.warning)
            else:
                self.get_logger().info(f"frames arrive again on {', '.join(self._image_topics)}")

    def diagnostics(self) -> DiagnosticArray:
        """The ``/diagnostics`` message: level, window latency vs budget, drops, errors, peers."""
        status = self.status_message()
        level, message = diagnostic_summary(status)
        if self.input_warning:
            level, message = DiagnosticStatus.WARN, self.input_warning
        peers = self.peer_names()
        values = {
            "level": status.level,
            "n_levels": status.n_levels,
            "mode": status.mode,
            "budget_ms": f"{status.budget_ms:g}",
            "min_accuracy": f"{status.min_accuracy:g}",
            "expected_accuracy": f"{status.expected_accuracy:.2f}",
            "window_mean_ms": f"{status.window_mean_ms:.2f}",
            "window_p95_ms": f"{status.window_p95_ms:.2f}",
            "unmet": status.unmet,
            "frames": status.frames,
            "violations": status.violations,
            "switches": status.switches,
            "frames_received": self._slot.received,
            "dropped": status.dropped,
            "errors": status.errors,
            "last_error": self._last_error,
            "device": status.device,
            "coordination_group": status.coordination_group,
            "coordination": ("coordinated with " + ", ".join(peers)) if peers else "alone",
            "coordinator_moves": self.coordinator_moves,
            "peer_status_errors": self._peer_errors,
        }
        entry = DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: dynamic_ofa",
            message=message,
            hardware_id=str(status.device),
            values=[KeyValue(key=key, value=str(value)) for key, value in values.items()],
        )
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [entry]
        return array

    # ------------------------------------------------------------------------------ coordination

    def peer_names(self) -> list[str]:
        """Names of the live peers of this node's coordination group."""
        return self.classifier.peer_names()

    def _on_peer_status(self, msg: ManagerStatus) -> None:
        if msg.coordination_group != self.settings.coordination_group:
            return
        if msg.node_name == self.get_fully_qualified_name():
            return
        try:
            peer = peer_from_message(msg)
        except (DofaError, ValueError) as exc:
            self._peer_errors += 1
            self.get_logger().warning(
                f"ignoring coordination status from {msg.node_name!r}: {exc}",
                throttle_duration_sec=_WARN_PERIOD_S,
            )
            return
        self.classifier.update_peer(peer)


# ------------------------------------------------------------------------------------------ main


def spin(node: Node) -> None:
    """Spin ``node`` on a SingleThreadedExecutor until shutdown (see the module docstring why)."""
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        executor.spin()
    finally:
        executor.shutdown()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``classifier_node``: 0 on a clean shutdown, 1 when the node cannot start.

    SIGINT/SIGTERM at any moment -- while the model loads or while frames flow -- end with 0 and
    no traceback; a bad ``--params-file`` or parameter ends with one FATAL line and 1.
    """
    argv = list(sys.argv if args is None else args)
    logger = get_logger(NODE_NAME)
    try:
        context = rclpy.init(args=argv)
    except RCLError as exc:  # e.g. a missing or unparsable --params-file
        logger.fatal(f"cannot start: {str(exc).strip()}; check the --ros-args (--params-file, -p)")
        return 1
    except KeyboardInterrupt:
        return 0
    node: ClassifierNode | None = None
    try:
        with context:
            node = ClassifierNode()
            spin(node)
    except StartupError as exc:
        logger.fatal(f"cannot start: {exc}")
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # a signal shut the context down while the node was being built: a clean stop
    finally:
        if node is not None:
            node.destroy_node()
    return 0


if __name__ == "__main__":
    sys.exit(main())
