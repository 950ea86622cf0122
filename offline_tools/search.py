"""Accuracy-constrained architecture search (Dynamic-OFA Algorithm 1 + regularised evolution).

The search builds a *family* of Pareto-optimal sub-networks of the OFA MobileNetV3
super-network for one device:

1. **Anchors.** The fastest sub-network of the space (coordinate descent on the latency
   source at every resolution, exact for additive look-up tables) and the most accurate one
   (coordinate ascent on the accuracy source; the largest network for measured accuracy) bound
   the sweep: ``lat_init`` defaults to the fastest latency, ``lat_max`` to 1.05 × the latency of
   the most accurate network (nothing slower can be on the front), and the accuracy targets span
   their accuracies.
2. **Sweep.** ``targets`` points ``i = 1..T``: accuracy target ``acc_max_i`` evenly spaced from
   ``acc(fastest) + acc_r`` to ``acc(most accurate)`` and latency constraint ``L_i`` evenly spaced
   in log-latency from ``lat_init`` to ``lat_max`` (or the one ``acc_max`` given, with ``lat_max``).
   For each:

   * *Algorithm 1* (:func:`accuracy_constrained_random_search`): random architectures are
     accepted only when their accuracy lies in ``[acc_max - acc_r, acc_max]`` and their
     latency is below the current constraint ``lat_c``; ``lat_c`` starts at ``lat_init`` and
     is relaxed by ``lat_add`` every ``itr_n`` iterations up to ``L_i``; it stops when the
     population is full or after ``itr_max`` iterations. Starting tight and relaxing finds the
     *fastest* architectures of that accuracy.
   * *Regularised evolution* (:func:`regularized_evolution`, Real et al. 2019) seeded with that
     population: tournament selection (``parent_ratio`` of the population per tournament),
     mutation (each gene resampled with ``mutation_prob``) or uniform crossover, children kept
     only under the final constraint ``lat_c``, the oldest member dies. Fitness is accuracy,
     so the population climbs to the most accurate architectures at that latency.

3. **Pareto front** (:func:`offline_tools.pareto.pareto_front`) of every architecture evaluated,
   and the **levels** (:func:`offline_tools.pareto.choose_levels`): up to ``n_levels`` front
   points from the fastest to the most accurate, consecutive accuracies at least ``min_step``
   points apart, spread as evenly as possible in log-latency and accuracy.

Everything is deterministic for a given seed: all randomness comes from ``random.Random``
instances seeded from it, and evaluation is cached per ``SubnetConfig.key()`` (a network is
never evaluated twice). Accuracy is requested in batches (one MLP forward pass per batch).
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from tqdm import tqdm  # type: ignore[import-untyped]

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SearchSpace, SubnetConfig
from offline_tools.accuracy import AccuracySource
from offline_tools.errors import SearchError
from offline_tools.pareto import Candidate, choose_levels, pareto_front

__all__ = [
    "Evaluator",
    "LatencySource",
    "SearchResult",
    "SearchSettings",
    "TargetRun",
    "accuracy_constrained_random_search",
    "find_extremes",
    "regularized_evolution",
    "search_family",
]


@runtime_checkable
class LatencySource(Protocol):
    """Latency of a sub-network in milliseconds: a look-up table (``LatencyTable``) or a measurement."""

    def predict(self, cfg: SubnetConfig) -> float:
        """Latency of ``cfg`` in ms."""
        ...


class Evaluator:
    """Batched, cached evaluation of accuracy and latency; keeps every evaluated candidate (the archive)."""

    def __init__(self, accuracy: AccuracySource, latency: LatencySource) -> None:
        self.accuracy = accuracy
        self.latency = latency
        self.archive: dict[str, Candidate] = {}
        self.accuracy_evaluations = 0
        self.latency_evaluations = 0
        self.requests = 0
        self._latency: dict[str, float] = {}

    def latencies(self, cfgs: Sequence[SubnetConfig]) -> list[float]:
        """Latency of each of ``cfgs`` (cached per network), without evaluating accuracy."""
        out = []
        for cfg in cfgs:
            key = cfg.key()
            if key not in self._latency:
                lat = float(self.latency.predict(cfg))
                if not math.isfinite(lat):
                    raise SearchError(f"{key}: non-finite latency {lat}")
                self._latency[key] = lat
                self.latency_evaluations += 1
            out.append(self._latency[key])
        return out

    def evaluate(self, cfgs: Sequence[SubnetConfig]) -> list[Candidate]:
        """Candidates for ``cfgs`` in order; new networks are evaluated once, in one accuracy batch."""
        self.requests += len(cfgs)
        new: dict[str, SubnetConfig] = {}
        for cfg in cfgs:
            key = cfg.key()
            if key not in self.archive and key not in new:
                new[key] = cfg
        if new:
            todo = list(new.values())
            accs = self.accuracy.predict(todo)
            if len(accs) != len(todo):
                raise SearchError(f"accuracy source returned {len(accs)} values for {len(todo)} networks")
            self.accuracy_evaluations += len(todo)
            for cfg, acc, lat in zip(todo, accs, self.latencies(todo), strict=True):
                if not math.isfinite(acc):
                    raise SearchError(f"{cfg.key()}: non-finite accuracy {acc}")
                self.archive[cfg.key()] = Candidate(cfg, float(acc), lat)
        return [self.archive[cfg.key()] for cfg in cfgs]

    def candidates(self) -> list[Candidate]:
        """Every evaluated candidate, in evaluation order."""
        return list(self.archive.values())


# --------------------------------------------------------------------------------------------
# Settings and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSettings:
    """Parameters of :func:`search_family` (``None`` = derived from the anchors, see the module doc).

    ``acc_max`` given: one target (Algorithm 1 with exactly these constraints); otherwise a sweep
    of ``targets`` accuracy targets. ``lat_add`` defaults to ``(L - lat_init) * itr_n /
    itr_max`` so the constraint reaches the target's latency ``L`` at ``itr_max``.
    """

    acc_max: float | None = None
    acc_r: float = 1.0
    lat_init: float | None = None
    lat_add: float | None = None
    lat_max: float | None = None
    itr_n: int = 100
    itr_max: int = 3000
    population: int = 64
    generations: int = 30
    mutation_prob: float = 0.1
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    targets: int = 12
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.acc_r > 0, f"acc_r={self.acc_r} must be > 0"),
            (self.itr_n >= 1, f"itr_n={self.itr_n} must be >= 1"),
            (self.itr_max >= self.itr_n, f"itr_max={self.itr_max} must be >= itr_n={self.itr_n}"),
            (self.population >= 2, f"population={self.population} must be >= 2"),
            (self.generations >= 0, f"generations={self.generations} must be >= 0"),
            (0 < self.mutation_prob <= 1, f"mutation_prob={self.mutation_prob} must be in (0, 1]"),
            (0 < self.parent_ratio <= 1, f"parent_ratio={self.parent_ratio} must be in (0, 1]"),
            (0 <= self.mutation_ratio <= 1, f"mutation_ratio={self.mutation_ratio} must be in [0, 1]"),
            (self.targets >= 1, f"targets={self.targets} must be >= 1"),
        ]
        for value, name in (
            (self.lat_init, "lat_init"),
            (self.lat_add, "lat_add"),
            (self.lat_max, "lat_max"),
        ):
            checks.append(
                (value is None or (math.isfinite(value) and value > 0), f"{name}={value} must be > 0")
            )
        if self.acc_max is not None:
            checks.append((math.isfinite(self.acc_max), f"acc_max={self.acc_max} must be finite"))
        for ok, message in checks:
            if not ok:
                raise SearchError(f"search settings: {message}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class TargetRun:
    """What one sweep point did."""

    acc_max: float
    acc_r: float
    lat_init: float
    lat_add: float
    lat_max: float
    lat_c: float
    iterations: int
    found: int
    best: Candidate | None = None
    closest: Candidate | None = None
    seeded: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "acc_max": self.acc_max,
            "acc_r": self.acc_r,
            "lat_init": self.lat_init,
            "lat_add": self.lat_add,
            "lat_max": self.lat_max,
            "lat_c": self.lat_c,
            "iterations": self.iterations,
            "found": self.found,
            "seeded_from_archive": self.seeded,
            "best": self.best.to_dict() if self.best else None,
        }


@dataclass
class SearchResult:
    """Outcome of :func:`search_family`."""

    candidates: list[Candidate]
    front: list[Candidate]
    levels: list[Candidate]
    runs: list[TargetRun]
    settings: SearchSettings
    space: SearchSpace
    fastest: Candidate
    most_accurate: Candidate
    seconds: float
    accuracy_evaluations: int
    latency_evaluations: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts, timings and the chosen levels (JSON-ready)."""
        return {
            "seconds": round(self.seconds, 2),
            "candidates": len(self.candidates),
            "accuracy_evaluations": self.accuracy_evaluations,
            "latency_evaluations": self.latency_evaluations,
            "pareto_points": len(self.front),
            "levels": len(self.levels),
            "targets": [run.to_dict() for run in self.runs],
            "settings": self.settings.to_dict(),
            "space": {
                "ks": list(self.space.ks_choices),
                "e": list(self.space.e_choices),
                "d": list(self.space.d_choices),
                "resolutions": list(self.space.resolutions),
            },
            "fastest": self.fastest.to_dict(),
            "most_accurate": self.most_accurate.to_dict(),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------
# Genetic operators
# --------------------------------------------------------------------------------------------


def mutate(cfg: SubnetConfig, space: SearchSpace, rng: random.Random, prob: float) -> SubnetConfig:
    """Resample each block's kernel and expand, each stage depth and the resolution with ``prob``."""
    ks, e, d = list(cfg.ks), list(cfg.e), list(cfg.d)
    resolution = cfg.resolution
    if rng.random() < prob:
        resolution = rng.choice(space.resolutions)
    for i in range(N_BLOCKS):
        if rng.random() < prob:
            ks[i] = rng.choice(space.ks_choices)
        if rng.random() < prob:
            e[i] = rng.choice(space.e_choices)
    for i in range(N_STAGES):
        if rng.random() < prob:
            d[i] = rng.choice(space.d_choices)
    return SubnetConfig(resolution=resolution, ks=tuple(ks), e=tuple(e), d=tuple(d)).canonical()


def crossover(a: SubnetConfig, b: SubnetConfig, rng: random.Random) -> SubnetConfig:
    """Uniform crossover: each block's (kernel, expand), each depth and the resolution from either parent."""
    ks, e = [], []
    for i in range(N_BLOCKS):
        src = a if rng.random() < 0.5 else b
        ks.append(src.ks[i])
        e.append(src.e[i])
    d = [a.d[i] if rng.random() < 0.5 else b.d[i] for i in range(N_STAGES)]
    resolution = a.resolution if rng.random() < 0.5 else b.resolution
    return SubnetConfig(resolution=resolution, ks=tuple(ks), e=tuple(e), d=tuple(d)).canonical()


def _better(a: Candidate, b: Candidate) -> bool:
    """Higher accuracy, then lower latency, then key (total order, deterministic)."""
    return (a.accuracy, -a.latency_ms, a.key) > (b.accuracy, -b.latency_ms, b.key)


def _tournament(population: Sequence[Candidate], size: int, rng: random.Random) -> Candidate:
    picks = rng.sample(range(len(population)), min(size, len(population)))
    best = population[picks[0]]
    for i in picks[1:]:
        if _better(population[i], best):
            best = population[i]
    return best


# --------------------------------------------------------------------------------------------
# Algorithm 1 and evolution
# --------------------------------------------------------------------------------------------


def _band_distance(c: Candidate, lo: float, hi: float, lat_c: float, acc_r: float) -> float:
    acc_gap = max(0.0, lo - c.accuracy, c.accuracy - hi) / acc_r
    lat_gap = max(0.0, c.latency_ms - lat_c) / lat_c
    return acc_gap + lat_gap


def accuracy_constrained_random_search(
    space: SearchSpace,
    evaluator: Evaluator,
    *,
    acc_max: float,
    acc_r: float,
    lat_init: float,
    lat_add: float,
    lat_max: float,
    itr_n: int,
    itr_max: int,
    population: int,
    rng: random.Random,
) -> tuple[TargetRun, list[Candidate]]:
    """Dynamic-OFA Algorithm 1: ``(run statistics, accepted architectures in order of discovery)``.

    A random architecture is accepted when ``acc_max - acc_r <= accuracy <= acc_max`` and
    ``latency < lat_c``; ``lat_c`` starts at ``lat_init`` and grows by ``lat_add`` after every
    ``itr_n`` iterations, up to ``lat_max``; the search stops when ``population`` architectures
    are accepted or after ``itr_max`` iterations. ``run.closest`` is the rejected sample nearest
    to the constraints (for error messages).
    """
    lo, hi = acc_max - acc_r, acc_max
    lat_c = min(lat_init, lat_max)
    found: list[Candidate] = []
    keys: set[str] = set()
    closest: Candidate | None = None
    closest_d = math.inf
    itr = 0
    while itr < itr_max and len(found) < population:
        # one block of itr_n iterations shares the constraint, so it is evaluated as one batch
        block = [space.sample(rng) for _ in range(min(itr_n, itr_max - itr))]
        for cand in evaluator.evaluate(block):
            if lo <= cand.accuracy <= hi and cand.latency_ms < lat_c:
                if cand.key not in keys:
                    keys.add(cand.key)
                    found.append(cand)
                    if len(found) >= population:
                        break
            else:
                dist = _band_distance(cand, lo, hi, lat_c, acc_r)
                if dist < closest_d:
                    closest, closest_d = cand, dist
        itr += len(block)
        if len(found) < population and itr % itr_n == 0 and lat_c < lat_max:
            lat_c = min(lat_c + lat_add, lat_max)
    best = max(found, key=lambda c: (c.accuracy, -c.latency_ms, c.key)) if found else None
    run = TargetRun(
        acc_max=acc_max,
        acc_r=acc_r,
        lat_init=lat_init,
        lat_add=lat_add,
        lat_max=lat_max,
        lat_c=lat_c,
        iterations=itr,
        found=len(found),
        best=best,
        closest=closest,
    )
    return run, found


def regularized_evolution(
    space: SearchSpace,
    evaluator: Evaluator,
    seeds: Sequence[Candidate],
    *,
    lat_c: float,
    generations: int,
    population: int,
    mutation_prob: float,
    parent_ratio: float,
    mutation_ratio: float,
    rng: random.Random,
) -> list[Candidate]:
    """Aging evolution under ``latency <= lat_c``, maximising accuracy; returns the final population.

    Each generation makes ``population`` children (mutation of a tournament winner with
    probability ``mutation_ratio``, else crossover of two winners; tournaments draw
    ``ceil(parent_ratio * len(population))`` members), evaluates them in one batch, and appends
    each feasible new child while removing the oldest member.
    """
    pop: deque[Candidate] = deque(seeds)
    if not pop:
        return []
    members = {c.key for c in pop}
    tsize = max(2, math.ceil(parent_ratio * population))
    for _ in range(generations):
        current = list(pop)
        children: list[SubnetConfig] = []
        for _ in range(population):
            if rng.random() < mutation_ratio or len(current) < 2:
                parent = _tournament(current, tsize, rng).config
                child = mutate(parent, space, rng, mutation_prob)
                for _retry in range(3):
                    if not child.same_network(parent):
                        break
                    child = mutate(parent, space, rng, mutation_prob)
            else:
                a = _tournament(current, tsize, rng).config
                b = _tournament(current, tsize, rng).config
                child = crossover(a, b, rng)
            children.append(child)
        for cand in evaluator.evaluate(children):
            if cand.latency_ms <= lat_c and cand.key not in members:
                pop.append(cand)
                members.add(cand.key)
                if len(pop) > population:
                    members.discard(pop.popleft().key)
    return list(pop)


# --------------------------------------------------------------------------------------------
# Anchors
# --------------------------------------------------------------------------------------------


def _n_groups() -> int:
    return 1 + N_STAGES + N_BLOCKS


def _group_variants(cfg: SubnetConfig, space: SearchSpace, group: int) -> list[SubnetConfig]:
    """All alternatives of gene group ``group``: 0 = resolution, 1..5 = stage depths, then one per block."""
    if group == 0:
        return [replace_cfg(cfg, resolution=r) for r in space.resolutions]
    if group <= N_STAGES:
        return [replace_cfg(cfg, d_at=(group - 1, d)) for d in space.d_choices]
    block = group - 1 - N_STAGES
    return [replace_cfg(cfg, block=(block, k, x)) for k in space.ks_choices for x in space.e_choices]


def replace_cfg(
    cfg: SubnetConfig,
    *,
    resolution: int | None = None,
    d_at: tuple[int, int] | None = None,
    block: tuple[int, int, int] | None = None,
) -> SubnetConfig:
    """A copy of ``cfg`` with one gene changed (resolution, one stage depth, or one block's kernel+expand)."""
    ks, e, d = list(cfg.ks), list(cfg.e), list(cfg.d)
    if d_at is not None:
        d[d_at[0]] = d_at[1]
    if block is not None:
        ks[block[0]], e[block[0]] = block[1], block[2]
    return SubnetConfig(
        resolution=cfg.resolution if resolution is None else resolution, ks=tuple(ks), e=tuple(e), d=tuple(d)
    )


def find_extremes(
    space: SearchSpace, evaluator: Evaluator, *, optimise_accuracy: bool = True
) -> tuple[Candidate, Candidate, Candidate]:
    """``(fastest, slowest, most accurate)`` by coordinate search (the three are added to the archive).

    The latency searches query only the latency source (no accuracy evaluation). Latency tables
    are additive per block, so coordinate descent finds the exact fastest network.
    The most accurate is the coordinate ascent of the accuracy source from the largest network
    (just the largest network when ``optimise_accuracy`` is false, e.g. for measured accuracy).
    """

    def lat_score(sign: float) -> Callable[[Sequence[SubnetConfig]], list[float]]:
        return lambda cfgs: [sign * v for v in evaluator.latencies(cfgs)]

    fastest = _coordinate_search(space.smallest(), space, lat_score(-1.0))
    slowest = _coordinate_search(space.largest(), space, lat_score(1.0))
    if optimise_accuracy:
        top = _coordinate_search(
            space.largest(), space, lambda cfgs: [c.accuracy for c in evaluator.evaluate(cfgs)]
        )
    else:
        top = space.largest()
    fast, slow, acc = evaluator.evaluate([fastest, slowest, top])
    largest = evaluator.evaluate([space.largest()])[0]
    if largest.accuracy > acc.accuracy:
        acc = largest
    return fast, slow, acc


def _coordinate_search(
    start: SubnetConfig, space: SearchSpace, score: Callable[[Sequence[SubnetConfig]], list[float]]
) -> SubnetConfig:
    """Best of a coordinate ascent at every resolution of the space (ties: the earlier resolution).

    At a fixed resolution the ascent sweeps the stage depths and every block's (kernel, expand)
    until no single change improves; for an additive latency table that is the exact optimum at
    that resolution (blocks are independent once the depths are fixed).
    """
    best: SubnetConfig | None = None
    best_score = -math.inf
    for resolution in space.resolutions:
        cfg = replace_cfg(start, resolution=resolution).canonical()
        cfg_score = score([cfg])[0]
        for _ in range(6):
            improved = False
            for g in range(1, _n_groups()):
                group = _group_variants(cfg, space, g)
                values = score(group)
                i = max(range(len(group)), key=lambda j: (values[j], -j))
                if values[i] > cfg_score + 1e-9 and not group[i].same_network(cfg):
                    cfg, cfg_score = group[i].canonical(), values[i]
                    improved = True
            if not improved:
                break
        if cfg_score > best_score + 1e-9:
            best, best_score = cfg, cfg_score
    assert best is not None
    return best


# --------------------------------------------------------------------------------------------
# The whole search
# --------------------------------------------------------------------------------------------


def _target_rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 1_000_003 + index)


def _sweep_targets(
    settings: SearchSettings, fastest: Candidate, top: Candidate, lat_init: float, lat_max: float
) -> list[tuple[float, float]]:
    """The (acc_max, latency constraint) of every target: one explicit band, or the sweep.

    The sweep spaces accuracy linearly from the fastest network (+ ``acc_r``) to the most
    accurate one, and latency geometrically from ``lat_init`` to ``lat_max``.
    """
    if settings.acc_max is not None:
        return [(settings.acc_max, lat_max)]
    acc_lo = fastest.accuracy + settings.acc_r
    acc_hi = max(top.accuracy, acc_lo)
    lat_lo, lat_hi = math.log(lat_init), math.log(lat_max)
    fractions = [(i + 1) / settings.targets for i in range(settings.targets)]
    return [(acc_lo + (acc_hi - acc_lo) * f, math.exp(lat_lo + (lat_hi - lat_lo) * f)) for f in fractions]


def _run_target(
    space: SearchSpace,
    ev: Evaluator,
    settings: SearchSettings,
    index: int,
    target: tuple[float, float],
    lat_init: float,
) -> TargetRun:
    """Algorithm 1 for one target, then regularised evolution from what it found."""
    acc_max, lat_target = target
    rng = _target_rng(settings.seed, index)
    lat_add = (
        settings.lat_add
        if settings.lat_add is not None
        else max((lat_target - lat_init) * settings.itr_n / settings.itr_max, 1e-6)
    )
    run, found = accuracy_constrained_random_search(
        space,
        ev,
        acc_max=acc_max,
        acc_r=settings.acc_r,
        lat_init=lat_init,
        lat_add=lat_add,
        lat_max=lat_target,
        itr_n=settings.itr_n,
        itr_max=settings.itr_max,
        population=settings.population,
        rng=rng,
    )
    seeds = list(found)
    if settings.acc_max is None and len(seeds) < settings.population:
        # sweep: a target whose accuracy band random sampling rarely reaches below its latency
        # still explores that latency, seeded with the best networks evaluated so far under it
        have = {c.key for c in seeds}
        extra = sorted(
            (c for c in ev.candidates() if c.latency_ms <= run.lat_c and c.key not in have),
            key=lambda c: (-c.accuracy, c.latency_ms, c.key),
        )
        run.seeded = len(extra[: settings.population - len(seeds)])
        seeds += extra[: run.seeded]
    if seeds:
        final = regularized_evolution(
            space,
            ev,
            seeds,
            lat_c=run.lat_c,
            generations=settings.generations,
            population=settings.population,
            mutation_prob=settings.mutation_prob,
            parent_ratio=settings.parent_ratio,
            mutation_ratio=settings.mutation_ratio,
            rng=rng,
        )
        best_final = max(final, key=lambda c: (c.accuracy, -c.latency_ms, c.key))
        if run.best is None or _better(best_final, run.best):
            run.best = best_final
    return run


def _no_solution(
    runs: Sequence[TargetRun], band: tuple[float, float], lat_max: float, fastest: Candidate, top: Candidate
) -> SearchError:
    """The error for an explicit accuracy band ``(acc_max, acc_r)`` that no run hit."""
    closest = min(
        (run.closest for run in runs if run.closest is not None),
        key=lambda c: min(_band_distance(c, r.acc_max - r.acc_r, r.acc_max, r.lat_c, r.acc_r) for r in runs),
        default=None,
    )
    acc_max, acc_r = band
    where = f"accuracy in [{acc_max - acc_r:.2f}, {acc_max:.2f}] %"
    detail = (
        f"; closest found: {closest.config.summary()} with {closest.accuracy:.2f} % at "
        f"{closest.latency_ms:.3f} ms"
        if closest
        else ""
    )
    return SearchError(
        f"no architecture satisfies the constraints ({where}, latency < {lat_max:.3f} ms, "
        f"{sum(r.iterations for r in runs)} samples){detail}. The space reaches "
        f"{fastest.accuracy:.2f} % at {fastest.latency_ms:.3f} ms (fastest) up to "
        f"{top.accuracy:.2f} % at {top.latency_ms:.3f} ms (most accurate); relax acc_max/acc_r or lat_max"
    )


def _front_within(
    ev: Evaluator, settings: SearchSettings, lat_max: float, min_accuracy: float | None
) -> list[Candidate]:
    """The Pareto front of every evaluated candidate within the explicit constraints."""
    pool = ev.candidates()
    if settings.lat_max is not None:
        pool = [c for c in pool if c.latency_ms <= settings.lat_max + 1e-9]
    if min_accuracy is not None:
        pool = [c for c in pool if c.accuracy >= min_accuracy]
    front = pareto_front(pool)
    if not front:
        raise SearchError(
            f"no evaluated architecture meets latency <= {lat_max:.3f} ms"
            + (f" and accuracy >= {min_accuracy:.2f} %" if min_accuracy is not None else "")
        )
    return front


def search_family(
    space: SearchSpace,
    accuracy: AccuracySource,
    latency: LatencySource,
    settings: SearchSettings | None = None,
    *,
    n_levels: int = 6,
    min_step: float = 1.0,
    min_accuracy: float | None = None,
    progress: bool = True,
    evaluator: Evaluator | None = None,
) -> SearchResult:
    """Anchors → sweep (Algorithm 1 + evolution per target) → Pareto front → levels (module doc).

    In a sweep, a target whose band random sampling misses is still explored: its evolution is
    seeded with the most accurate networks evaluated so far under its latency (``TargetRun.seeded``).

    Args:
        space: the super-network's search space.
        accuracy: top-1 % of architectures (predicted or measured).
        latency: latency of architectures (look-up table).
        settings: Algorithm 1 and evolution settings (default :class:`SearchSettings`).
        n_levels: how many levels to choose from the front.
        min_step: minimum accuracy step between chosen levels (points).
        min_accuracy: drop candidates below this top-1 % from the front.
        progress: show a progress bar over the targets.
        evaluator: reuse an evaluator (and its archive of evaluated architectures).

    Returns:
        Every candidate evaluated, the Pareto front, the chosen levels and how the run went.

    Raises:
        SearchError: the constraints admit no architecture (with the closest one found): an
            explicit ``acc_max``/``acc_r`` band that Algorithm 1 never hits below ``lat_max``, a
            ``lat_max`` below the fastest network, or no candidate above ``min_accuracy``.
    """
    settings = settings or SearchSettings()
    started = time.perf_counter()
    ev = evaluator or Evaluator(accuracy, latency)
    fastest, slowest, top = find_extremes(space, ev, optimise_accuracy=not accuracy.measured)
    lat_init = settings.lat_init if settings.lat_init is not None else fastest.latency_ms
    # the sweep ends a little above the most accurate network: nothing slower can be on the front
    # (the slowest network of the space, often far slower, only bounds it)
    default_max = min(slowest.latency_ms, max(top.latency_ms * 1.05, fastest.latency_ms * 1.01))
    lat_max = settings.lat_max if settings.lat_max is not None else default_max
    if lat_max < lat_init:
        raise SearchError(
            f"lat_max={lat_max:.3f} ms is below lat_init={lat_init:.3f} ms; the fastest architecture of the "
            f"space takes {fastest.latency_ms:.3f} ms ({fastest.config.summary()})"
        )
    targets = _sweep_targets(settings, fastest, top, lat_init, lat_max)
    runs: list[TargetRun] = []
    bar = tqdm(targets, desc="search targets", disable=not progress, leave=False)
    for index, target in enumerate(bar):
        runs.append(_run_target(space, ev, settings, index, target, lat_init))
        bar.set_postfix(candidates=len(ev.archive))
    bar.close()
    if settings.acc_max is not None and not any(run.found for run in runs):
        raise _no_solution(runs, (targets[0][0], settings.acc_r), lat_max, fastest, top)
    notes = [
        f"target acc_max={run.acc_max:.2f}: no architecture in range after {run.iterations} samples"
        for run in runs
        if not run.found
    ]
    front = _front_within(ev, settings, lat_max, min_accuracy)
    levels = choose_levels(front, n_levels=n_levels, min_step=min_step)
    if len(levels) < n_levels:
        notes.append(
            f"only {len(levels)} of {n_levels} levels fit: the front spans "
            f"{front[-1].accuracy - front[0].accuracy:.2f} points with a minimum step of {min_step}"
        )
    return SearchResult(
        candidates=ev.candidates(),
        front=front,
        levels=levels,
        runs=runs,
        settings=replace(settings, lat_init=lat_init, lat_max=lat_max),
        space=space,
        fastest=fastest,
        most_accurate=top,
        seconds=time.perf_counter() - started,
        accuracy_evaluations=ev.accuracy_evaluations,
        latency_evaluations=ev.latency_evaluations,
        notes=notes,
    )
