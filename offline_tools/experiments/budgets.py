"""Budget rules: which latency budgets the experiments set, from per-level latencies measured at start-up.

* :func:`lut_level` -- the look-up-table choice for a budget (what the manager picks alone);
* :func:`fig6_budgets` -- fig. 6's tight / medium / loose budgets on an idle device;
* :func:`load_budget` -- the budget of figs. 7/8, where switching matters most under the load.

See ``docs/experiments.md`` for the reasoning behind each rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypedDict

__all__ = [
    "LOAD_MARGINS_FALLBACK",
    "BudgetCandidate",
    "LoadBudget",
    "fig6_budgets",
    "load_budget",
    "load_margins",
    "lut_level",
    "monotone",
]

#: Smaller margins tried, in order, when ``load_margin`` leaves no gap (see :func:`load_budget`).
LOAD_MARGINS_FALLBACK = (1.15, 1.05)


class BudgetCandidate(TypedDict):
    """One candidate budget of :func:`load_budget` and the static levels it implies."""

    budget_ms: float
    static_safe: int
    static_alone: int


class LoadBudget(TypedDict):
    """The outcome of :func:`load_budget` (all candidates per margin tried, keyed ``f"{margin:g}"``)."""

    budget_ms: float
    static_alone: int
    static_safe: int
    load_effect: str
    margin: float
    candidates: dict[str, list[BudgetCandidate]]


def lut_level(latency: Mapping[int, float], budget_ms: float) -> int:
    """The look-up-table choice: the highest level whose latency fits ``budget_ms`` (else the lowest)."""
    fitting = [lvl for lvl, ms in latency.items() if ms <= budget_ms]
    return max(fitting) if fitting else min(latency)


def monotone(latency: Mapping[int, float]) -> dict[int, float]:
    """Latencies made strictly increasing with the level (noise between near-equal levels)."""
    out: dict[int, float] = {}
    prev = -math.inf
    for lvl in sorted(latency):
        value = max(float(latency[lvl]), prev + 1e-3)
        out[lvl] = value
        prev = value
    return out


def fig6_budgets(p95: Mapping[int, float], margin: float) -> dict[str, tuple[float, int]]:
    """Budgets of fig. 6, ``{"tight"|"medium"|"loose": (budget_ms, level)}``.

    With the levels ``1..n`` sorted, the target levels are the one at 25 % of the range
    (``tight``), 50 % (``medium``) and the top (``loose``); each budget is ``margin`` x the
    target's alone p95, but below the next level's p95 (mid-way), so that the look-up table
    picks exactly the target and the target meets the budget.
    """
    lat = monotone(p95)
    levels = sorted(lat)
    n = len(levels)
    picks = {
        "tight": levels[int(0.25 * (n - 1))],
        "medium": levels[int(0.5 * (n - 1) + 0.5)],
        "loose": levels[-1],
    }
    out: dict[str, tuple[float, int]] = {}
    for name, lvl in picks.items():
        budget = margin * lat[lvl]
        if lvl != levels[-1]:
            budget = min(budget, 0.5 * (lat[lvl] + lat[lvl + 1]))
        out[name] = (float(budget), int(lvl))
    return out


def load_margins(load_margin: float) -> tuple[float, ...]:
    """``load_margin``, then the smaller fall-backs of :data:`LOAD_MARGINS_FALLBACK`."""
    return (load_margin, *[m for m in LOAD_MARGINS_FALLBACK if m < load_margin])


def _candidates(
    alone: Mapping[int, float], loaded_p95: Mapping[int, float], margin: float
) -> tuple[list[BudgetCandidate], tuple[int, int, float]]:
    """Candidates of one margin and the best ``(gap, static_safe, budget)`` (first of equal keys)."""
    best: tuple[int, int, float] | None = None
    candidates: list[BudgetCandidate] = []
    for lvl in sorted(loaded_p95):
        budget = margin * float(loaded_p95[lvl])
        safe = max(lv for lv, ms in loaded_p95.items() if ms <= budget)
        lut = lut_level(alone, budget)
        candidates.append({"budget_ms": round(budget, 4), "static_safe": safe, "static_alone": lut})
        key = (lut - safe, safe, budget)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        raise ValueError("load_budget needs the latency of at least one level under the load")
    return candidates, best


def load_budget(
    alone_p95: Mapping[int, float], loaded_p95: Mapping[int, float], margin: float | Sequence[float]
) -> LoadBudget:
    """The budget of figs. 7/8 from per-level p95 latencies alone and under the load.

    Candidates are ``margin`` x each level's p95 under load. For each, ``static_safe`` is the
    highest level whose p95 under load fits and ``static_alone`` the look-up-table level (alone
    p95) for it. The candidate with the largest gap ``static_alone - static_safe`` wins (ties:
    the higher ``static_safe``, i.e. the looser budget): the budget where switching matters most.
    ``margin`` may be a sequence, tried in order until one gives a gap (a load that adds a
    roughly constant delay, e.g. GPU time-slicing, leaves a gap only with a small margin). With no
    gap at any margin (the load does not slow the levels differently) the median candidate of the
    first margin is used and ``load_effect`` says ``"none"``.
    """
    alone = monotone(alone_p95)
    margins = [float(margin)] if isinstance(margin, int | float) else [float(m) for m in margin]
    if not margins:
        raise ValueError("load_budget needs at least one margin")
    tried: dict[str, list[BudgetCandidate]] = {}
    for m in margins:
        candidates, (gap, safe, budget) = _candidates(alone, loaded_p95, m)
        tried[f"{m:g}"] = candidates
        if gap > 0:
            return {
                "budget_ms": float(budget),
                "static_alone": lut_level(alone, budget),
                "static_safe": int(safe),
                "load_effect": "slows",
                "margin": m,
                "candidates": tried,
            }
    first = tried[f"{margins[0]:g}"]
    mid = first[len(first) // 2]
    return {
        "budget_ms": float(mid["budget_ms"]),
        "static_alone": lut_level(alone, float(mid["budget_ms"])),
        "static_safe": int(mid["static_safe"]),
        "load_effect": "none",
        "margin": margins[0],
        "candidates": tried,
    }
