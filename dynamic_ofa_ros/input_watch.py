"""Is the camera input still arriving? Two silent failures a robot must report.

* **Never arrived**: publishers exist but no frame came. The usual cause is transport: with
  Fast DDS's default transports a frame over 512 KiB (640x480 rgb8 and up) leaves the
  publishing process as UDP fragments, and a best-effort subscriber never got one in our
  measurements (docs/node.md).
* **Stopped**: frames arrived, then none for ``timeout_s`` -- the publisher died, or switched to
  a larger resolution that best-effort DDS no longer delivers, or its QoS changed. Without this
  check the node's diagnostics would stay OK while nothing is classified.

ROS-free and driven by an injected clock, so it is unit-tested without a camera; the node feeds
it arrivals and asks it once per status period.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

__all__ = ["InputState", "InputWatch"]

#: publishers but never a frame for this long: warn
NEVER_ARRIVED_WARN_S = 5.0
#: automatic stale timeout = this many median frame intervals, within the bounds below
_AUTO_PERIODS = 10.0
_AUTO_MIN_S = 1.0
_AUTO_MAX_S = 30.0
#: before this many intervals are known, the automatic timeout is the maximum
_MIN_INTERVALS = 3


@dataclass(frozen=True)
class InputState:
    """The verdict of one check: ``warning`` is ``""`` when the input is healthy.

    ``kind`` is ``"ok"``, ``"never_arrived"`` or ``"stopped"``; ``changed`` is true on the first
    check of a new kind, so the caller logs once per change (the text's numbers move on).
    """

    warning: str
    kind: str
    changed: bool
    timeout_s: float


class InputWatch:
    """Tracks frame arrivals and tells when the input never came or stopped coming.

    Args:
        timeout_s: no frame for this long after frames had arrived = stale; ``0`` = automatic,
            10 median frame intervals of the observed rate, between 1 and 30 s.
        hint: what to suggest when frames never arrive (e.g. the Fast DDS profile's path).
    """

    def __init__(self, *, timeout_s: float = 0.0, hint: str = "") -> None:
        if not timeout_s >= 0.0:
            raise ValueError(f"input timeout {timeout_s!r} must be >= 0 s (0 = automatic)")
        self._timeout_s = float(timeout_s)
        self._hint = hint
        self._last: float | None = None
        self._intervals: deque[float] = deque(maxlen=50)
        self._no_frames_since: float | None = None
        self._warning = ""
        self._kind = "ok"

    @property
    def warning(self) -> str:
        """The current warning, ``""`` while the input is healthy."""
        return self._warning

    def arrived(self, now: float) -> None:
        """Record a frame's arrival at ``now`` (seconds, monotonic)."""
        if self._last is not None and now > self._last:
            self._intervals.append(now - self._last)
        self._last = now

    def timeout_s(self) -> float:
        """The stale timeout in force (the given one, or derived from the observed rate)."""
        if self._timeout_s > 0.0:
            return self._timeout_s
        if len(self._intervals) < _MIN_INTERVALS:
            return _AUTO_MAX_S
        period = statistics.median(self._intervals)
        return min(_AUTO_MAX_S, max(_AUTO_MIN_S, _AUTO_PERIODS * period))

    def check(self, now: float, *, publishers: int, topics: str) -> InputState:
        """The input's state at ``now`` given how many publishers the image topics have."""
        timeout = self.timeout_s()
        warning = self._never_arrived(now, publishers, topics) if self._last is None else ""
        kind = "never_arrived" if warning else "ok"
        if self._last is not None:
            silent = now - self._last
            if silent >= timeout:
                kind = "stopped"
                warning = (
                    f"no frame on {topics} for {silent:.1f} s (timeout {timeout:.1f} s) after frames had "
                    f"arrived; {publishers} publisher(s) now. Likely causes: the camera node stopped "
                    "or crashed; it now publishes larger frames that best-effort DDS drops (see the "
                    "Fast DDS profile in docs/node.md, or qos_overrides reliability: reliable); "
                    "its QoS no longer matches"
                )
        changed = kind != self._kind
        self._warning, self._kind = warning, kind
        return InputState(warning=warning, kind=kind, changed=changed, timeout_s=timeout)

    def _never_arrived(self, now: float, publishers: int, topics: str) -> str:
        if not publishers:
            self._no_frames_since = None
            return ""
        if self._no_frames_since is None:
            self._no_frames_since = now
        waited = now - self._no_frames_since
        if waited < NEVER_ARRIVED_WARN_S:
            return ""
        return f"{publishers} publisher(s) on {topics} but no frame received in {waited:.0f} s; " + self._hint
