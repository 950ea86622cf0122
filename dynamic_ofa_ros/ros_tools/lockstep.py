"""One frame at a time through a running classifier node: publish, wait for its prediction, repeat."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dynamic_ofa_ros.ros_tools.common import CAMERA_TOPIC, ToolNode

if TYPE_CHECKING:
    from rclpy.context import Context
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import Prediction

__all__ = ["Answer", "LockStepPlayer"]


@dataclass(frozen=True)
class Answer:
    """The node's prediction of one frame, as the player received it."""

    class_id: int
    level: int
    #: the node's end-to-end latency (header stamp -> prediction ready) and its inference time
    latency_ms: float
    inference_ms: float
    #: publish -> prediction received by the player (both transports included)
    roundtrip_ms: float


class LockStepPlayer(ToolNode):
    """Publishes one frame at a time to a classifier node and waits for its prediction of it.

    The next frame is sent only when the prediction of the previous one has arrived, so the
    node's latest-frame policy drops nothing and nothing queues: every frame measures the node's
    own path (transport, conversion, inference, publishing). Frames are matched to predictions
    by header stamp, so stamps must be unique.

    Args:
        context: the rclpy context (initialised by the caller).
        classifier: the classifier node's name (its topics and services live under ``/<name>/``).
        topic: the camera topic the classifier listens on.
        node_name: this player's node name (two players in one process need two names).
    """

    def __init__(
        self,
        context: Context,
        *,
        classifier: str,
        topic: str = CAMERA_TOPIC,
        node_name: str = "dofa_lockstep_player",
    ) -> None:
        from sensor_msgs.msg import Image

        from dynamic_ofa_ros.msg import Prediction

        self.classifier = classifier
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.answers: dict[int, Answer] = {}
        self._sent: dict[int, float] = {}
        super().__init__(node_name, context)
        self.publisher = self.node.create_publisher(Image, topic, 10)
        self.node.create_subscription(Prediction, f"/{classifier}/prediction", self._on_prediction, 50)

    def _on_prediction(self, msg: Prediction) -> None:
        received = time.perf_counter()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.arrived:
            sent = self._sent.pop(stamp, received)
            self.answers[stamp] = Answer(
                class_id=int(msg.class_id),
                level=int(msg.level),
                latency_ms=float(msg.latency_ms),
                inference_ms=float(msg.inference_ms),
                roundtrip_ms=(received - sent) * 1000.0,
            )
            self.arrived.notify_all()

    def classify(self, msg: Image, stamp: int, timeout: float) -> Answer | None:
        """Publish ``msg`` (whose header stamp is ``stamp``, re-sent once if lost); its prediction.

        Returns:
            The prediction of ``msg``, or ``None`` when none arrived within ``timeout`` seconds.
        """
        for _attempt in range(2):
            with self.arrived:
                self._sent[stamp] = time.perf_counter()
            self.publisher.publish(msg)
            deadline = time.monotonic() + timeout / 2
            with self.arrived:
                while stamp not in self.answers:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.arrived.wait(left)
                if stamp in self.answers:
                    return self.answers.pop(stamp)
        with self.arrived:
            self._sent.pop(stamp, None)
        return None

    def set_level(self, level: int, timeout: float = 30.0) -> None:
        """Lock the classifier at ``level`` with its ``~/set_level`` service (0 = automatic).

        Raises:
            RuntimeError: the service is missing, silent or rejects the level.
        """
        self.lock_level(self.classifier, level, timeout)
