"""Conversions between the core's values and the node's ROS messages (no node state).

Kept apart from :mod:`dynamic_ofa_ros.node` so the node itself is only wiring: parameters,
topics, services, threads and the lifecycle.

The standard ``vision_msgs`` output is optional: ``vision_msgs`` is not on PyPI, so
:func:`load_vision_msgs` imports it lazily and returns ``None`` where it is not installed.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from dynamic_ofa_ros import labels
from dynamic_ofa_ros.classifier import Classification, DynamicClassifier
from dynamic_ofa_ros.coordinator import PeerStatus
from dynamic_ofa_ros.errors import UnknownLevelError
from dynamic_ofa_ros.levels import LevelTable
from dynamic_ofa_ros.manager import LevelSpec, ManagerState
from dynamic_ofa_ros.msg import LevelInfo, ManagerStatus, Prediction
from dynamic_ofa_ros.srv import GetLevels, SetLevel

__all__ = [
    "classification_message",
    "diagnostic_status",
    "diagnostic_summary",
    "get_levels_response",
    "label_info_message",
    "level_infos",
    "load_vision_msgs",
    "peer_from_message",
    "prediction_message",
    "set_level_response",
    "status_message",
]

_UINT32_MAX = 2**32 - 1


def _u32(value: int) -> int:
    return min(int(value), _UINT32_MAX)


def status_message(
    state: ManagerState,
    own: PeerStatus,
    *,
    coordination: bool,
    device: str,
    dropped: int,
    errors: int,
    peer_counts: tuple[int, int] = (0, 0),
) -> ManagerStatus:
    """A ManagerStatus (header stamp left to the caller) from the manager's state and own status.

    On ``~/status`` the window fields cover the last ``window_size`` frames. On the coordination
    topic (``coordination=True``) they are those of the manager's last complete window *at the
    current level* (0 = not measured yet), as the coordinator expects.
    """
    msg = ManagerStatus()
    msg.node_name = own.name
    msg.coordination_group = own.group
    msg.level = int(state.level)
    msg.n_levels = int(state.n_levels)
    msg.mode = state.mode
    msg.budget_ms = float(state.budget_ms or 0.0)  # the message's 0 = no budget
    msg.min_accuracy = float(state.min_accuracy)
    msg.expected_accuracy = float(state.expected_accuracy)
    msg.unmet = state.unmet
    msg.priority = own.priority
    msg.locked = own.locked
    msg.previous_level = own.previous_level
    msg.level_since = own.since
    if coordination:
        msg.window_mean_ms = float(own.window_mean_ms)
        last = state.last_window
        msg.window_p95_ms = float(last.p95_ms) if own.window_mean_ms and last is not None else 0.0
        msg.window_start = own.window_start
        msg.window_end = own.window_end
    else:
        msg.window_mean_ms = float(state.window_mean_ms)
        msg.window_p95_ms = float(state.window_p95_ms)
    msg.frames = _u32(state.frames)
    msg.violations = _u32(state.violations)
    msg.switches = _u32(state.switches)
    msg.dropped = _u32(dropped)
    msg.errors = _u32(errors)
    msg.peers_ignored, msg.peers_rejected = (_u32(count) for count in peer_counts)
    msg.device = str(device)
    msg.level_latency_ms = [float(spec.latency_ms) for spec in own.levels]
    msg.level_accuracy = [float(spec.accuracy) for spec in own.levels]
    return msg


def level_infos(table: LevelTable, levels: Sequence[LevelSpec]) -> list[LevelInfo]:
    """One ``LevelInfo`` per level: architecture and latency from the table, accuracy as managed."""
    infos = []
    for level, spec in zip(table.levels, levels, strict=True):
        cfg = level.config
        info = LevelInfo()
        info.level = int(level.level)
        info.resolution = int(cfg.resolution)
        info.ks = [int(v) for v in cfg.ks]
        info.e = [int(v) for v in cfg.e]
        info.d = [int(v) for v in cfg.d]
        info.latency_ms = float(level.latency_ms)
        info.accuracy = float(spec.accuracy)
        info.macs_m = float(level.macs_m or 0.0)
        infos.append(info)
    return infos


def get_levels_response(classifier: DynamicClassifier, response: GetLevels.Response) -> GetLevels.Response:
    """``~/get_levels``: the level table, the current level and the table's device."""
    response.levels = level_infos(classifier.table, classifier.levels)
    response.current_level = int(classifier.current_level)
    response.device = classifier.table.device
    return response


def set_level_response(
    classifier: DynamicClassifier, level: int, response: SetLevel.Response
) -> SetLevel.Response:
    """``~/set_level``: lock ``level`` (0 = automatic again); out of range is refused with the range."""
    try:
        decision = classifier.set_level(level)
    except UnknownLevelError as exc:
        response.accepted = False
        response.message = str(exc)
        response.level = int(classifier.current_level)
        return response
    response.accepted = True
    response.level = int(decision.level)
    response.message = (
        f"level {decision.level} locked (manual)"
        if level
        else f"automatic ({decision.mode}), level {decision.level}"
    )
    return response


def diagnostic_summary(status: ManagerStatus) -> tuple[bytes, str]:
    """Level and message of the diagnostics entry from the latency window against the budget."""
    budget = status.budget_ms
    where = f"level {status.level}/{status.n_levels}: window mean {status.window_mean_ms:.1f} ms"
    if budget <= 0.0:
        return DiagnosticStatus.OK, f"level {status.level}/{status.n_levels}: no latency budget"
    if not (status.frames and status.window_mean_ms > budget):
        return DiagnosticStatus.OK, f"{where} within budget {budget:g} ms"
    if status.level == 1:
        return DiagnosticStatus.WARN, (
            f"budget violated at level 1: window mean {status.window_mean_ms:.1f} ms > budget "
            f"{budget:g} ms; no faster level exists"
        )
    return DiagnosticStatus.OK, f"{where} > budget {budget:g} ms, stepping down"


def peer_from_message(msg: ManagerStatus) -> PeerStatus:
    """A peer's ManagerStatus as the core's PeerStatus (validated by PeerStatus itself)."""
    return PeerStatus(
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


def diagnostic_status(
    status: ManagerStatus, *, name: str, warning: str, extra: Mapping[str, object]
) -> DiagnosticStatus:
    """The node's ``DiagnosticStatus``: level and message from the window (or ``warning``), values.

    ``extra``: node-side values (frames received, last error, peers ...) after the status fields.
    """
    level, message = diagnostic_summary(status)
    if warning:
        level, message = DiagnosticStatus.WARN, warning
    values: dict[str, object] = {
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
        "dropped": status.dropped,
        "errors": status.errors,
        "device": status.device,
        "coordination_group": status.coordination_group,
        "peers_ignored": status.peers_ignored,
        "peers_rejected": status.peers_rejected,
        **extra,
    }
    return DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id=str(status.device),
        values=[KeyValue(key=key, value=str(value)) for key, value in values.items()],
    )


def prediction_message(result: Classification, header: Header) -> Prediction:
    """Our own ``Prediction`` of one classified frame (header copied from the image)."""
    msg = Prediction()
    msg.header = header
    msg.class_id = result.top[0][0]
    msg.label = labels.label(result.top[0][0])
    msg.score = result.top[0][1]
    msg.top_ids = [index for index, _ in result.top]
    msg.top_scores = [score for _, score in result.top]
    msg.level = result.level
    msg.inference_ms = result.inference_ms
    msg.expected_accuracy = result.expected_accuracy
    msg.latency_ms = result.latency_ms
    return msg


def load_vision_msgs() -> types.ModuleType | None:
    """``vision_msgs.msg`` when it is installed (a system ROS 2, or the side workspace), else None."""
    try:
        import vision_msgs.msg
    except ImportError:
        return None
    return vision_msgs.msg


def classification_message(vision: types.ModuleType, result: Classification, header: Header) -> Any:  # noqa: ANN401 - vision_msgs/Classification, typed only where it is installed
    """``vision_msgs/Classification``: the top-k as ``ObjectHypothesis`` (class index as string, score)."""
    msg = vision.Classification()
    msg.header = header
    msg.results = [
        vision.ObjectHypothesis(class_id=str(index), score=float(score)) for index, score in result.top
    ]
    return msg


def label_info_message(vision: types.ModuleType, header: Header) -> Any:  # noqa: ANN401 - vision_msgs/LabelInfo
    """``vision_msgs/LabelInfo``: the 1000 ImageNet class names by class index, threshold 0."""
    msg = vision.LabelInfo()
    msg.header = header
    msg.class_map = [
        vision.VisionClass(class_id=index, class_name=name)
        for index, name in enumerate(labels.imagenet_labels())
    ]
    msg.threshold = 0.0
    return msg
