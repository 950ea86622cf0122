"""The ROS 2 node ``dynamic_ofa_classifier``: camera in, predictions out, latency budgets by service.

A thin, managed (lifecycle) node around the ROS-free
:class:`~dynamic_ofa_ros.classifier.DynamicClassifier`, which makes every decision (which level
runs, how constraints are validated, how co-located models share a device). *configure* loads
the model and the level table and materialises every level (timed in the log); *activate*
subscribes, enables the publishers and starts the inference thread; *deactivate* unsubscribes
and stops the thread (no CPU used); *cleanup* drops the engine and the super-network and returns
their memory. ``autostart`` (default true) runs configure + activate at start. Services answer
in every state (a refusal naming the state where they cannot act).

Parameters: :mod:`~dynamic_ofa_ros.node_parameters`; topics: :mod:`~dynamic_ofa_ros.node_io`;
frame hand-over and inference thread: :mod:`~dynamic_ofa_ros.node_frames`; messages:
:mod:`~dynamic_ofa_ros.node_messages`. Services, parameters, timers, subscriptions and
transitions run on one ``SingleThreadedExecutor`` thread: rclpy's ``MultiThreadedExecutor``
spent 22-78 ms of CPU per frame in its dispatch thread on a 2-core machine (docs/node.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
import threading
import time
import types
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import ROSClock
from rclpy.context import Context
from rclpy.exceptions import ParameterException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_parameters
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from dynamic_ofa_ros.classifier import DynamicClassifier
from dynamic_ofa_ros.errors import ConstraintError, DofaError
from dynamic_ofa_ros.input_watch import InputWatch
from dynamic_ofa_ros.levels import load_level_table
from dynamic_ofa_ros.manager import Decision
from dynamic_ofa_ros.msg import ManagerStatus
from dynamic_ofa_ros.node_frames import Frame, FramePipeline, StageTrace, captured_at, frame_rgb
from dynamic_ofa_ros.node_io import (
    COORDINATION_TOPIC,
    Inputs,
    Outputs,
    create_outputs,
    input_watch,
    subscribe,
)
from dynamic_ofa_ros.node_messages import (
    classification_message,
    diagnostic_status,
    get_levels_response,
    label_info_message,
    load_vision_msgs,
    peer_from_message,
    prediction_message,
    set_level_response,
    status_message,
)
from dynamic_ofa_ros.node_parameters import (
    PARAMETERS,
    Settings,
    SettingsError,
    budget_value,
    check_constraints,
    descriptor,
    dropped_overrides,
    settings_from,
)
from dynamic_ofa_ros.paths import default_level_table
from dynamic_ofa_ros.srv import GetLevels, SetConstraints, SetLevel
from dynamic_ofa_ros.supernet import Supernet, SupernetSource, open_supernet

__all__ = ["COORDINATION_TOPIC", "NODE_NAME", "PARAMETERS", "ClassifierNode", "StartupError", "main"]

NODE_NAME = "dynamic_ofa_classifier"
_WARN_PERIOD_S = 5.0
#: Services answer every request of a burst: rclpy's default service QoS keeps only 10, and 189 of
#: 200 concurrent calls went unanswered with it (issue 15); this is the depth of parameter services.
_SERVICE_QOS = qos_profile_parameters
_SUCCESS, _FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class StartupError(Exception):
    """The node cannot start; the message says what is wrong and how to fix it (no traceback)."""


class ClassifierNode(LifecycleNode):
    """Dynamic-OFA image classifier with a runtime manager, as a managed node (module docstring).

    ``supernet``: an already loaded super-network to use instead of the ``model`` parameter
    (tests and the in-process demo share one between nodes to save start-up time).
    ``interruptible``: a context manager around the model loading of *configure*, inside which
    the process's signal handler may raise ``KeyboardInterrupt`` (``node_main.StopSignals``).
    Construction declares the parameters and services only (state *unconfigured*); a parameter
    of the wrong type raises :class:`StartupError`. :meth:`start` configures and activates.
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
        interruptible: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        super().__init__(
            node_name,
            namespace=namespace,
            context=context,
            cli_args=cli_args,
            parameter_overrides=parameter_overrides,
        )
        self._given_supernet = supernet
        self._interruptible = interruptible
        self._classifier: DynamicClassifier | None = None
        self._settings: Settings | None = None
        self.supernet: Supernet | SupernetSource | None = None
        self._model_source = ""
        self._outputs: Outputs | None = None
        self._inputs = Inputs()
        self._vision: types.ModuleType | None = None
        self._status_timer: Any = None  # rclpy Timer while active
        self._trace = StageTrace.from_env()  # node_bench's per-stage breakdown (DOFA_NODE_TRACE)
        self._frames = self._new_frames()
        self._lock = threading.RLock()  # constraints, status publishing
        self._closed = False
        self._starting = False
        self.finalized = False
        #: why the last configure or activate failed ("" when it did not)
        self.transition_error = ""
        #: level changes decided by the group coordinator (the rest: constraints, manual, own rule)
        self.coordinator_moves = 0
        self.input_warning = ""
        self._input_watch = InputWatch()
        try:
            for spec in PARAMETERS:
                self.declare_parameter(spec.name, spec.default, descriptor(spec))
        except ParameterException as exc:
            self.destroy_node()
            raise StartupError(f"invalid parameter: {exc}") from None
        effective = self._values()
        for warning in dropped_overrides([*sys.argv, *(cli_args or [])], node_name, effective):
            self.get_logger().warning(warning)
        self.autostart = bool(effective["autostart"])
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_service(
            SetConstraints, "~/set_constraints", self._srv_set_constraints, qos_profile=_SERVICE_QOS
        )
        self.create_service(SetLevel, "~/set_level", self._srv_set_level, qos_profile=_SERVICE_QOS)
        self.create_service(GetLevels, "~/get_levels", self._srv_get_levels, qos_profile=_SERVICE_QOS)

    def _values(self) -> dict[str, Any]:
        return {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}

    def _new_frames(self) -> FramePipeline:
        return FramePipeline(f"{self.get_name()}-inference", self.get_logger(), self.context.ok, self._trace)

    def start(self) -> None:
        """Configure and activate (what ``autostart`` does); :class:`StartupError` with the reason.

        The reason is left to the caller to report (``main()``: one FATAL line), not logged here.
        """
        self._starting = True
        try:
            for trigger in (self.trigger_configure, self.trigger_activate):
                if trigger() != _SUCCESS:
                    raise StartupError(self.transition_error or f"{trigger.__name__} failed")
        finally:
            self._starting = False

    # ------------------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model and the level table, materialise every level, create the publishers."""
        started = time.perf_counter()
        try:
            self._settings = settings_from(self._values())
            with self._interruptible():  # a signal may stop the (long, rclpy-free) loading
                self._classifier = self._load(self._given_supernet)
            self._apply_constraints(
                self.get_parameter("latency_budget_ms").value, self.get_parameter("min_accuracy").value
            )
            if self._vision is None:
                self._vision = load_vision_msgs()
                if self._vision is None:
                    self.get_logger().info("vision_msgs not installed: ~/classification disabled")
            self._outputs = create_outputs(
                self, vision=self._vision, coordinated=self.classifier.coordinator is not None
            )
        except Exception as exc:
            return self._refuse("configure", exc)
        self._frames = self._new_frames()
        self.transition_error = ""
        table = self.classifier.table
        self.get_logger().info(
            f"configured in {time.perf_counter() - started:.1f} s: {len(table.levels)} levels on "
            f"{self.settings.device} (table {table.path}, model {self._model_source})"
        )
        return _SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the publishers, start the inference thread, subscribe; publish the label map."""
        outputs = self._outputs
        assert outputs is not None  # rcl_lifecycle only activates a configured node
        try:
            self._inputs = subscribe(
                self,
                on_image=self._on_image,
                use_compressed=self.settings.use_compressed,
                on_peer=self._on_peer_status if self.classifier.coordinator is not None else None,
            )
        except Exception as exc:
            return self._refuse("activate", exc)
        super().on_activate(state)  # enables the publishers
        self._frames.start(self._process)
        topics = self._inputs.image_topics
        self._input_watch, self.input_warning = input_watch(topics, self.settings.input_timeout_s), ""
        if outputs.label_info is not None and self._vision is not None:
            outputs.label_info.publish(label_info_message(self._vision, self._header()))
        self._status_timer = self.create_timer(1.0 / self.settings.status_rate, self._on_status_timer)
        self.get_logger().info(
            f"ready: {len(self.classifier.table.levels)} levels on {self.settings.device}, level "
            f"{self.classifier.current_level}, listening on {', '.join(topics)}"
        )
        return _SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking frames and stop the inference thread; the levels stay loaded."""
        self._deactivate()
        super().on_deactivate(state)
        self.get_logger().info("inactive: not subscribed, inference thread stopped (levels kept)")
        return _SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the publishers and drop the engine and the super-network (memory returned)."""
        self._release()
        self.get_logger().info("unconfigured: levels and model released")
        return _SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state: stop and release everything; ``main()`` then ends the process."""
        self._deactivate()
        self._release()
        self.finalized = True
        return _SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """An unexpected error in a transition: release everything and go back to unconfigured."""
        self._deactivate()
        self._release()
        return _SUCCESS

    def _refuse(self, transition: str, exc: Exception) -> TransitionCallbackReturn:
        """Log why ``transition`` failed (one line, no traceback) and undo a half configuration."""
        if isinstance(exc, (ParameterException, SettingsError)):
            reason = f"invalid parameter: {exc}"
        elif isinstance(exc, DofaError):
            reason = str(exc)
        else:
            reason = f"{type(exc).__name__}: {exc}"
        self.transition_error = reason
        if transition == "configure":
            self._release()
        if self.context.ok() and not self._starting:  # a signal while loading is a clean stop
            self.get_logger().error(f"cannot {transition}: {reason}")
        return _FAILURE

    def _deactivate(self) -> None:
        self._inputs.destroy(self)
        self._frames.stop()
        if self._status_timer is not None:
            self.destroy_timer(self._status_timer)
            self._status_timer = None

    def _release(self) -> None:
        outputs, self._outputs = self._outputs, None
        if outputs is not None:
            outputs.destroy(self)
        device = self._settings.device if self._settings is not None else "cpu"
        self._settings = None
        if self._classifier is not None or self.supernet is not None:
            self._classifier, self.supernet = None, None
            _return_memory(device)

    # ------------------------------------------------------------------------------ start-up

    def _load(self, supernet: Supernet | SupernetSource | None) -> DynamicClassifier:
        s = self.settings
        if supernet is None:
            # identified by checksum: with every compiled level cached, the weights (and torch) stay unloaded
            supernet = open_supernet(s.model, device=s.device, allow_random=s.model.startswith("random"))
        self.supernet, self._model_source = supernet, supernet.source
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

    # ------------------------------------------------------------------------------ core access

    @property
    def classifier(self) -> DynamicClassifier:
        """The runtime (raises :class:`DofaError` while the node is unconfigured)."""
        if self._classifier is None:
            raise DofaError(f"{self.get_fully_qualified_name()} is not configured")
        return self._classifier

    @property
    def settings(self) -> Settings:
        """The read-only parameters as read at the last configure."""
        if self._settings is None:
            raise DofaError(f"{self.get_fully_qualified_name()} is not configured")
        return self._settings

    @property
    def active(self) -> bool:
        """True while classifying (state *active*)."""
        return self._frames.running

    def _not_ready(self) -> str:
        """Why a command cannot act now (``""`` when active)."""
        if self._classifier is None:
            return "not configured: ros2 lifecycle set <node> configure, then activate"
        if not self.active:
            return "inactive: ros2 lifecycle set <node> activate"
        return ""

    # ------------------------------------------------------------------------------ shutdown

    def destroy_node(self) -> None:
        """Stop the inference thread, release the model, then destroy the ROS entities."""
        if not self._closed:
            self._closed = True
            self._frames.close()
            self._classifier, self.supernet = None, None
            if self._trace is not None:
                self._trace.write()
        super().destroy_node()

    # ------------------------------------------------------------------------------ counters

    @property
    def dropped(self) -> int:
        """Frames replaced by a newer one before inference (latest-frame policy)."""
        return self._frames.dropped

    @property
    def errors(self) -> int:
        """Frames that could not be classified (bad encoding, size, data)."""
        return self._frames.errors

    @property
    def last_error(self) -> str:
        """Why the last rejected frame was rejected (``""``: none yet)."""
        return self._frames.last_error

    # ------------------------------------------------------------------------------ frames

    def _on_image(self, msg: Image | CompressedImage) -> None:
        marks = self._frames.begin()
        self._input_watch.arrived(time.monotonic())
        self._frames.put(msg, self._now_ns(), marks)

    def _now_ns(self) -> int:
        """The node's ROS clock (ns): the system clock read directly unless simulated time is active.

        rclpy's ``Clock.now()`` builds a Time object (about 15 us); the frame path reads the clock
        three times per frame.
        """
        clock = self.get_clock()
        if isinstance(clock, ROSClock) and not clock.ros_time_is_active:
            return time.time_ns()  # ROS time = system time (CLOCK_REALTIME, as time.time_ns)
        return clock.now().nanoseconds

    def _ros_seconds(self) -> float:
        return self._now_ns() * 1e-9

    def _header(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg())

    def _process(self, frame: Frame) -> None:
        outputs = self._outputs
        if outputs is None:
            return
        settings = self.settings
        rgb = frame_rgb(frame.msg, max_pixels=settings.max_image_pixels)
        frame.mark()  # converted
        now_ns = self._now_ns()
        result = self.classifier.classify(
            rgb, captured_at=captured_at(frame, now_ns=now_ns, max_age_s=settings.max_stamp_age_s)
        )
        frame.mark()  # classified
        prediction = prediction_message(result, frame.msg.header)
        frame.mark()  # built
        outputs.prediction.publish(prediction)
        frame.mark()  # published
        if outputs.classification is not None and self._vision is not None:
            outputs.classification.publish(classification_message(self._vision, result, frame.msg.header))
        self._frames.finish(frame, result.inference_ms)

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
        """The one path for constraints (parameters, service, configure); raises ConstraintError."""
        with self._lock:
            return self.classifier.set_constraints(
                latency_budget_ms=budget_value(budget_ms),  # type: ignore[arg-type]  # the core checks
                min_accuracy=budget_value(min_accuracy),  # type: ignore[arg-type]
            )

    def _on_set_parameters(self, params: list[Parameter[Any]]) -> SetParametersResult:
        values = {p.name: p.value for p in params}
        budget = values.get("latency_budget_ms", self.get_parameter("latency_budget_ms").value)
        accuracy = values.get("min_accuracy", self.get_parameter("min_accuracy").value)
        try:
            with self._lock:
                if self._classifier is None:  # unconfigured: checked now, applied at configure
                    check_constraints(budget, accuracy)
                    if "top_k" in values and not values["top_k"] >= 1:
                        raise ConstraintError(f"top_k={values['top_k']!r} must be an integer >= 1")
                    return SetParametersResult(successful=True)
                if values.keys() & {"latency_budget_ms", "min_accuracy"}:
                    self._apply_constraints(budget, accuracy)
                if "top_k" in values:
                    self._classifier.top_k = values["top_k"]
        except ConstraintError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------ services

    def _srv_set_constraints(
        self, request: SetConstraints.Request, response: SetConstraints.Response
    ) -> SetConstraints.Response:
        budget = float(request.latency_budget_ms)
        accuracy = float(request.min_accuracy)
        if refusal := self._not_ready():
            response.accepted, response.message = False, refusal
            return response
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
        if refusal := self._not_ready():
            response.accepted, response.message = False, refusal
            return response
        return set_level_response(self.classifier, int(request.level), response)

    def _srv_get_levels(self, request: GetLevels.Request, response: GetLevels.Response) -> GetLevels.Response:
        # unconfigured: no table loaded, an empty answer (no levels, level 0, no device)
        return response if self._classifier is None else get_levels_response(self._classifier, response)

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
            dropped=self._frames.dropped,
            errors=self._frames.errors,
            peer_counts=self.classifier.peer_counts(),
        )
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg

    def _publish_status(self) -> None:
        outputs = self._outputs
        if self._closed or outputs is None or self._classifier is None:
            return
        with self._lock:
            outputs.status.publish(self.status_message())
            if outputs.coordination is not None:
                outputs.coordination.publish(self.status_message(coordination=True))

    def _on_status_timer(self) -> None:
        self._publish_status()
        outputs = self._outputs
        if not self._closed and outputs is not None and self._classifier is not None:
            self._check_input()
            outputs.diagnostics.publish(self.diagnostics())

    def _check_input(self) -> None:
        """Update :attr:`input_warning`: frames never arrived, or stopped arriving (input_watch)."""
        topics = self._inputs.image_topics
        publishers = sum(self.count_publishers(topic) for topic in topics)
        state = self._input_watch.check(time.monotonic(), publishers=publishers, topics=", ".join(topics))
        self.input_warning = state.warning
        if state.changed:
            if state.warning:
                self.get_logger().warning(state.warning)
            else:
                self.get_logger().info(f"frames arrive again on {', '.join(topics)}")

    def diagnostics(self) -> DiagnosticArray:
        """The ``/diagnostics`` message: level, window latency vs budget, drops, errors, peers."""
        status = self.status_message()
        peers = self.peer_names()
        entry = diagnostic_status(
            status,
            name=f"{self.get_fully_qualified_name()}: dynamic_ofa",
            warning=self.input_warning,
            extra={
                "frames_received": self._frames.received,
                "last_error": self._frames.last_error,
                "coordination": ("coordinated with " + ", ".join(peers)) if peers else "alone",
                "coordinator_moves": self.coordinator_moves,
            },
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
        classifier = self._classifier
        if classifier is None or msg.coordination_group != self.settings.coordination_group:
            return
        if msg.node_name == self.get_fully_qualified_name():
            return
        try:
            peer = peer_from_message(msg)
        except (DofaError, ValueError) as exc:
            classifier.reject_peer()
            self.get_logger().warning(
                f"ignoring coordination status from {msg.node_name!r}: {exc}",
                throttle_duration_sec=_WARN_PERIOD_S,
            )
            return
        classifier.update_peer(peer)


def _return_memory(device: str) -> None:
    """Give freed model memory back: collect, empty the CUDA cache, trim glibc's heap."""
    gc.collect()
    if device.startswith("cuda") and "torch" in sys.modules:  # never import torch just to clean up
        import torch

        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the allocator keeps its pages
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ------------------------------------------------------------------------------------------ main


def main(args: list[str] | None = None) -> int:
    """Entry point of ``classifier_node`` (:func:`dynamic_ofa_ros.node_main.main`: signals, teardown)."""
    from dynamic_ofa_ros.node_main import main as run_node  # imports this module

    return run_node(args)


if __name__ == "__main__":
    sys.exit(main())
