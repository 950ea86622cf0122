"""Tests of offline_tools.stats: the one Spearman rank correlation and its edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offline_tools.stats import average_ranks, spearman_rank_correlation


def test_average_ranks_share_ties() -> None:
    assert average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert average_ranks(np.array([3.0, 1.0, 2.0])).tolist() == [3.0, 1.0, 2.0]


def test_spearman_values() -> None:
    assert spearman_rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_rank_correlation([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    assert spearman_rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, rel=1e-6)
    # monotone transforms do not change it; NumPy arrays are accepted
    x = np.array([0.3, 1.5, 0.9, 2.2, 1.1])
    assert spearman_rank_correlation(x, np.exp(x)) == pytest.approx(1.0)


def test_spearman_edge_cases() -> None:
    assert math.isnan(spearman_rank_correlation([1, 2, 3], [5, 5, 5]))  # one side constant
    assert math.isnan(spearman_rank_correlation([7, 7], [1, 2]))
    with pytest.raises(ValueError, match="at least 2 points"):
        spearman_rank_correlation([1], [2])
    with pytest.raises(ValueError, match="at least 2 points"):
        spearman_rank_correlation([], [])
    with pytest.raises(ValueError, match="equal length"):
        spearman_rank_correlation([1, 2, 3], [1, 2])
