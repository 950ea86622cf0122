"""The classifier node's frame path: latest-frame hand-over, inference thread, frame errors.

Subscriptions only :meth:`FramePipeline.put` the newest frame into a single-slot
:class:`~dynamic_ofa_ros.latest.LatestSlot` (replacing an unprocessed one counts as *dropped*,
so no backlog can build up); one worker thread takes it and calls the node's ``process``.
The thread runs only while the node is active (:meth:`FramePipeline.start` /
:meth:`FramePipeline.stop`), so an inactive node uses no CPU for frames.

:class:`StageTrace` records when each frame passed each stage of this path (enabled by the
environment variable ``DOFA_NODE_TRACE=<file>``; ``node_bench`` uses it for its breakdown).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rclpy.impl.rcutils_logger import RcutilsLogger
from sensor_msgs.msg import CompressedImage, Image

from dynamic_ofa_ros.errors import DofaError, ImageError
from dynamic_ofa_ros.image_input import decode_compressed, image_from_buffer
from dynamic_ofa_ros.latest import LatestSlot
from dynamic_ofa_ros.timing import write_json

__all__ = [
    "TRACE_ENV",
    "Frame",
    "FramePipeline",
    "StageTrace",
    "captured_at",
    "frame_rgb",
    "keep_frame_buffers",
]

_WARN_PERIOD_S = 5.0
#: environment variable naming the file a :class:`StageTrace` is written to
TRACE_ENV = "DOFA_NODE_TRACE"
#: glibc's mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: the largest mmap threshold glibc accepts on 64-bit machines
_MAX_FRAME_BYTES = 32 * 2**20


def keep_frame_buffers() -> bool:
    """Let this process reuse the heap memory of camera frames instead of page-faulting it per frame.

    glibc serves allocations from 128 KiB up (a 224x224 rgb8 frame is 147 KiB, 640x480 is 900 KiB)
    with fresh mappings and gives heap tops over its trim threshold back at once; until a large
    free has raised those thresholds, every frame's buffers -- DDS's copy, rclpy's message, the
    Python array -- are faulted in (zeroed pages) and returned again. A plain rclpy relay spent
    4.5 ms of CPU per 640x480 frame that way, 644 page faults per frame (perf: ``clear_page``
    and ``exc_page_fault`` under ``memmove``; a niced run on a loaded 2-core machine); with these
    settings 1.2 ms. This fixes the mmap
    threshold at 32 MiB (glibc's maximum: frames up to 32 MiB stay in the heap) and the trim
    threshold at 64 MiB, the values glibc's own adjustment would reach; the node's cleanup still
    returns memory with ``malloc_trim``. Returns ``False`` where this is not glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        mapped = libc.mallopt(_M_MMAP_THRESHOLD, _MAX_FRAME_BYTES)
        trimmed = libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MAX_FRAME_BYTES)
        return bool(mapped and trimmed)
    return False


@dataclass(frozen=True)
class Frame:
    """A received image message, when it arrived (ROS clock, ns) and, when traced, its stage marks."""

    msg: Image | CompressedImage
    received_ns: int
    #: ``time.time_ns()`` at each stage passed so far (:attr:`StageTrace.STAGES`); None: not traced
    marks: list[int] | None = None

    def mark(self) -> None:
        """Record that the frame passed the next stage (a no-op unless traced)."""
        if self.marks is not None:
            self.marks.append(time.time_ns())


class StageTrace:
    """When each frame passed each stage of the node's frame path (wall clock, ns), for ``node_bench``.

    Enabled by ``DOFA_NODE_TRACE=<file>`` (:meth:`from_env`); :meth:`write` saves
    ``{"stages": [...], "frames": [[stamp_ns, inference_ms, mark_ns...], ...]}`` where ``stamp_ns``
    is the image header's stamp and each mark is ``time.time_ns()`` (the system clock, which the
    publisher of the frames reads too). At most :attr:`MAX_FRAMES` frames are kept.
    """

    STAGES = ("callback", "queued", "taken", "converted", "classified", "built", "published")
    MAX_FRAMES = 100_000

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frames: list[list[float]] = []

    @classmethod
    def from_env(cls) -> StageTrace | None:
        """A trace writing to ``$DOFA_NODE_TRACE``; None when the variable is unset or empty."""
        path = os.environ.get(TRACE_ENV, "")
        return cls(Path(path)) if path else None

    def start(self) -> list[int] | None:
        """The marks of a new frame, its first stage (callback) marked; None once full."""
        return [time.time_ns()] if len(self.frames) < self.MAX_FRAMES else None

    def finish(self, frame: Frame, inference_ms: float) -> None:
        """Keep a frame that passed every stage (frames that failed on the way are left out)."""
        if frame.marks is not None and len(frame.marks) == len(self.STAGES):
            stamp = frame.msg.header.stamp
            self.frames.append(
                [int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec), inference_ms, *frame.marks]
            )

    def write(self) -> None:
        """Save the trace (atomically) to :attr:`path`."""
        write_json(self.path, {"stages": list(self.STAGES), "frames": self.frames})


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
        trace: records every frame's stages when given (``DOFA_NODE_TRACE``).
    """

    def __init__(
        self,
        name: str,
        logger: RcutilsLogger,
        still_running: Callable[[], bool],
        trace: StageTrace | None = None,
    ) -> None:
        self._name = name
        self.trace = trace
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

    def begin(self) -> list[int] | None:
        """The stage marks of a frame whose subscription callback starts now (None unless traced)."""
        return self.trace.start() if self.trace is not None else None

    def put(self, msg: Image | CompressedImage, received_ns: int, marks: list[int] | None = None) -> None:
        """Hand over a received message (replaces an unprocessed one).

        ``marks``: from :meth:`begin` at the start of the callback.
        """
        frame = Frame(msg=msg, received_ns=received_ns, marks=marks)
        frame.mark()  # queued
        self._slot.put(frame)

    def finish(self, frame: Frame, inference_ms: float) -> None:
        """The frame's prediction is published: keep its stage marks when tracing."""
        if self.trace is not None:
            self.trace.finish(frame, inference_ms)

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
            frame.mark()  # taken
            try:
                process(frame)
            except (ImageError, DofaError) as exc:
                self.error(str(exc))
            except Exception as exc:  # never let one frame kill the node
                if stop.is_set() or not self._still_running():
                    return  # shutting down: a frame in flight is neither an error nor a warning
                self.error(f"unexpected {type(exc).__name__}: {exc}")
