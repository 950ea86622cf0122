"""The Pareto front of evaluated sub-networks and the choice of levels on it.

A :class:`Candidate` is a sub-network with its accuracy and latency. :func:`pareto_front` keeps
the candidates no other one beats on both; :func:`choose_levels` picks the levels of a family
from that front (Dynamic-OFA's runtime levels). Used by the search
(:mod:`offline_tools.search`), its reports and the figures (:mod:`offline_tools.plot`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dynamic_ofa_ros.arch import SubnetConfig
from offline_tools.errors import SearchError

__all__ = ["Candidate", "choose_levels", "pareto_front"]


@dataclass(frozen=True)
class Candidate:
    """An evaluated sub-network."""

    config: SubnetConfig
    accuracy: float
    latency_ms: float

    @property
    def key(self) -> str:
        """``config.key()``."""
        return self.config.key()

    def to_dict(self) -> dict[str, Any]:
        """Architecture fields plus ``accuracy`` and ``latency_ms``."""
        return {**self.config.to_dict(), "accuracy": self.accuracy, "latency_ms": self.latency_ms}


def pareto_front(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates not dominated by another (faster-or-equal and more accurate), by increasing latency.

    Of candidates with equal latency only the most accurate is kept; on the front both latency and
    accuracy strictly increase.
    """
    ordered = sorted(candidates, key=lambda c: (c.latency_ms, -c.accuracy, c.key))
    front: list[Candidate] = []
    best_acc = -math.inf
    for cand in ordered:
        if cand.accuracy > best_acc:
            if front and front[-1].latency_ms == cand.latency_ms:
                continue
            front.append(cand)
            best_acc = cand.accuracy
    return front


def choose_levels(front: Sequence[Candidate], *, n_levels: int = 6, min_step: float = 1.0) -> list[Candidate]:
    """Pick up to ``n_levels`` front points, from the fastest to the most accurate.

    Consecutive levels differ by at least ``min_step`` accuracy points. Among the subsets of the
    largest feasible size (at most ``n_levels``) that include both ends of the front, the one whose
    steps are most even in log-latency and in accuracy is chosen (dynamic programming, exact).
    """
    if n_levels < 1:
        raise SearchError(f"n_levels={n_levels} must be >= 1")
    if min_step < 0:
        raise SearchError(f"min_step={min_step} must be >= 0")
    pts = sorted(front, key=lambda c: c.latency_ms)
    if not pts:
        raise SearchError("no Pareto-optimal architecture to choose levels from")
    if n_levels == 1 or len(pts) == 1:
        return [pts[-1]]
    m = len(pts)
    logl = [math.log(max(c.latency_ms, 1e-9)) for c in pts]
    acc = [c.accuracy for c in pts]
    span_l = max(logl[-1] - logl[0], 1e-9)
    span_a = max(acc[-1] - acc[0], 1e-9)
    for k in range(min(n_levels, m), 1, -1):
        if span_a < (k - 1) * min_step - 1e-9:
            continue
        ideal_l, ideal_a = span_l / (k - 1), span_a / (k - 1)
        inf = math.inf
        # cost[j]: best cost of a chain from point 0 to point j using `count` points
        cost = [inf] * m
        cost[0] = 0.0
        parents: list[list[int]] = []
        for _count in range(2, k + 1):
            new = [inf] * m
            par = [-1] * m
            for j in range(1, m):
                best, arg = inf, -1
                for i in range(j):
                    if cost[i] == inf or acc[j] - acc[i] < min_step - 1e-9:
                        continue
                    dl = (logl[j] - logl[i]) / ideal_l - 1.0
                    da = (acc[j] - acc[i]) / ideal_a - 1.0
                    c = cost[i] + dl * dl + da * da
                    if c < best:
                        best, arg = c, i
                new[j], par[j] = best, arg
            parents.append(par)
            cost = new
        if cost[m - 1] < inf:
            chain = [m - 1]
            for par in reversed(parents):
                chain.append(par[chain[-1]])
            return [pts[i] for i in reversed(chain)]
    return [pts[-1]]
