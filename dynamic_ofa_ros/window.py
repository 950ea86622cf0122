"""Statistics of one measurement window of the runtime manager.

A window is ``window_size`` consecutive frames at one level. Its statistic (mean, or p95) is
compared with the budget; the inference times in it give the *slow-down* of the model under
the current co-located load, and the rest is fixed overhead, so the latency of any other level
can be predicted as ``profiled * slowdown + overhead`` (``docs/manager.md``). Pure arithmetic
on plain floats: no locks, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dynamic_ofa_ros.timing import percentile

__all__ = ["WindowSummary", "estimate", "window_statistic"]


@dataclass(frozen=True)
class WindowSummary:
    """Statistics of one completed window (``frames`` measurements, all at ``level``).

    ``slowdown`` is the window statistic of the inference time over the level's
    profiled latency, ``overhead_ms`` the part of the end-to-end statistic that
    does not scale with the model (preprocessing, queueing); the prediction for
    level ``L`` is ``latency_ms(L) * slowdown + overhead_ms``. ``start``/``end``
    are clock times (seconds): when the first frame started and when the last
    one was observed. ``first_frame`` is the 0-based index of the first frame.
    """

    level: int
    frames: int
    first_frame: int
    mean_ms: float
    p95_ms: float
    statistic_ms: float
    violated: bool
    slowdown: float
    overhead_ms: float
    start: float
    end: float


def window_statistic(values: Sequence[float], use_p95: bool) -> float:
    """The window statistic compared with the budget: the p95 or the mean of ``values``."""
    if use_p95:
        return percentile(values, 95.0)
    return sum(values) / len(values)


def estimate(
    statistic: float, inference: Sequence[float], profiled: float, use_p95: bool
) -> tuple[float, float]:
    """(slow-down, overhead ms) such that ``profiled * slowdown + overhead`` equals ``statistic``."""
    slow = window_statistic(inference, use_p95) / profiled
    return slow, max(0.0, statistic - profiled * slow)
