"""Statistics shared by the offline tools.

One rank correlation for the whole package: the accuracy predictor's fit report and the latency
table's validation both use :func:`spearman_rank_correlation`, so a "spearman" in any report means
the same number with the same edge cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["average_ranks", "spearman_rank_correlation"]


def average_ranks(values: Sequence[float] | npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """1-based ranks of ``values``; tied values share the average of the ranks they span.

    Example: ``average_ranks([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]``.
    """
    data = np.asarray(values, dtype=np.float64)
    order = np.argsort(data, kind="mergesort")
    _, first, counts = np.unique(data[order], return_index=True, return_counts=True)
    ranks = np.empty(len(data), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1.0, counts)
    return ranks


def spearman_rank_correlation(
    a: Sequence[float] | npt.NDArray[np.floating], b: Sequence[float] | npt.NDArray[np.floating]
) -> float:
    """Spearman's rank correlation: the Pearson correlation of the average ranks of ``a`` and ``b``.

    Edge cases, one rule everywhere:

    * sequences of different lengths, or fewer than 2 points: :class:`ValueError` (a caller bug,
      there is nothing to correlate);
    * one side constant (all values tied): ``NaN`` (the correlation is undefined, yet the data
      are valid, e.g. a validation where every sub-network measured the same).

    Args:
        a: First sample, one value per item.
        b: Second sample, the same items in the same order.

    Returns:
        The correlation in [-1, 1], or NaN when either side is constant.

    Raises:
        ValueError: On a length mismatch, fewer than 2 points, or inputs that are not 1-D.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"rank correlation needs two 1-D sequences, got shapes {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"rank correlation needs sequences of equal length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        raise ValueError(f"rank correlation needs at least 2 points, got {len(x)}")
    rx = average_ranks(x)
    ry = average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denominator = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    if denominator == 0.0:
        return math.nan
    return float((rx * ry).sum()) / denominator
