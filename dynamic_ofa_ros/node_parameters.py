"""The classifier node's ROS parameters: declarations, descriptions and their translation.

QoS is not among them: the image subscriptions and the publishers take rclpy's standard
``qos_overrides.<topic>.<publisher|subscription>.<policy>`` parameters
(:func:`qos_overriding_options`); :func:`image_qos` is the image subscriptions' default.

Only what ROS itself needs lives here (names, defaults, descriptions, types). Every rule about
a value -- budget ranges, the margin ordering, window sizes -- is checked once, by the core
(:class:`~dynamic_ofa_ros.manager.ManagerConfig`, :class:`~dynamic_ofa_ros.manager.RuntimeManager`,
:class:`~dynamic_ofa_ros.classifier.ClassifierConfig`); the node turns their errors into a
refused parameter or one FATAL start-up line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions

from dynamic_ofa_ros.backends import BACKENDS
from dynamic_ofa_ros.classifier import ClassifierConfig
from dynamic_ofa_ros.engine import PREPROCESSING
from dynamic_ofa_ros.manager import LevelSpec, ManagerConfig, RuntimeManager
from dynamic_ofa_ros.paths import resolve_device

__all__ = [
    "PARAMETERS",
    "ParamSpec",
    "Settings",
    "SettingsError",
    "budget_value",
    "check_constraints",
    "descriptor",
    "dropped_overrides",
    "image_qos",
    "qos_overriding_options",
    "settings_from",
]

_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: name, default, what it means, whether it can change at runtime."""

    name: str
    default: Any  # a ROS parameter value: bool, int, float or str
    description: str
    read_only: bool = True
    dynamic_typing: bool = False


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "autostart",
        True,
        "configure and activate at start (classify at once); false: wait unconfigured for a "
        "lifecycle manager or `ros2 lifecycle set`",
    ),
    ParamSpec("device", "auto", "inference device: cpu | cuda | auto (cuda when available)"),
    ParamSpec(
        "model",
        "embedded",
        "super-network: embedded (shipped default) | ofa_zoo (OFA ImageNet weights) | "
        "random (random weights, meaningless accuracy) | path to a .safetensors/.pth checkpoint",
    ),
    ParamSpec("level_table", "", "level table JSON; empty = config/levels/<device>.json of this package"),
    ParamSpec(
        "check_table_device",
        True,
        "refuse a level_table profiled on another device kind; false accepts one (e.g. to check the "
        "cuda table's accuracy on a CPU): its latencies then say nothing about this device, so mode "
        "auto runs reactive and mode lut is refused",
    ),
    ParamSpec(
        "latency_budget_ms",
        0.0,
        "end-to-end latency budget per frame in ms, (0, 60000] (0 = none); settable at runtime like "
        "~/set_constraints",
        read_only=False,
        dynamic_typing=True,
    ),
    ParamSpec(
        "min_accuracy",
        0.0,
        "accuracy floor, top-1 percent [0, 100] like the level table (0 = none); settable at runtime",
        read_only=False,
        dynamic_typing=True,
    ),
    ParamSpec("mode", "auto", "manager mode: auto | lut (profiled latencies only) | reactive (measured)"),
    ParamSpec("priority", "latency", "which constraint wins when no level meets both: latency | accuracy"),
    ParamSpec("window_size", 10, "frames per measurement window of the manager, 1..100000"),
    ParamSpec(
        "up_margin",
        0.85,
        "hysteresis: step up only when the next level is predicted within up_margin x budget "
        "(0 < up_margin <= down_margin <= 1)",
    ),
    ParamSpec("up_windows", 2, "hysteresis: ... for this many consecutive windows (>= 1)"),
    ParamSpec(
        "down_margin", 0.95, "on a violation, go to the best level predicted within down_margin x budget"
    ),
    ParamSpec("threads", 0, "CPU threads for inference (0 = as the level table was profiled)"),
    ParamSpec(
        "backend",
        "auto",
        "execution backend on the CPU: auto (the one the level table was profiled in) | openvino | "
        "onnxruntime | torch; another backend than the table's is refused",
    ),
    ParamSpec(
        "preprocessing",
        "auto",
        "CPU frame -> model input for compiled levels: auto (torch's uint8 kernel when torch is "
        "loaded, else NumPy) | numpy | torch; the same bytes: torch is faster on large frames but "
        "loads PyTorch (more memory)",
    ),
    ParamSpec("top_k", 5, "number of classes in top_ids/top_scores (>= 1)", read_only=False),
    ParamSpec("use_compressed", False, "also subscribe <image>/compressed (sensor_msgs/CompressedImage)"),
    ParamSpec("coordination_group", "", "nodes with the same non-empty group share a device and coordinate"),
    ParamSpec(
        "coordination_timeout_s",
        2.0,
        "a peer not heard from for this long is forgotten (then the node acts alone)",
    ),
    ParamSpec(
        "coordination_max_peers",
        16,
        "at most this many coordination peers are remembered and planned with; statuses of further "
        "new peers are ignored and counted (peers_ignored), so a flood of invented names costs nothing",
    ),
    ParamSpec("status_rate", 2.0, "rate (Hz) of ~/status, /diagnostics and coordination messages, 0.1..100"),
    ParamSpec(
        "max_stamp_age_s",
        10.0,
        "a header stamp older than this (or in the future) is not trusted; latency is then measured "
        "from the frame's arrival",
    ),
    ParamSpec(
        "max_image_pixels", 40_000_000, "larger frames are rejected (counted as errors) before conversion"
    ),
    ParamSpec(
        "input_timeout_s",
        0.0,
        "after frames have arrived, no frame for this long = stale input, WARN in /diagnostics "
        "(0 = automatic: 10 frame intervals of the observed rate, 1..30 s)",
    ),
)


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ROS descriptor of ``spec`` (shown by ``ros2 param describe``)."""
    result = ParameterDescriptor(
        name=spec.name,
        description=spec.description,
        read_only=spec.read_only,
        dynamic_typing=spec.dynamic_typing,
    )
    if not spec.dynamic_typing:
        result.type = Parameter.Type.from_parameter_value(spec.default).value
    return result


def budget_value(value: object) -> object:
    """A ROS budget/accuracy value for the core: ROS has no "unset", so 0 means ``None``.

    Anything else is passed on unchanged for the core to validate (and refuse with a reason).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return None
    return value


@dataclass(frozen=True)
class Settings:
    """The node's read-only parameters, as the ROS side needs them."""

    device: str
    model: str
    level_table: str
    check_table_device: bool
    threads: int
    use_compressed: bool
    coordination_group: str
    coordination_timeout_s: float
    coordination_max_peers: int
    status_rate: float
    max_stamp_age_s: float
    max_image_pixels: int
    top_k: int
    input_timeout_s: float
    manager: ManagerConfig
    backend: str = "auto"
    preprocessing: str = "auto"

    def classifier_config(self) -> ClassifierConfig:
        """The core's configuration for these settings."""
        return ClassifierConfig(
            device=self.device,
            threads=self.threads or None,
            backend=self.backend,
            preprocessing=self.preprocessing,
            max_image_pixels=self.max_image_pixels,
            check_table_device=self.check_table_device,
            manager=self.manager,
            coordination_group=self.coordination_group,
            coordination_timeout_s=self.coordination_timeout_s,
            coordination_max_peers=self.coordination_max_peers,
            top_k=self.top_k,
        )


class SettingsError(ValueError):
    """A read-only parameter has a value the node cannot start with."""


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise SettingsError(f"parameter {name}={value!r} is not one of {', '.join(choices)}")
    return text


def _within(name: str, value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise SettingsError(f"parameter {name}={value!r} must be in [{low:g}, {high:g}]")
    return value


def settings_from(values: dict[str, Any]) -> Settings:
    """Settings from the declared parameters' values (``{name: value}``).

    Raises:
        SettingsError: a ROS-side value (device, rates, limits) is unusable.
        ConstraintError: the manager's settings are (validated by :class:`ManagerConfig`).
    """
    manager = ManagerConfig(
        window_size=values["window_size"],
        mode=str(values["mode"]).strip().lower(),
        priority=str(values["priority"]).strip().lower(),
        up_margin=values["up_margin"],
        up_windows=values["up_windows"],
        down_margin=values["down_margin"],
    )
    return Settings(
        device=resolve_device(_choice("device", values["device"], _DEVICES)),
        model=str(values["model"]).strip() or "embedded",
        level_table=str(values["level_table"]).strip(),
        check_table_device=bool(values["check_table_device"]),
        threads=int(_within("threads", values["threads"], 0, 1024)),
        use_compressed=bool(values["use_compressed"]),
        coordination_group=str(values["coordination_group"]).strip(),
        coordination_timeout_s=float(values["coordination_timeout_s"]),
        coordination_max_peers=int(values["coordination_max_peers"]),
        status_rate=_within("status_rate", float(values["status_rate"]), 0.1, 100.0),
        max_stamp_age_s=_within("max_stamp_age_s", float(values["max_stamp_age_s"]), 0.0, 86_400.0),
        max_image_pixels=int(_within("max_image_pixels", values["max_image_pixels"], 1, 10**10)),
        top_k=int(values["top_k"]),
        input_timeout_s=_within("input_timeout_s", float(values["input_timeout_s"]), 0.0, 86_400.0),
        manager=manager,
        backend=_choice("backend", values["backend"], ("auto", *BACKENDS)),
        preprocessing=_choice("preprocessing", values["preprocessing"], PREPROCESSING),
    )


def check_constraints(budget_ms: object, min_accuracy: object) -> None:
    """Check a budget / accuracy floor (ROS values, 0 = none) by the core's rules, with no model loaded.

    While the node is unconfigured there is no manager to hand them to; they are applied at
    configure, and refused now (:class:`~dynamic_ofa_ros.errors.ConstraintError`) if the manager
    would refuse them then.
    """
    probe = RuntimeManager((LevelSpec(level=1, latency_ms=1.0, accuracy=0.0),))
    probe.set_constraints(
        latency_budget_ms=budget_value(budget_ms),  # type: ignore[arg-type]  # the core checks
        min_accuracy=budget_value(min_accuracy),  # type: ignore[arg-type]
    )


def _check_qos(qos: QoSProfile) -> SetParametersResult:
    """Refuse a keep-last depth of 0 (no history) or an absurd one from ``qos_overrides``."""
    if qos.history == HistoryPolicy.KEEP_LAST and not 1 <= qos.depth <= 1000:
        return SetParametersResult(successful=False, reason=f"depth {qos.depth} must be in 1..1000")
    return SetParametersResult(successful=True)


def image_qos() -> QoSProfile:
    """REP-2003 sensor-data QoS for camera input, a fresh profile (``qos_overrides`` modify it).

    Best effort (it matches reliable publishers too) and keep last 1: an old frame is worthless
    to a latency-bounded classifier.
    """
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


def qos_overriding_options() -> QoSOverridingOptions:
    """The standard rclpy QoS parameters of one topic: history, depth, reliability (read-only).

    ``qos_overrides.<resolved topic>.<publisher|subscription>.<policy>``, given at start like any
    parameter (``-p`` or a params file) and validated when the entity is created.
    """
    return QoSOverridingOptions.with_default_policies(callback=_check_qos)


def _command_line_overrides(argv: list[str], node_name: str) -> list[tuple[str, str]]:
    """``(name, text)`` of every ``-p``/``--param`` inside ``--ros-args`` meant for this node."""
    found: list[tuple[str, str]] = []
    in_ros_args = False
    items = iter(argv)
    for item in items:
        if item == "--ros-args":
            in_ros_args = True
        elif item == "--":
            in_ros_args = False
        elif in_ros_args and item in ("-p", "--param"):
            assignment = next(items, "")
            name, sep, text = assignment.partition(":=")
            if not sep:
                continue
            target, _, short = name.rpartition(":")
            if target and target.lstrip("/").split("/")[-1] != node_name:
                continue  # another node's parameter
            found.append((short, text))
    return found


def _yaml_scalar(text: str) -> object:
    """The value rcl makes of ``text`` (a YAML scalar)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def dropped_overrides(argv: list[str], node_name: str, effective: dict[str, Any]) -> list[str]:
    """Warnings for ``-p name:=value`` overrides that rcl silently dropped.

    With ``--params-file``, rcl drops a ``-p`` whose type differs from the file's value for the
    same parameter, and the node starts with the file's value and no message (issue 15). This
    compares each override of a declared parameter with the value in force.
    """
    warnings = []
    for name, text in _command_line_overrides(argv, node_name):
        if name not in effective:
            continue
        wanted, actual = _yaml_scalar(text), effective[name]
        same = wanted == actual and type(wanted) is type(actual)
        if isinstance(actual, float) and isinstance(wanted, int) and not isinstance(wanted, bool):
            same = float(wanted) == actual
        if not same:
            warnings.append(
                f"command-line override -p {name}:={text} was not applied: {name} is {actual!r} "
                f"({type(actual).__name__}). rcl drops an override whose type differs from the params "
                f"file's value; give a {type(actual).__name__} (e.g. {actual!r}) or fix the params file"
            )
    return warnings
