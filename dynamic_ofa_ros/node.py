"""The ROS 2 node ``dynamic_ofa_classifier``: camera in, predictions out, latency budgets by service.

This module is deliberately thin. It translates ROS messages, parameters and services into
calls of the ROS-free core and publishes the results; every decision (which level runs,
how constraints are validated, how co-located models share a device) is made by the core:

* :mod:`dynamic_ofa_ros.supernet` / :mod:`dynamic_ofa_ros.levels` load the model and the
  level table, :class:`dynamic_ofa_ros.engine.LevelEngine` runs a level,
* :class:`dynamic_ofa_ros.manager.RuntimeManager` picks the level of the next frame from the
  constraints and the measured latencies,
* :class:`dynamic_ofa_ros.coordinator.Coordinator` plans levels across the nodes of a
  ``coordination_group``.

Threads: subscriptions only store the newest frame in a single-slot :class:`LatestFrame`
(replacing an unprocessed one counts as *dropped*, so no backlog can build up); one worker
thread converts, infers and publishes; services, parameters, timers and subscriptions run on
one ``SingleThreadedExecutor`` thread (all callbacks are short, so they answer while inference
runs). rclpy's ``MultiThreadedExecutor`` is not used: in ``dynamic_ofa_ros.node_bench`` its
dispatch thread spent 22-78 ms of CPU per frame and added up to 0.7 s (p99) to a frame's
latency on a 2-core machine, against about 1-2 ms with the single-threaded one (docs/node.md).

See ``docs/node.md`` for topics, services, parameters and the latency definition.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.context import Context
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from dynamic_ofa_ros import labels
from dynamic_ofa_ros.coordinator import Coordinator, PeerStatus
from dynamic_ofa_ros.engine import LevelEngine
from dynamic_ofa_ros.errors import ConstraintError, DofaError, ImageError, UnknownLevelError
from dynamic_ofa_ros.levels import LevelTable, load_level_table
from dynamic_ofa_ros.manager import MODES, PRIORITIES, Decision, LevelSpec, ManagerConfig, RuntimeManager
from dynamic_ofa_ros.msg import LevelInfo, ManagerStatus, Prediction
from dynamic_ofa_ros.paths import config_file, default_level_table, resolve_device
from dynamic_ofa_ros.preprocess import decode_compressed, image_from_buffer
from dynamic_ofa_ros.srv import GetLevels, SetConstraints, SetLevel
from dynamic_ofa_ros.supernet import Supernet, load_supernet

__all__ = [
    "COORDINATION_TOPIC",
    "NODE_NAME",
    "ClassifierNode",
    "LatestFrame",
    "StartupError",
    "main",
]

NODE_NAME = "dynamic_ofa_classifier"
#: Topic on which the nodes of a coordination group exchange their ManagerStatus.
COORDINATION_TOPIC = "/dynamic_ofa/coordination"
#: Budgets above this are rejected as unit mistakes (same bound as the manager's default).
MAX_BUDGET_MS = 60_000.0
_WARN_PERIOD_S = 5.0
#: publishers on the image topic but no frame for this long: warn about transport (see _check_input)
_NO_FRAMES_WARN_S = 5.0
_DEVICES = ("auto", "cpu", "cuda")
_RELIABILITIES = ("best_effort", "reliable")


class StartupError(Exception):
    """The node cannot start; the message says what is wrong and how to fix it (no traceback)."""


# --------------------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class Frame:
    """A received image message and when it arrived (ROS clock, nanoseconds)."""

    msg: Image | CompressedImage
    received_ns: int


class LatestFrame:
    """A single-slot holder: the newest unprocessed frame, never a queue.

    :meth:`put` replaces an unprocessed frame (counted in :attr:`dropped`);
    :meth:`take` waits for a frame and empties the slot. Thread-safe.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.dropped = 0
        self.received = 0

    def put(self, frame: Frame) -> bool:
        """Store ``frame``; returns ``True`` when it replaced (dropped) an unprocessed one."""
        with self._cond:
            replaced = self._frame is not None
            if replaced:
                self.dropped += 1
            self.received += 1
            self._frame = frame
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Frame | None:
        """The newest frame (emptying the slot), or ``None`` after ``timeout`` s or :meth:`close`."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed, timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        """Wake every waiter; later :meth:`take` calls return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# ----------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class _Param:
    name: str
    default: Any
    description: str
    read_only: bool = True
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    dynamic_typing: bool = False


PARAMETERS: tuple[_Param, ...] = (
    _Param("device", "auto", "inference device: cpu | cuda | auto (cuda when available)"),
    _Param(
        "model",
        "embedded",
        "super-network: embedded (shipped default) | ofa_zoo (OFA ImageNet weights) | "
        "random (random weights, meaningless accuracy) | path to a .safetensors/.pth checkpoint",
    ),
    _Param("level_table", "", "level table JSON; empty = config/levels/<device>.json of this package"),
    _Param(
        "check_table_device",
        True,
        "refuse a level_table profiled on another device kind; false accepts one (e.g. to check the "
        "cuda table's accuracy on a CPU): its latencies then say nothing about this device, so mode "
        "auto runs reactive and mode lut is refused",
    ),
    _Param(
        "latency_budget_ms",
        0.0,
        "end-to-end latency budget per frame in ms (0 = none); settable at runtime like ~/set_constraints",
        read_only=False,
        float_range=(0.0, MAX_BUDGET_MS),
        dynamic_typing=True,
    ),
    _Param(
        "min_accuracy",
        0.0,
        "accuracy floor, top-1 percent like the level table (0 = none); settable at runtime",
        read_only=False,
        float_range=(0.0, 100.0),
        dynamic_typing=True,
    ),
    _Param("mode", "auto", "manager mode: auto | lut (profiled latencies only) | reactive (measured)"),
    _Param("priority", "latency", "which constraint wins when no level meets both: latency | accuracy"),
    _Param("window_size", 10, "frames per measurement window of the manager", int_range=(1, 10_000)),
    _Param(
        "up_margin",
        0.85,
        "hysteresis: step up only when the next level is predicted within up_margin x budget",
        float_range=(0.05, 1.0),
    ),
    _Param("up_windows", 2, "hysteresis: ... for this many consecutive windows", int_range=(1, 1000)),
    _Param(
        "down_margin",
        0.95,
        "on a violation, go to the best level predicted within down_margin x budget",
        float_range=(0.05, 1.0),
    ),
    _Param(
        "threads", 0, "CPU threads for inference (0 = as the level table was profiled)", int_range=(0, 256)
    ),
    _Param("top_k", 5, "number of classes in top_ids/top_scores", read_only=False, int_range=(1, 1000)),
    _Param("qos_reliability", "best_effort", "image subscription reliability: best_effort | reliable"),
    _Param("qos_depth", 1, "image subscription history depth (keep last)", int_range=(1, 100)),
    _Param("use_compressed", False, "also subscribe <image>/compressed (sensor_msgs/CompressedImage)"),
    _Param("coordination_group", "", "nodes with the same non-empty group share a device and coordinate"),
    _Param(
        "coordination_timeout_s",
        2.0,
        "a peer not heard from for this long is forgotten (then the node acts alone)",
        float_range=(0.1, 3600.0),
    ),
    _Param(
        "status_rate",
        2.0,
        "rate (Hz) of ~/status, /diagnostics and coordination messages",
        float_range=(0.1, 100.0),
    ),
    _Param(
        "max_stamp_age_s",
        10.0,
        "a header stamp older than this (or in the future) is not trusted; latency is then measured "
        "from the frame's arrival",
        float_range=(0.0, 3600.0),
    ),
    _Param(
        "max_image_pixels",
        40_000_000,
        "larger frames are rejected (counted as errors) before conversion",
        int_range=(1, 1_000_000_000),
    ),
)


def _descriptor(spec: _Param) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(
        name=spec.name,
        description=spec.description,
        read_only=spec.read_only,
        dynamic_typing=spec.dynamic_typing,
    )
    if not spec.dynamic_typing:
        descriptor.type = Parameter.Type.from_parameter_value(spec.default).value
    if spec.float_range is not None:
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=spec.float_range[0], to_value=spec.float_range[1], step=0.0)
        ]
    if spec.int_range is not None:
        descriptor.integer_range = [
            IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=0)
        ]
    return descriptor


@dataclass(frozen=True)
class Settings:
    """The node's read-only parameters, validated."""

    device: str
    model: str
    level_table: str
    check_table_device: bool
    mode: str
    priority: str
    window_size: int
    up_margin: float
    up_windows: int
    down_margin: float
    threads: int
    qos_reliability: str
    qos_depth: int
    use_compressed: bool
    coordination_group: str
    coordination_timeout_s: float
    status_rate: float
    max_stamp_age_s: float
    max_image_pixels: int


def _choice(name: str, value: str, choices: Sequence[str]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise StartupError(f"parameter {name}={value!r} is not one of {', '.join(choices)}")
    return text


def _budget_arg(value: object, what: str) -> float:
    """A budget or accuracy parameter/service value as float; rejects non-numbers with a reason."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConstraintError(f"{what}={value!r} is not a number")
    return float(value)


# ------------------------------------------------------------------------------------------ node


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
        self._slot = LatestFrame()
        self._lock = threading.RLock()  # constraints, counters, status publishing
        self._coord_lock = threading.Lock()
        self._errors = 0
        self._last_error = ""
        self._no_budget = True
        self._peer_errors = 0
        #: level changes decided by the group coordinator (the rest: constraints, manual, own rule)
        self.coordinator_moves = 0
        self._status_pub: Any = None
        self._coord_pub: Any = None
        self._image_topics: list[str] = []
        try:
            self._declare()
            self.settings = self._read_settings()
            self._load(supernet)
            self._apply_constraints(
                _budget_arg(self.get_parameter("latency_budget_ms").value, "latency_budget_ms"),
                _budget_arg(self.get_parameter("min_accuracy").value, "min_accuracy"),
                initial=True,
            )
        except ParameterException as exc:
            self.destroy_node()
            raise StartupError(f"invalid parameter: {exc}") from None
        except DofaError as exc:
            self.destroy_node()
            raise StartupError(str(exc)) from None
        except StartupError:
            self.destroy_node()
            raise
        self._top_k = int(self.get_parameter("top_k").value)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._setup_ros()
        self._worker = threading.Thread(target=self._work, name=f"{node_name}-inference", daemon=True)
        self._worker.start()
        table = self.table
        self.get_logger().info(
            f"ready: {len(table.levels)} levels on {self.device} (table {table.path}, model "
            f"{self.supernet.source}), level {self.engine.current_level}, listening on "
            f"{', '.join(self._image_topics)}"
        )

    # ------------------------------------------------------------------------------ start-up

    def _declare(self) -> None:
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))

    def _read_settings(self) -> Settings:
        def get(name: str) -> Any:
            return self.get_parameter(name).value

        up_margin = float(get("up_margin"))
        down_margin = float(get("down_margin"))
        if up_margin > down_margin:
            raise StartupError(
                f"parameters up_margin={up_margin} and down_margin={down_margin}: need up_margin <= "
                "down_margin (the gap is the hysteresis band)"
            )
        return Settings(
            device=resolve_device(_choice("device", get("device"), _DEVICES)),
            model=str(get("model")).strip() or "embedded",
            level_table=str(get("level_table")).strip(),
            check_table_device=bool(get("check_table_device")),
            mode=_choice("mode", get("mode"), MODES),
            priority=_choice("priority", get("priority"), PRIORITIES),
            window_size=int(get("window_size")),
            up_margin=up_margin,
            up_windows=int(get("up_windows")),
            down_margin=down_margin,
            threads=int(get("threads")),
            qos_reliability=_choice("qos_reliability", get("qos_reliability"), _RELIABILITIES),
            qos_depth=int(get("qos_depth")),
            use_compressed=bool(get("use_compressed")),
            coordination_group=str(get("coordination_group")).strip(),
            coordination_timeout_s=float(get("coordination_timeout_s")),
            status_rate=float(get("status_rate")),
            max_stamp_age_s=float(get("max_stamp_age_s")),
            max_image_pixels=int(get("max_image_pixels")),
        )

    def _load(self, supernet: Supernet | None) -> None:
        s = self.settings
        self.device = s.device
        if supernet is None:
            supernet = load_supernet(s.model, device=s.device, allow_random=s.model.startswith("random"))
        self.supernet = supernet
        table_path = Path(s.level_table).expanduser() if s.level_table else default_level_table(s.device)
        self.table: LevelTable = load_level_table(
            table_path, supernet=supernet, expected_device=s.device if s.check_table_device else None
        )
        if self.table.device.split(":")[0] != s.device.split(":")[0]:
            # Only reachable with check_table_device=false: the table's latencies were measured on
            # another device, so only measured latencies (reactive mode) can drive the levels here.
            if s.mode == "lut":
                raise StartupError(
                    f"mode 'lut' needs latencies of this device, but {table_path} was profiled on "
                    f"{self.table.device!r}; use mode 'reactive' or a table built here"
                )
            if s.mode == "auto":
                s = self.settings = replace(s, mode="reactive")
            self.get_logger().warning(
                f"level table {table_path} was profiled on {self.table.device!r} "
                f"({self.table.device_name}), not on {s.device!r}: its latencies do not apply here, "
                "running in reactive mode"
            )
        threads = s.threads or None  # None: as the table was profiled (on this device kind)
        self.engine = LevelEngine(
            supernet,
            self.table,
            device=s.device,
            threads=threads,
            max_pixels=s.max_image_pixels,
            check_device=s.check_table_device,
            initial_level=len(self.table.levels),
        )
        self.levels: tuple[LevelSpec, ...] = tuple(LevelSpec.from_level(level) for level in self.table.levels)
        config = ManagerConfig(
            window_size=s.window_size,
            mode=s.mode,
            priority=s.priority,
            up_margin=s.up_margin,
            up_windows=s.up_windows,
            down_margin=s.down_margin,
            max_budget_ms=MAX_BUDGET_MS,
        )
        self.manager = RuntimeManager(self.levels, config, on_switch=self._on_switch)
        self.engine.switch(self.manager.current_level)
        self.coordinator: Coordinator | None = None
        if s.coordination_group:
            self.coordinator = Coordinator(
                self.get_fully_qualified_name(),
                timeout_s=s.coordination_timeout_s,
                margin=s.up_margin,
                down_margin=s.down_margin,
                up_windows=s.up_windows,
            )
            self.manager.set_window_policy(self._coordination_policy)
        if not self.table.meaningful_accuracy or not supernet.meaningful_accuracy:
            self.get_logger().warning(
                f"model {supernet.source!r} has random weights: predictions and accuracies are meaningless"
            )

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
        if self.coordinator is not None:
            self._coord_pub = self.create_publisher(ManagerStatus, COORDINATION_TOPIC, 10)
            self._coord_sub = self.create_subscription(
                ManagerStatus, COORDINATION_TOPIC, self._on_peer_status, 10
            )
        self.create_service(SetConstraints, "~/set_constraints", self._srv_set_constraints)
        self.create_service(SetLevel, "~/set_level", self._srv_set_level)
        self.create_service(GetLevels, "~/get_levels", self._srv_get_levels)
        self._status_timer = self.create_timer(1.0 / s.status_rate, self._on_status_timer)
        self._no_frames_since: float | None = None
        self.input_warning = ""

    def _compressed_topic(self) -> str:
        """``<resolved image topic>/compressed``, unless ``image/compressed`` itself is remapped."""
        remapped = self.resolve_topic_name("image/compressed")
        if remapped != self.resolve_topic_name("image/compressed", only_expand=True):
            return remapped
        return self.resolve_topic_name("image").rstrip("/") + "/compressed"

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

    # ------------------------------------------------------------------------------ input

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._slot.put(Frame(msg=msg, received_ns=self.get_clock().now().nanoseconds))

    def _to_rgb(self, msg: Image | CompressedImage) -> Any:
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

    def _latency_ms(self, frame: Frame, now_ns: int) -> float:
        """End-to-end latency: from the header stamp when plausible, else from the frame's arrival."""
        stamp = frame.msg.header.stamp
        stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        if stamp_ns > 0:
            age_ns = now_ns - stamp_ns
            if 0 <= age_ns <= self.settings.max_stamp_age_s * 1e9:
                return age_ns / 1e6
        return max(0, now_ns - frame.received_ns) / 1e6

    # ------------------------------------------------------------------------------ inference

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
                self._frame_error(f"unexpected {type(exc).__name__}: {exc}")

    def _process(self, frame: Frame) -> None:
        rgb = self._to_rgb(frame.msg)
        result = self.engine.infer(rgb)
        top = self.engine.topk(result.probs, max(1, self._top_k))
        ids = [int(i) for i, _ in top]
        scores = [float(p) for _, p in top]
        msg = Prediction()
        msg.header = frame.msg.header
        msg.class_id = ids[0]
        msg.label = labels.label(ids[0])
        msg.score = scores[0]
        msg.top_ids = ids
        msg.top_scores = scores
        msg.level = int(result.level)
        msg.inference_ms = float(result.inference_ms)
        msg.expected_accuracy = float(self.levels[result.level - 1].accuracy)
        latency = self._latency_ms(frame, self.get_clock().now().nanoseconds)
        msg.latency_ms = float(latency)
        self._prediction_pub.publish(msg)
        self.manager.observe(latency, inference_ms=float(result.inference_ms))

    # ------------------------------------------------------------------------------ manager

    def _on_switch(self, decision: Decision) -> None:
        """Every level change (any cause): switch the engine, publish the status."""
        self.engine.switch(decision.level)
        if decision.reason == "coordinator":
            self.coordinator_moves += 1
        self.get_logger().info(
            f"level {decision.previous_level} -> {decision.level} ({decision.reason}, mode {decision.mode}"
            + (f", unmet: {decision.unmet}" if decision.unmet else "")
            + ")"
        )
        self._publish_status()

    def _apply_constraints(
        self, budget_ms: float, min_accuracy: float, *, initial: bool = False
    ) -> Decision | None:
        """The one path for constraints (parameters, service, start-up); raises ConstraintError."""
        if not math.isfinite(budget_ms) or budget_ms < 0.0:
            raise ConstraintError(
                f"latency budget {budget_ms} ms is not usable; give a positive, finite number of "
                "milliseconds (0 = no budget)"
            )
        with self._lock:
            if initial and budget_ms == 0.0 and min_accuracy == 0.0:
                self._no_budget = True
                return None
            # The manager always has a budget; "no budget" is the largest one it accepts.
            effective = budget_ms if budget_ms > 0.0 else MAX_BUDGET_MS
            decision = self.manager.set_constraints(latency_budget_ms=effective, min_accuracy=min_accuracy)
            self._no_budget = budget_ms == 0.0
            return decision

    def _on_set_parameters(self, params: list[Parameter[Any]]) -> SetParametersResult:
        names = {p.name for p in params}
        try:
            with self._lock:
                if names & {"latency_budget_ms", "min_accuracy"}:
                    values = {p.name: p.value for p in params}
                    budget = values.get("latency_budget_ms", self.get_parameter("latency_budget_ms").value)
                    accuracy = values.get("min_accuracy", self.get_parameter("min_accuracy").value)
                    self._apply_constraints(
                        _budget_arg(budget, "latency_budget_ms"), _budget_arg(accuracy, "min_accuracy")
                    )
                for p in params:
                    if p.name == "top_k":
                        self._top_k = int(p.value)
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
            state = self.manager.status()
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
            decision = self.manager.set_manual_level(int(request.level))
        except UnknownLevelError as exc:
            response.accepted = False
            response.message = str(exc)
            response.level = int(self.manager.current_level)
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
        infos = []
        for level in self.table.levels:
            cfg = level.config
            info = LevelInfo()
            info.level = int(level.level)
            info.resolution = int(cfg.resolution)
            info.ks = [int(v) for v in cfg.ks]
            info.e = [int(v) for v in cfg.e]
            info.d = [int(v) for v in cfg.d]
            info.latency_ms = float(level.latency_ms)
            info.accuracy = float(self.levels[level.level - 1].accuracy)
            info.macs_m = float(level.macs_m or 0.0)
            infos.append(info)
        response.levels = infos
        response.current_level = int(self.manager.current_level)
        response.device = self.table.device
        return response

    # ------------------------------------------------------------------------------ status

    def status_message(self, *, coordination: bool = False) -> ManagerStatus:
        """The node's ManagerStatus.

        On ``~/status`` the window fields cover the last ``window_size`` frames. On the
        coordination topic (``coordination=True``) they are those of the manager's last complete
        window *at the current level* (0 = not measured yet), as the coordinator expects.
        """
        state = self.manager.status()
        msg = ManagerStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.node_name = self.get_fully_qualified_name()
        msg.coordination_group = self.settings.coordination_group
        msg.level = int(state.level)
        msg.n_levels = int(state.n_levels)
        msg.mode = state.mode
        msg.budget_ms = 0.0 if self._no_budget else float(state.budget_ms)
        msg.min_accuracy = float(state.min_accuracy)
        msg.expected_accuracy = float(state.expected_accuracy)
        msg.unmet = "" if self._no_budget and state.unmet == "latency" else state.unmet
        own = PeerStatus.from_manager(self.manager, name=msg.node_name, group=msg.coordination_group)
        msg.priority = own.priority
        msg.locked = own.locked
        msg.previous_level = own.previous_level
        msg.level_since = own.since
        if coordination:
            msg.window_mean_ms = float(own.window_mean_ms)
            msg.window_p95_ms = (
                float(state.last_window.p95_ms) if own.window_mean_ms and state.last_window else 0.0
            )
            msg.window_start = own.window_start
            msg.window_end = own.window_end
        else:
            msg.window_mean_ms = float(state.window_mean_ms)
            msg.window_p95_ms = float(state.window_p95_ms)
        msg.frames = min(int(state.frames), 2**32 - 1)
        msg.violations = min(int(state.violations), 2**32 - 1) if not self._no_budget else 0
        msg.switches = min(int(state.switches), 2**32 - 1)
        msg.dropped = min(self._slot.dropped, 2**32 - 1)
        msg.errors = min(self._errors, 2**32 - 1)
        msg.device = str(self.device)
        msg.level_latency_ms = [float(spec.latency_ms) for spec in self.levels]
        msg.level_accuracy = [float(spec.accuracy) for spec in self.levels]
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
        """Set :attr:`input_warning` when publishers exist but no frame ever arrived.

        The usual cause is transport, not the camera: with Fast DDS's default transports a
        frame over 512 KiB (640x480 rgb8 and up) leaves the publishing process as UDP fragments,
        and a best-effort subscriber never got one in our measurements (docs/node.md).
        """
        if self._slot.received:
            self._no_frames_since, self.input_warning = None, ""
            return
        publishers = sum(self.count_publishers(topic) for topic in self._image_topics)
        if not publishers:
            self._no_frames_since, self.input_warning = None, ""
            return
        now = time.monotonic()
        if self._no_frames_since is None:
            self._no_frames_since = now
        waited = now - self._no_frames_since
        if waited < _NO_FRAMES_WARN_S:
            return
        self.input_warning = (
            f"{publishers} publisher(s) on {', '.join(self._image_topics)} but no frame received in "
            f"{waited:.0f} s; if they publish frames over 512 KiB (640x480 rgb8 and up) with Fast DDS's "
            f"default transports, start the publisher with FASTDDS_DEFAULT_PROFILES_FILE="
            f"{config_file('fastdds_large_frames.xml')} or set qos_reliability:=reliable"
        )
        self.get_logger().warning(self.input_warning, throttle_duration_sec=30.0)

    def diagnostics(self) -> DiagnosticArray:
        """The ``/diagnostics`` message: level, window latency vs budget, drops, errors, peers."""
        status = self.status_message()
        budget = status.budget_ms
        level = DiagnosticStatus.OK
        if budget > 0.0 and status.frames and status.window_mean_ms > budget:
            if status.level == 1:
                level = DiagnosticStatus.WARN
                message = (
                    f"budget violated at level 1: window mean {status.window_mean_ms:.1f} ms > budget "
                    f"{budget:g} ms; no faster level exists"
                )
            else:
                message = (
                    f"level {status.level}/{status.n_levels}: window mean {status.window_mean_ms:.1f} ms > "
                    f"budget {budget:g} ms, stepping down"
                )
        elif budget > 0.0:
            message = (
                f"level {status.level}/{status.n_levels}: window mean {status.window_mean_ms:.1f} ms "
                f"within budget {budget:g} ms"
            )
        else:
            message = f"level {status.level}/{status.n_levels}: no latency budget"
        if self.input_warning:
            level, message = DiagnosticStatus.WARN, self.input_warning
        peers = self._peer_names()
        values = {
            "level": status.level,
            "n_levels": status.n_levels,
            "mode": status.mode,
            "budget_ms": f"{budget:g}",
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
        }
        entry = DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: dynamic_ofa",
            message=message,
            hardware_id=str(self.device),
            values=[KeyValue(key=key, value=str(value)) for key, value in values.items()],
        )
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [entry]
        return array

    # ------------------------------------------------------------------------------ coordination

    def _peer_names(self) -> list[str]:
        if self.coordinator is None:
            return []
        with self._coord_lock:
            return [peer.name for peer in self.coordinator.peers(self.settings.coordination_group)]

    def _on_peer_status(self, msg: ManagerStatus) -> None:
        coordinator = self.coordinator
        if coordinator is None or msg.coordination_group != self.settings.coordination_group:
            return
        if msg.node_name == self.get_fully_qualified_name():
            return
        try:
            peer = PeerStatus(
                name=msg.node_name,
                group=msg.coordination_group,
                level=int(msg.level),
                budget_ms=float(msg.budget_ms),
                window_mean_ms=float(msg.window_mean_ms),
                levels=tuple(
                    LevelSpec(level=i + 1, latency_ms=float(lat), accuracy=float(acc))
                    for i, (lat, acc) in enumerate(zip(msg.level_latency_ms, msg.level_accuracy, strict=True))
                ),
                min_accuracy=float(msg.min_accuracy),
                priority=msg.priority,
                stamp=msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9,
                since=float(msg.level_since),
                previous_level=int(msg.previous_level),
                window_start=float(msg.window_start),
                window_end=float(msg.window_end),
                locked=bool(msg.locked),
            )
        except (DofaError, ValueError) as exc:
            self._peer_errors += 1
            self.get_logger().warning(
                f"ignoring coordination status from {msg.node_name!r}: {exc}",
                throttle_duration_sec=_WARN_PERIOD_S,
            )
            return
        with self._coord_lock:
            coordinator.update(peer)

    def _coordination_policy(self, manager: RuntimeManager) -> int | None:
        """Window policy: the coordinator's plan when peers are alive, else the manager's own rule."""
        coordinator = self.coordinator
        if coordinator is None:
            return None
        own = PeerStatus.from_manager(
            manager, name=self.get_fully_qualified_name(), group=self.settings.coordination_group
        )
        with self._coord_lock:
            return coordinator.decide(own)


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
    """Entry point of ``classifier_node``: 0 on a clean shutdown, 1 when the node cannot start."""
    node: ClassifierNode | None = None
    try:
        with rclpy.init(args=args):
            try:
                node = ClassifierNode()
            except StartupError as exc:
                get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
                return 1
            try:
                spin(node)
            finally:
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
