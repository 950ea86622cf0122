"""A camera stream as a rosbag2: write frames with ``rosbags``, read them back, play them with rclpy."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dynamic_ofa_ros.ros_tools.common import CAMERA_TOPIC

if TYPE_CHECKING:
    from rclpy.node import Node
    from rclpy.publisher import Publisher
    from sensor_msgs.msg import Image

__all__ = ["BagPlayer", "read_image_bag", "write_image_bag"]


def write_image_bag(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    *,
    topic: str = CAMERA_TOPIC,
    fps: float = 30.0,
    frame_id: str = "camera",
    start_ns: int | None = None,
    encoding: str = "rgb8",
) -> int:
    """Write ``frames`` (RGB uint8) as ``sensor_msgs/msg/Image`` at ``fps`` into a new rosbag2 (sqlite3).

    Header stamps and bag timestamps advance by 1/fps from ``start_ns`` (default: now). The bag
    folder must not exist yet.

    Args:
        path: the bag folder to create.
        frames: RGB uint8 images (H, W, 3).
        topic: the topic the messages are recorded on.
        fps: recorded frame rate.
        frame_id: header frame id of every message.
        start_ns: stamp of the first message (ns); default: now.
        encoding: ``rgb8`` or ``bgr8`` (channels reversed).

    Returns:
        The number of messages written.
    """
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"write_image_bag: encoding {encoding!r} not supported (rgb8, bgr8)")
    store = get_typestore(Stores.ROS2_KILTED)
    image_t = store.types["sensor_msgs/msg/Image"]
    header_t = store.types["std_msgs/msg/Header"]
    time_t = store.types["builtin_interfaces/msg/Time"]
    start = time.time_ns() if start_ns is None else int(start_ns)
    period = round(1e9 / fps)
    count = 0
    with Writer(Path(path), version=9) as writer:
        conn = writer.add_connection(topic, image_t.__msgtype__, typestore=store)
        for i, rgb in enumerate(frames):
            stamp = start + i * period
            pixels = np.ascontiguousarray(rgb[:, :, ::-1] if encoding == "bgr8" else rgb)
            h, w, _ = pixels.shape
            msg = image_t(
                header=header_t(
                    stamp=time_t(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), frame_id=frame_id
                ),
                height=h,
                width=w,
                encoding=encoding,
                is_bigendian=0,
                step=w * 3,
                data=pixels.reshape(-1),
            )
            writer.write(conn, stamp, bytes(store.serialize_cdr(msg, image_t.__msgtype__)))
            count += 1
    return count


def read_image_bag(path: str | os.PathLike[str], topic: str = CAMERA_TOPIC) -> list[tuple[int, bytes]]:
    """``(bag timestamp ns, serialized CDR message)`` of every message on ``topic``, in order."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            topics = ", ".join(sorted({c.topic for c in reader.connections})) or "none"
            raise RuntimeError(f"{path}: no topic {topic} (the bag has: {topics})")
        return [(int(ts), bytes(raw)) for _, ts, raw in reader.messages(connections=conns)]


class BagPlayer(threading.Thread):
    """Plays a bag's image messages through an rclpy publisher with the recorded timing.

    Like ``ros2 bag play``: messages are deserialized with rclpy from the bag's CDR bytes and
    published at their recorded relative times (scaled by ``rate``); ``loop`` repeats the bag;
    ``restamp`` sets each header stamp to the publisher's clock *now* (a live camera), otherwise
    the recorded stamps are kept. ``published`` lists ``(stamp ns, index in bag)``.

    Args:
        node: the node whose clock restamps the messages.
        publisher: a ``sensor_msgs/Image`` publisher of ``node``.
        messages: ``(bag timestamp ns, CDR bytes)`` as :func:`read_image_bag` returns them.
        rate: playback speed factor.
        loop: repeat the bag until :meth:`stop`.
        restamp: header stamps = now (a live camera) instead of the recorded ones.
    """

    def __init__(
        self,
        node: Node,
        publisher: Publisher[Image],
        messages: Sequence[tuple[int, bytes]],
        *,
        rate: float = 1.0,
        loop: bool = False,
        restamp: bool = False,
    ) -> None:
        super().__init__(daemon=True, name="bag-player")
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image

        if not messages:
            raise ValueError("BagPlayer: no messages to play")
        self._node = node
        self._pub = publisher
        self._times = [ts for ts, _ in messages]
        self._msgs = [deserialize_message(raw, Image) for _, raw in messages]
        self._rate = float(rate)
        self._loop = loop
        self._restamp = restamp
        self._halt = threading.Event()
        self.published: list[tuple[int, int]] = []

    def stop(self) -> None:
        """Stop after the current message."""
        self._halt.set()

    def run(self) -> None:
        """Publish the messages on schedule (the thread's body)."""
        t0 = self._times[0]
        span = (self._times[-1] - t0) + (self._times[-1] - self._times[-2] if len(self._times) > 1 else 0)
        start = time.perf_counter()
        lap = 0
        while not self._halt.is_set():
            for index, (ts, msg) in enumerate(zip(self._times, self._msgs, strict=True)):
                due = start + ((ts - t0) + lap * span) / 1e9 / self._rate
                delay = due - time.perf_counter()
                if delay > 0 and self._halt.wait(delay):
                    return
                if self._restamp:
                    now = self._node.get_clock().now().nanoseconds
                    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                self._pub.publish(msg)
                self.published.append((stamp, index))
            if not self._loop:
                return
            lap += 1
