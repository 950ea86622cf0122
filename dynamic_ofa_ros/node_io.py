"""The classifier node's topics: publishers made at configure, subscriptions made at activate.

QoS: the image subscriptions default to :func:`~dynamic_ofa_ros.node_parameters.image_qos`
(REP-2003 sensor data, keep last 1); they and the output publishers take rclpy's standard
``qos_overrides.<topic>.<publisher|subscription>.<policy>`` parameters. The coordination topic
is not overridable (every member of a group must match) and ``~/label_info`` is always
transient-local (late subscribers get the label map).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import CompressedImage, Image

from dynamic_ofa_ros.input_watch import InputWatch
from dynamic_ofa_ros.msg import ManagerStatus, Prediction
from dynamic_ofa_ros.node_parameters import image_qos, qos_overriding_options
from dynamic_ofa_ros.paths import config_file

__all__ = [
    "COORDINATION_TOPIC",
    "Inputs",
    "Outputs",
    "compressed_topic",
    "create_outputs",
    "input_watch",
    "subscribe",
]

#: Topic on which the nodes of a coordination group exchange their ManagerStatus.
COORDINATION_TOPIC = "/dynamic_ofa/coordination"
#: ~/label_info is published once per activation and kept for late subscribers.
LATCHED_QOS = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class Outputs:
    """The publishers of one configuration (lifecycle publishers: silent while inactive).

    ``classification`` and ``label_info`` are ``None`` without ``vision_msgs``;
    ``coordination`` is ``None`` without a coordination group.
    """

    prediction: Any  # rclpy's LifecyclePublisher[...] of the message named by the field
    status: Any
    diagnostics: Any
    classification: Any = None
    label_info: Any = None
    coordination: Any = None

    def destroy(self, node: LifecycleNode) -> None:
        """Destroy every publisher."""
        for publisher in vars(self).values():
            if publisher is not None:
                node.destroy_lifecycle_publisher(publisher)


def create_outputs(node: LifecycleNode, *, vision: types.ModuleType | None, coordinated: bool) -> Outputs:
    """The node's publishers (``vision``: ``vision_msgs.msg`` when installed)."""

    def publisher(msg_type: Any, topic: str) -> Any:  # noqa: ANN401 - a message class / its publisher
        return node.create_lifecycle_publisher(
            msg_type, topic, 10, qos_overriding_options=qos_overriding_options()
        )

    outputs = Outputs(
        prediction=publisher(Prediction, "~/prediction"),
        status=publisher(ManagerStatus, "~/status"),
        diagnostics=publisher(DiagnosticArray, "/diagnostics"),
    )
    if vision is not None:
        outputs.classification = publisher(vision.Classification, "~/classification")
        outputs.label_info = node.create_lifecycle_publisher(vision.LabelInfo, "~/label_info", LATCHED_QOS)
    if coordinated:
        outputs.coordination = node.create_lifecycle_publisher(ManagerStatus, COORDINATION_TOPIC, 10)
    return outputs


@dataclass
class Inputs:
    """The subscriptions of one activation and the resolved image topics."""

    subscriptions: list[Any] = field(default_factory=list)
    image_topics: list[str] = field(default_factory=list)

    def destroy(self, node: LifecycleNode) -> None:
        """Destroy every subscription (no frame is delivered any more)."""
        subscriptions, self.subscriptions = self.subscriptions, []
        for subscription in subscriptions:
            node.destroy_subscription(subscription)


def compressed_topic(node: LifecycleNode) -> str:
    """``<resolved image topic>/compressed``, unless ``image/compressed`` itself is remapped."""
    remapped = node.resolve_topic_name("image/compressed")
    if remapped != node.resolve_topic_name("image/compressed", only_expand=True):
        return remapped
    return node.resolve_topic_name("image").rstrip("/") + "/compressed"


def subscribe(
    node: LifecycleNode,
    *,
    on_image: Callable[[Image | CompressedImage], None],
    use_compressed: bool,
    on_peer: Callable[[ManagerStatus], None] | None,
) -> Inputs:
    """Subscribe ``image`` (and ``<image>/compressed``) and, with ``on_peer``, the coordination topic.

    Raises what rclpy raises for an invalid ``qos_overrides`` value (the caller refuses the
    transition with it); nothing stays subscribed then.
    """
    inputs = Inputs()
    topics: list[tuple[Any, str]] = [(Image, "image")]
    if use_compressed:
        topics.append((CompressedImage, compressed_topic(node)))
    try:
        for msg_type, topic in topics:
            subscription = node.create_subscription(
                msg_type, topic, on_image, image_qos(), qos_overriding_options=qos_overriding_options()
            )
            inputs.subscriptions.append(subscription)
            inputs.image_topics.append(subscription.topic_name)
        if on_peer is not None:
            inputs.subscriptions.append(
                node.create_subscription(ManagerStatus, COORDINATION_TOPIC, on_peer, 10)
            )
    except Exception:
        inputs.destroy(node)
        raise
    return inputs


def input_watch(image_topics: list[str], timeout_s: float) -> InputWatch:
    """A fresh :class:`InputWatch` for the image topics, with the fixes for frames that never arrive."""
    return InputWatch(
        timeout_s=timeout_s,
        hint=(
            "if they publish frames over 512 KiB (640x480 rgb8 and up) with Fast DDS's default "
            "transports, start the publisher with FASTDDS_DEFAULT_PROFILES_FILE="
            f"{config_file('fastdds_large_frames.xml')} or start this node with "
            f"-p qos_overrides.{image_topics[0]}.subscription.reliability:=reliable"
        ),
    )
