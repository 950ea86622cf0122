"""Tests of offline_tools.pareto: the Pareto front and the choice of levels on it."""

from __future__ import annotations

import random

import pytest

from dynamic_ofa_ros.arch import SearchSpace
from offline_tools.errors import SearchError
from offline_tools.pareto import Candidate, choose_levels, pareto_front

SPACE = SearchSpace(resolutions=(160, 176, 192, 208, 224))


def cand(lat: float, acc: float, seed: int) -> Candidate:
    return Candidate(SPACE.sample(random.Random(seed)), acc, lat)


def test_pareto_front_is_exactly_the_non_dominated_set() -> None:
    rng = random.Random(1)
    cands = [cand(rng.uniform(10, 30), round(rng.uniform(70, 85), 1), i) for i in range(300)]
    cands += [Candidate(cands[0].config, cands[0].accuracy, cands[0].latency_ms)]  # duplicate point
    front = pareto_front(cands)
    assert front, "empty front"
    for a, b in zip(front, front[1:], strict=False):
        assert b.latency_ms > a.latency_ms and b.accuracy > a.accuracy
    for f in front:
        assert not any(
            (c.latency_ms <= f.latency_ms and c.accuracy > f.accuracy)
            or (c.latency_ms < f.latency_ms and c.accuracy >= f.accuracy)
            for c in cands
        )
    for c in cands:
        assert any(f.latency_ms <= c.latency_ms and f.accuracy >= c.accuracy for f in front)


def test_choose_levels_respects_step_count_and_ends() -> None:
    front = [cand(10 + 2 * i, 70 + 0.6 * i, i) for i in range(30)]  # 17.4 points, 0.6 apart
    levels = choose_levels(front, n_levels=7, min_step=1.0)
    assert len(levels) == 7
    assert levels[0] is front[0] and levels[-1] is front[-1]
    steps = [b.accuracy - a.accuracy for a, b in zip(levels, levels[1:], strict=False)]
    assert min(steps) >= 1.0 - 1e-9
    # a front spanning only 2.4 points fits 3 levels with 1-point steps
    narrow = front[:5]
    assert len(choose_levels(narrow, n_levels=6, min_step=1.0)) == 3
    assert choose_levels(front, n_levels=1) == [front[-1]]
    with pytest.raises(SearchError):
        choose_levels([], n_levels=3)
