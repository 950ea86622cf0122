"""The classifier node's frame path: latest-frame hand-over, inference thread, frame errors.

Subscriptions only :meth:`FramePipeline.put` the newest frame into a single-slot
:class:`~dynamic_ofa_ros.latest.LatestSlot` (replacing an unprocessed one counts as *dropped*,
so no backlog can build up); one worker thread takes it and calls the node's ``process``.
The thread runs only while the node is active (:meth:`FramePipeline.start` /
:meth:`FramePipeline.stop`), so an inactive node uses no CPU for frames.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rclpy.impl.rcutils_logger import RcutilsLogger
from sensor_msgs.msg import CompressedImage, Image

from dynamic_ofa_ros.errors import DofaError, ImageError
from dynamic_ofa_ros.image_input import decode_compressed, image_from_buffer
from dynamic_ofa_ros.latest import LatestSlot

__all__ = ["Frame", "FramePipeline", "captured_at", "frame_rgb"]

_WARN_PERIOD_S = 5.0


@dataclass(frozen=True)
class Frame:
    """A received image message and when it arrived (ROS clock, nanoseconds)."""

    msg: Image | CompressedImage
    received_ns: int


def frame_rgb(msg: Image | CompressedImage, *, max_pixels: int) -> np.ndarray:
    """The (H, W, 3) uint8 RGB array of an image message; :class:`ImageError` when unusable."""
    if isinstance(msg, CompressedImage):
        return decode_compressed(memoryview(msg.data), fmt=msg.format, max_pixels=max_pixels)
    return image_from_buffer(
        memoryview(msg.data),
        width=msg.width,
        height=msg.height,
        step=msg.step,
        encoding=msg.encoding,
        is_bigendian=msg.is_bigendian,
        max_pixels=max_pixels,
    )


def captured_at(frame: Frame, *, now_ns: int, max_age_s: float) -> float:
    """When the frame was captured (ROS clock, s): its header stamp when plausible, else arrival.

    Plausible: set (non-zero), not in the future and at most ``max_age_s`` old on the node's clock.
    """
    stamp = frame.msg.header.stamp
    stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    if stamp_ns > 0 and 0 <= now_ns - stamp_ns <= max_age_s * 1e9:
        return stamp_ns * 1e-9
    return frame.received_ns * 1e-9


class FramePipeline:
    """The newest frame and the thread that processes it; counts dropped and rejected frames.

    Args:
        name: the worker thread's name.
        logger: where rejected frames are reported (throttled: every 5 s at most).
        still_running: false once the process shuts down (a frame failing then is no error).
    """

    def __init__(self, name: str, logger: RcutilsLogger, still_running: Callable[[], bool]) -> None:
        self._name = name
        self._logger = logger
        self._still_running = still_running
        self._slot: LatestSlot[Frame] = LatestSlot()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self.errors = 0
        self.last_error = ""

    @property
    def running(self) -> bool:
        """True while the worker thread runs."""
        return self._worker is not None and self._worker.is_alive()

    @property
    def dropped(self) -> int:
        """Frames replaced by a newer one before inference (latest-frame policy)."""
        return self._slot.dropped

    @property
    def received(self) -> int:
        """Frames handed over by the subscriptions."""
        return self._slot.received

    def put(self, frame: Frame) -> None:
        """Hand over a frame (replaces an unprocessed one)."""
        self._slot.put(frame)

    def start(self, process: Callable[[Frame], None]) -> None:
        """Start the worker thread calling ``process`` on each newest frame."""
        self.stop()
        self._slot.take(timeout=0.0)  # a frame left from before is stale
        self._stop = threading.Event()
        self._worker = threading.Thread(
            target=self._work, args=(process, self._stop), name=self._name, daemon=True
        )
        self._worker.start()

    def stop(self) -> None:
        """Stop the worker thread (the frame in flight completes)."""
        worker, self._worker = self._worker, None
        self._stop.set()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=10.0)

    def close(self) -> None:
        """Stop for good: wake the worker at once."""
        self._stop.set()
        self._slot.close()
        self.stop()

    def error(self, message: str) -> None:
        """Count a rejected frame and warn (throttled)."""
        with self._lock:
            self.errors += 1
            self.last_error = message
            count = self.errors
        self._logger.warning(
            f"frame rejected ({count} so far): {message}", throttle_duration_sec=_WARN_PERIOD_S
        )

    def _work(self, process: Callable[[Frame], None], stop: threading.Event) -> None:
        while not stop.is_set():
            frame = self._slot.take(timeout=0.2)
            if frame is None or stop.is_set():
                continue
            try:
                process(frame)
            except (ImageError, DofaError) as exc:
                self.error(str(exc))
            except Exception as exc:  # never let one frame kill the node
                if stop.is_set() or not self._still_running():
                    return  # shutting down: a frame in flight is neither an error nor a warning
                self.error(f"unexpected {type(exc).__name__}: {exc}")
