"""Coordination of several models that share one device (the paper's Fig. 8), as pure logic.

Every model of a *group* publishes a :class:`PeerStatus` (its level family,
level, budget and the mean latency of its last complete window). Each model's
:class:`Coordinator` collects its peers' statuses and, at each of its own window
boundaries, computes the same group plan with :func:`plan_group` and applies
only its own entry. Ties are broken by name, so every model computes the same
plan from the same statuses.

Interference model (first order, re-estimated every window): model ``i`` at
level ``l`` runs at ``latency_i(l) * (1 + k_i * W_i)`` where ``latency_i`` is its
profiled latency and ``W_i`` is the sum of the co-runners' *work*, taken as
their profiled latencies at their current levels. ``k_i`` is estimated from the
measured slow-down ``s_i = window_mean_i / latency_i(level_i)``:
``k_i = max(0, s_i - 1) / W_i``. So stepping any model down lowers everybody's
predicted latency, and the planner can trade one model's accuracy for
another's deadline.

The plan, at most one move per model per window:

* If a model with a fresh measurement violates its budget, repeatedly step down
  by one level the model whose step removes the most predicted excess latency
  (over ``down_margin`` x budget, summed over models, relative to each budget)
  per accuracy point lost, until no excess remains or nobody can step down.
* Otherwise, if every model is fresh, step up the one model with the most
  accuracy gained per (relative) predicted latency added, provided every model
  whose predicted latency rises stays within ``margin`` x its budget.

A measurement is *fresh* when the model has a complete window at its current
level and no co-runner changed level during that window (``since`` inside
``[window_start, window_end]``). Models without a fresh measurement, and locked
ones (manual or LUT mode), are held at their level this round.

Cost (proof sketch in :func:`plan_group`): a model's prediction is linear in the
group's total work while its own level stays, so a candidate step is evaluated in
``O(P)`` for ``P`` models, an iteration of the greedy in at most ``O(P^2)`` (lazily:
usually a few candidates), and there are at most ``P * (L - 1)`` iterations for
tables of ``L <= MAX_LEVELS`` levels. A :class:`Coordinator` holds at most
``max_peers`` peers (default 16), so a flood of statuses with distinct names cannot
make a plan expensive, and it plans on a snapshot, outside its lock.
"""

from __future__ import annotations

import math
import operator
import threading
import time
from bisect import insort
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dynamic_ofa_ros.errors import ConstraintError
from dynamic_ofa_ros.manager import PRIORITIES, LevelSpec, RuntimeManager, validate_levels

#: Most levels a coordinated model's table may have (the planner's cost grows with it;
#: tables chosen by ``dofa-levels`` have 3-7).
MAX_LEVELS = 16


@dataclass(frozen=True, kw_only=True)
class PeerStatus:
    """What one model of a group tells the others (validated on construction).

    * ``window_mean_ms``: mean end-to-end latency of the last complete window
      measured at ``level``; 0.0 when there is none yet (the model just switched).
    * ``budget_ms``: 0.0 = no budget (the model never violates).
    * ``since``: clock time (s) when ``level`` took effect; ``previous_level`` the
      level before it (0 = unknown).
    * ``window_start``/``window_end``: clock times (s) of the window behind
      ``window_mean_ms``. All times must come from one clock shared by the group
      (``time.monotonic`` on one host); leave them 0.0 to disable the freshness check.
    * ``locked``: the model will not follow a plan (manual level, or LUT mode).
    * ``stamp``: when the status was made (sender's clock; informational).
    * ``levels``: at most :data:`MAX_LEVELS` levels.
    """

    name: str
    group: str
    level: int
    budget_ms: float
    window_mean_ms: float
    levels: tuple[LevelSpec, ...]
    min_accuracy: float = 0.0
    priority: str = "latency"
    stamp: float = 0.0
    since: float = 0.0
    previous_level: int = 0
    window_start: float = 0.0
    window_end: float = 0.0
    locked: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConstraintError(f"peer status: name {self.name!r} must be a non-empty string")
        where = f"peer status from {self.name!r}"
        if not isinstance(self.group, str):
            raise ConstraintError(f"{where}: group {self.group!r} must be a string")
        try:
            specs = validate_levels(tuple(self.levels))
        except Exception as exc:  # LevelTableError, or a non-sequence
            raise ConstraintError(f"{where}: invalid level table ({exc}); ignore this status") from exc
        object.__setattr__(self, "levels", specs)
        n = len(specs)
        if n > MAX_LEVELS:
            raise ConstraintError(
                f"{where}: {n} levels, more than the {MAX_LEVELS} a coordinated model may have "
                "(they bound the planner's cost); ignore this status, or use a table with fewer levels"
            )
        level = _as_int(self.level, f"{where}: level")
        previous = _as_int(self.previous_level, f"{where}: previous_level")
        if not 1 <= level <= n or not 0 <= previous <= n:
            raise ConstraintError(
                f"{where}: level {level} / previous_level {previous} outside its table (1..{n}); "
                "ignore this status"
            )
        object.__setattr__(self, "level", level)
        object.__setattr__(self, "previous_level", previous)
        for name in (
            "budget_ms",
            "window_mean_ms",
            "min_accuracy",
            "stamp",
            "since",
            "window_start",
            "window_end",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConstraintError(f"{where}: {name}={value!r} must be a finite number")
            object.__setattr__(self, name, float(value))
        if self.budget_ms < 0.0 or self.window_mean_ms < 0.0:
            raise ConstraintError(f"{where}: budget_ms and window_mean_ms must be >= 0 (0 = none)")
        if not 0.0 <= self.min_accuracy <= 100.0:
            raise ConstraintError(f"{where}: min_accuracy={self.min_accuracy} must be in [0, 100]")
        if self.priority not in PRIORITIES:
            raise ConstraintError(
                f"{where}: priority {self.priority!r} is not one of {', '.join(PRIORITIES)}"
            )
        if self.window_end < self.window_start:
            raise ConstraintError(f"{where}: window_end is before window_start")
        object.__setattr__(self, "locked", bool(self.locked))

    @classmethod
    def from_manager(
        cls, manager: RuntimeManager, *, name: str, group: str, stamp: float | None = None
    ) -> PeerStatus:
        """The status a node publishes for its own model, taken from its manager.

        ``stamp`` defaults to the end of the manager's last window (or 0.0).
        """
        state = manager.status()
        window = state.last_window
        measured = (
            window is not None
            and window.level == state.level
            and window.first_frame >= state.level_since_frame
        )
        return cls(
            name=name,
            group=group,
            level=state.level,
            budget_ms=state.budget_ms or 0.0,
            window_mean_ms=window.mean_ms if measured and window is not None else 0.0,
            levels=manager.levels,
            min_accuracy=state.min_accuracy,
            priority=state.priority,
            stamp=stamp if stamp is not None else (window.end if window is not None else 0.0),
            since=state.level_since,
            previous_level=state.previous_level if state.previous_level != state.level else 0,
            window_start=window.start if measured and window is not None else 0.0,
            window_end=window.end if measured and window is not None else 0.0,
            locked=state.mode == "manual" or manager.mode == "lut",
        )


def _as_int(value: object, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConstraintError(f"{what}={value!r} must be an integer") from None


_EPS = 1e-9
#: Relative tolerance under which two candidates' scores count as tied (the first name wins).
_TIE = 1e-12


class _Model:
    """Planner view of one model: table, constraints, measurement and interference estimate.

    Without a fresh measurement ``slow``, ``k`` and ``work`` are 1, 0, 0 (predicted at
    its profiled latency), ``weight`` is 0 (its excess does not count) and it is not
    ``movable``; a fresh model with a budget has ``weight = 1 / budget``.
    """

    __slots__ = (
        "acc",
        "fresh",
        "k",
        "lat",
        "level",
        "lower",
        "movable",
        "n",
        "same",
        "slow",
        "target",
        "weight",
        "work",
    )

    def __init__(self, status: PeerStatus, down_margin: float) -> None:
        self.lat = tuple(spec.latency_ms for spec in status.levels)
        self.acc = tuple(spec.accuracy for spec in status.levels)
        self.n = len(self.lat)
        self.level = status.level
        self.lower = 1
        if status.priority == "accuracy":
            floor = next((s.level for s in status.levels if s.accuracy >= status.min_accuracy), self.n)
            self.lower = min(floor, status.level)  # the planner never forces a step up to reach the floor
        self.target = down_margin * status.budget_ms
        self.weight = 0.0
        self.fresh = False
        self.movable = False
        self.slow = 1.0
        self.k = 0.0
        self.work = 0.0
        self.same = 0

    def predict(self, level: int, total: float) -> float:
        """Predicted latency at ``level`` when the group's total work is ``total``."""
        cur = self.lat[level - 1]
        return cur * (self.slow + self.k * (total - cur - self.work))

    def line(self, level: int) -> tuple[float, float]:
        """Predicted excess over ``target`` at ``level`` as ``(slope, const)`` of the total work ``W``.

        The prediction ``lat(level) * (slow + k * (W - lat(level) - work))`` is linear
        in ``W`` while the model's own level stays.
        """
        cur = self.lat[level - 1]
        slope = cur * self.k
        return slope, cur * self.slow - slope * (cur + self.work) - self.target


def _measured_work(status: PeerStatus, others: Sequence[tuple[PeerStatus, _Model]]) -> float | None:
    """The co-runners' work during ``status``'s window, or ``None`` if one changed level during it.

    A co-runner ran its level if it took effect before the window, its previous level if
    it changed after the window (``previous_level``, when known).
    """
    work = 0.0
    start, end = status.window_start, status.window_end
    for other, model in others:
        if other is status:
            continue
        if other.since <= start:
            work += model.lat[other.level - 1]
        elif other.since >= end:
            work += model.lat[(other.previous_level or other.level) - 1]
        else:
            return None
    return work


def _models(ordered: Sequence[PeerStatus], down_margin: float) -> tuple[list[_Model], bool]:
    """The planner's models (freshness and interference estimate: O(P^2)) and whether one violates."""
    pairs = [(status, _Model(status, down_margin)) for status in ordered]
    violated = False
    for status, model in pairs:
        if status.window_mean_ms <= 0.0:
            continue
        work = _measured_work(status, pairs)
        if work is None:
            continue
        model.fresh = True
        model.movable = not status.locked
        model.slow = status.window_mean_ms / model.lat[status.level - 1]
        model.work = work
        model.k = max(0.0, model.slow - 1.0) / work if work > 0.0 else 0.0
        if status.budget_ms > 0.0:
            model.weight = 1.0 / status.budget_ms
            violated = violated or status.window_mean_ms > status.budget_ms
    kinds: dict[tuple[object, ...], int] = {}
    for _, model in pairs:  # a number for what makes two models' steps identical (see _step_down)
        kind = (model.lat, model.acc, model.slow, model.k, model.work, model.target, model.weight)
        model.same = kinds.setdefault(kind, len(kinds))
    return [model for _, model in pairs], violated


def _best(scores: Sequence[tuple[float, int]]) -> int:
    """The index of the best ``(score, index)`` (ties within ``_TIE`` to the lowest index); -1 if none."""
    if not scores:
        return -1
    top = max(score for score, _ in scores)
    threshold = top - (abs(top) * _TIE + _EPS)
    return min(index for score, index in scores if score >= threshold)


def _falls_to_floor(models: Sequence[_Model], counted: Sequence[int]) -> bool:
    """Whether the step-down loop would lower every movable model to its floor (a shortcut).

    True when, with every movable model at its floor, some excess remains and every
    single step of a movable model (from any of its levels, the others at their
    floors) still saves excess. By diminishing returns -- every excess is a convex
    hinge of a line in the total work, and a model's slope shrinks with its level, so
    a step saves no more when other models are lower -- each step on the loop's path
    then saves at least as much, and the loop cannot stop before the floor. One
    ``O(P * L * P)`` check instead of up to ``P * L`` loop iterations of ``O(P^2)``.
    """
    floor = [model.lower if model.movable else model.level for model in models]
    total = sum(model.lat[level - 1] for model, level in zip(models, floor, strict=True))
    lines = {i: models[i].line(floor[i]) for i in counted}
    if sum(models[i].weight * max(0.0, s * total + c) for i, (s, c) in lines.items()) <= 2 * _EPS:
        return False
    for j, model in enumerate(models):
        for level in range(floor[j] + 1, model.level + 1 if model.movable else 0):
            upper, lower = model.lat[level - 1], model.lat[level - 2]
            work = total - model.lat[floor[j] - 1] + upper  # the group's work with j at `level`
            step = lower - upper
            saved = 0.0
            for i, (slope, const) in lines.items():
                gap = slope * work + const
                if i != j and gap > 0.0:
                    saved += models[i].weight * (gap - max(0.0, gap + slope * step))
            if model.weight > 0.0:
                factor = model.slow + model.k * (work - upper - model.work)
                own = max(0.0, upper * factor - model.target) - max(0.0, lower * factor - model.target)
                saved += model.weight * own
            if saved <= 2 * _EPS:
                return False
    return True


def _excess_after(
    model: _Model, j: int, level: int, total: float, violating: Sequence[tuple[int, float, float, float]]
) -> float:
    """The group's excess after model ``j`` (at ``level``) steps down one level: ``O(P)``.

    ``violating`` holds ``(i, excess_i, slope_i, weight_i)`` of the models over their
    target. The step changes only the total work ``W`` (by ``step``), so every other
    excess moves along its line, and ``j``'s own is that of its line one level down.
    """
    step = model.lat[level - 2] - model.lat[level - 1]
    after = 0.0
    for i, gap, slope, weight in violating:
        moved = gap + slope * step
        if i != j and moved > 0.0:
            after += weight * moved
    if model.weight > 0.0:
        slope, const = model.line(level - 1)
        after += model.weight * max(0.0, slope * (total + step) + const)
    return after


def _step_down(models: Sequence[_Model], plan: list[int]) -> None:
    """Lower models one level at a time, most excess saved per accuracy point lost first (in place).

    Model ``i``'s excess is ``max(0, slope_i * W + const_i)`` in the group's total work
    ``W`` (:meth:`_Model.line`); the loop reduces ``E = sum_i weight_i * excess_i``.
    A candidate costs ``O(P)`` (:func:`_excess_after`).

    Lazy evaluation: a step of model ``j`` saves no more after other models stepped
    down (diminishing returns, see :func:`_falls_to_floor`), so the score computed
    for ``j`` at an earlier iteration bounds its score now. Each iteration evaluates
    candidates in order of those bounds and stops once no bound can reach the best
    score found (within the tie tolerance): the same choice as evaluating them all,
    usually after a few evaluations; at worst all ``P`` (``O(P^2)`` per iteration).
    Identical models at the same level (a flood of copies) save the same: they form
    one candidate, whose lowest index steps. A candidate whose step saves nothing
    never saves anything later and is dropped.
    """
    counted = [i for i, model in enumerate(models) if model.weight > 0.0]
    if _falls_to_floor(models, counted):
        for i, model in enumerate(models):
            if model.movable:
                plan[i] = model.lower
        return
    total = sum(model.lat[level - 1] for model, level in zip(models, plan, strict=True))
    lines = [model.line(level) for model, level in zip(models, plan, strict=True)]
    # candidates: identical movable models at the same level, by index; an upper bound of the score
    twins: dict[tuple[int, int], list[int]] = {}
    for i, model in enumerate(models):
        if model.movable and plan[i] > model.lower:
            twins.setdefault((model.same, plan[i]), []).append(i)
    bound = dict.fromkeys(twins, math.inf)
    excess = sum(models[i].weight * max(0.0, lines[i][0] * total + lines[i][1]) for i in counted)
    while twins and excess > _EPS:
        violating = [
            (i, gap, lines[i][0], models[i].weight)
            for i in counted
            if (gap := lines[i][0] * total + lines[i][1]) > 0.0
        ]
        scores: list[tuple[float, int]] = []
        after_of: dict[int, float] = {}
        top = -math.inf
        for key in sorted(twins, key=lambda twin: (-bound[twin], twins[twin][0])):
            if bound[key] < top - (abs(top) * _TIE + _EPS):
                break  # neither this candidate nor the rest can reach the best score
            j = twins[key][0]
            model, level = models[j], plan[j]
            after = _excess_after(model, j, level, total, violating)
            if excess - after <= _EPS:
                del twins[key], bound[key]
                continue
            bound[key] = (excess - after) / max(model.acc[level - 1] - model.acc[level - 2], 1e-6)
            top = max(top, bound[key])
            scores.append((bound[key], j))
            after_of[j] = after
        best = _best(scores)
        if best < 0:
            return
        model = models[best]
        key = (model.same, plan[best])
        twins[key].remove(best)
        if not twins[key]:  # otherwise its bound still holds for its other members
            del twins[key], bound[key]
        total += model.lat[plan[best] - 2] - model.lat[plan[best] - 1]
        plan[best] -= 1
        lines[best] = model.line(plan[best])
        if plan[best] > model.lower:  # a new step: unbounded, unless twins at that level have a bound
            key = (model.same, plan[best])
            insort(twins.setdefault(key, []), best)
            bound.setdefault(key, math.inf)
        excess = after_of[best]


def _step_up(models: Sequence[_Model], plan: list[int], margin: float, budgets: Sequence[float]) -> None:
    """Raise the one model with the most accuracy per relative latency added, if all stay in margin.

    Raising ``j`` changes only the total work (and ``j``'s own latency), so each
    candidate's check is ``O(P)`` predictions of ``O(1)``.
    """
    total = sum(model.lat[level - 1] for model, level in zip(models, plan, strict=True))
    before = [model.predict(level, total) for model, level in zip(models, plan, strict=True)]
    scores: list[tuple[float, int]] = []
    for j, model in enumerate(models):
        level = plan[j]
        if not model.movable or level >= model.n:
            continue
        raised = total + model.lat[level] - model.lat[level - 1]
        added = 0.0
        fits = True
        for i, budget in enumerate(budgets):
            if budget <= 0.0:
                continue
            after = models[i].predict(level + 1 if i == j else plan[i], raised)
            if after > before[i] + _EPS:
                if after > margin * budget:
                    fits = False
                    break
                added += (after - before[i]) / budget
        if fits:
            gained = model.acc[level] - model.acc[level - 1]
            scores.append(((gained + 1e-6) / max(added, 1e-9), j))
    best = _best(scores)
    if best >= 0:
        plan[best] += 1


def plan_group(
    peers: Sequence[PeerStatus], *, margin: float = 0.85, down_margin: float = 0.95
) -> dict[str, int]:
    """The level of every model of a group for its next window (see the module docstring).

    ``peers`` are the statuses of all models of the group, including the caller's
    own; names must be unique. ``margin`` is the step-up hysteresis (predicted
    latency at most ``margin`` x budget after a step up), ``down_margin`` the
    target of a step down. Deterministic: the result depends only on the statuses.

    Proof sketch of the cost, for ``P`` models with tables of at most ``L`` levels:

    * setup (freshness, interference estimate): ``O(P^2)``;
    * step down: every iteration lowers one model by one level and none raises one,
      so there are at most ``sum(level_i - lower_i) <= P * (L - 1)`` iterations. A
      model's prediction is linear in the group's total work ``W`` while its level
      stays, and a step changes only ``W`` (and the stepped model's own line), so a
      candidate's new excess costs ``O(P)`` and an iteration at most ``O(P^2)``:
      ``O(P^3 * L)`` in all. Diminishing returns (a step saves no more once other
      models are lower: each excess is a convex hinge of a line in ``W``) make an
      earlier score an upper bound of the current one, so most iterations evaluate
      only a few candidates (:func:`_step_down`); and when even the floor leaves
      excess that every step still reduces, the result (every movable model at its
      floor) follows from one ``O(P^2 * L)`` check (:func:`_falls_to_floor`);
    * step up: one ``O(P^2)`` evaluation.

    The choices are those of evaluating every candidate from scratch at every
    iteration (``O(P^2)`` per candidate, ``O(P^4 * L)`` in all), up to rounding.
    The loop ends with no predicted excess, or with no model that can step down and
    reduce it. A :class:`Coordinator` bounds ``P`` by ``max_peers + 1`` and
    :class:`PeerStatus` bounds ``L`` by :data:`MAX_LEVELS`.
    """
    if not 0.0 < margin <= down_margin <= 1.0:
        raise ConstraintError(f"need 0 < margin ({margin}) <= down_margin ({down_margin}) <= 1")
    ordered = sorted(peers, key=lambda peer: peer.name)
    names = [peer.name for peer in ordered]
    if len(set(names)) != len(names):
        raise ConstraintError(f"duplicate model names in group plan: {names}; give every model a unique name")
    models, violated = _models(ordered, down_margin)
    plan = [peer.level for peer in ordered]
    if violated:
        _step_down(models, plan)
    elif all(model.fresh for model in models):
        _step_up(models, plan, margin, [peer.budget_ms for peer in ordered])
    return dict(zip(names, plan, strict=True))


@dataclass(frozen=True)
class PlanInput:
    """Everything a plan needs, taken under the coordinator's lock (:meth:`Coordinator.snapshot`).

    ``own`` is this model's status, ``peers`` the live peers of its group sorted by
    name (at most ``max_peers``), ``margin`` / ``down_margin`` as in :func:`plan_group`.
    """

    own: PeerStatus
    peers: tuple[PeerStatus, ...]
    margin: float
    down_margin: float


def compute_plan(snapshot: PlanInput) -> dict[str, int] | None:
    """The group plan for a snapshot (pure, no lock needed); ``None`` when no peer is live.

    ``None`` means: act alone (the manager's own reactive rule).
    """
    if not snapshot.peers:
        return None
    return plan_group(
        [snapshot.own, *snapshot.peers], margin=snapshot.margin, down_margin=snapshot.down_margin
    )


class Coordinator:
    """One model's side of group coordination: remembers peers, decides its own level.

    ``timeout_s``: a peer not heard from for this long is forgotten. ``margin``,
    ``down_margin``: see :func:`plan_group`. ``up_windows``: a planned step up of
    this model is applied only when planned for this many consecutive decisions
    (hysteresis, like the manager's). ``clock`` (seconds) times the receipt of
    statuses, so peers' clocks need not agree for the timeout.

    **Bounded peer set.** At most ``max_peers`` peers are remembered (all groups
    together). A status from a known peer always refreshes it. A status from a new
    peer while the set is full first makes room by forgetting the peers not heard
    from within ``timeout_s``; if none is stale, the status is ignored and counted
    in :attr:`ignored`. So peers that keep publishing are never displaced by new
    names (a flood of invented names costs a dictionary look-up per status and
    at most ``max_peers`` peers in a plan), and a silent peer's slot is reused
    once it times out. Statuses the caller could not parse or validate are counted
    with :meth:`count_rejected` (:attr:`rejected`).

    Thread-safe: :meth:`update` (e.g. a subscription callback) and :meth:`decide`
    (the inference thread) may run concurrently. The lock is held to store a status,
    take a :meth:`snapshot` and :meth:`apply` a plan, never while planning
    (:func:`compute_plan` runs on the snapshot).
    """

    def __init__(
        self,
        self_name: str,
        *,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        margin: float = 0.85,
        down_margin: float = 0.95,
        up_windows: int = 2,
        max_peers: int = 16,
    ) -> None:
        if not isinstance(self_name, str) or not self_name:
            raise ConstraintError(f"coordinator name {self_name!r} must be a non-empty string")
        if (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, (int, float))
            or not 0.0 < timeout_s < math.inf
        ):
            raise ConstraintError(f"timeout_s={timeout_s!r} must be a positive number of seconds")
        if not 0.0 < margin <= down_margin <= 1.0:
            raise ConstraintError(f"need 0 < margin ({margin}) <= down_margin ({down_margin}) <= 1")
        if isinstance(up_windows, bool) or not isinstance(up_windows, int) or up_windows < 1:
            raise ConstraintError(f"up_windows={up_windows!r} must be an integer >= 1")
        if isinstance(max_peers, bool) or not isinstance(max_peers, int) or max_peers < 1:
            raise ConstraintError(f"max_peers={max_peers!r} must be an integer >= 1")
        self.name = self_name
        self.timeout_s = float(timeout_s)
        self.margin = float(margin)
        self.down_margin = float(down_margin)
        self.up_windows = up_windows
        self.max_peers = max_peers
        self._clock = clock
        self._lock = threading.Lock()
        self._peers: dict[str, tuple[float, PeerStatus]] = {}
        self._up_streak = 0
        self._last_plan: dict[str, int] = {}
        self._rejected = 0
        self._ignored = 0

    @property
    def last_plan(self) -> dict[str, int]:
        """The group plan of the last decision (``{}`` when it had no live peer)."""
        with self._lock:
            return dict(self._last_plan)

    @property
    def rejected(self) -> int:
        """Statuses refused as invalid (counted by the caller with :meth:`count_rejected`)."""
        with self._lock:
            return self._rejected

    @property
    def ignored(self) -> int:
        """Statuses of new peers ignored because ``max_peers`` live peers were known."""
        with self._lock:
            return self._ignored

    def count_rejected(self) -> None:
        """Count one status that could not be parsed or validated (see :attr:`rejected`)."""
        with self._lock:
            self._rejected += 1

    def update(self, peer: PeerStatus) -> bool:
        """Remember a peer's latest status; ``True`` when stored.

        ``False`` for this model's own status, and for a new peer while ``max_peers``
        live peers are known (counted in :attr:`ignored`; see the class docstring).
        """
        if peer.name == self.name:
            return False
        with self._lock:
            now = float(self._clock())
            if peer.name not in self._peers and len(self._peers) >= self.max_peers:
                self._forget_stale(now)
                if len(self._peers) >= self.max_peers:
                    self._ignored += 1
                    return False
            self._peers[peer.name] = (now, peer)
            return True

    def _forget_stale(self, now: float) -> list[str]:
        limit = now - self.timeout_s
        gone = sorted(name for name, (seen, _) in self._peers.items() if seen < limit)
        for name in gone:
            del self._peers[name]
        return gone

    def forget_stale(self) -> list[str]:
        """Drop peers not heard from within ``timeout_s``; returns their names."""
        with self._lock:
            return self._forget_stale(float(self._clock()))

    def _live(self, group: str | None) -> list[PeerStatus]:
        self._forget_stale(float(self._clock()))
        return [
            status
            for name, (_, status) in sorted(self._peers.items())
            if group is None or status.group == group
        ]

    def peers(self, group: str | None = None) -> list[PeerStatus]:
        """Live peers (after :meth:`forget_stale`), sorted by name, optionally of one group."""
        with self._lock:
            return self._live(group)

    def snapshot(self, own: PeerStatus) -> PlanInput:
        """What :func:`compute_plan` needs for ``own``'s next window (cheap: O(max_peers))."""
        with self._lock:
            peers = tuple(self._live(own.group))
        return PlanInput(own=own, peers=peers, margin=self.margin, down_margin=self.down_margin)

    def apply(self, snapshot: PlanInput, plan: dict[str, int] | None) -> int | None:
        """Record ``plan`` (from :func:`compute_plan` on ``snapshot``); return this model's level.

        ``None`` (no plan) means act alone. A planned step up is returned only when it
        was planned for ``up_windows`` consecutive decisions; until then the current level.
        """
        own = snapshot.own
        with self._lock:
            if plan is None:
                self._up_streak = 0
                self._last_plan = {}
                return None
            self._last_plan = dict(plan)
            target = plan[own.name]
            if target > own.level:
                self._up_streak += 1
                if self._up_streak < self.up_windows:
                    return own.level
            self._up_streak = 0
            return target

    def decide(self, own: PeerStatus) -> int | None:
        """This model's level for its next window, or ``None`` when no live peer shares its group.

        ``None`` means: act alone (the manager's own reactive rule). Equivalent to
        ``apply(snapshot, compute_plan(snapshot))`` with ``snapshot = self.snapshot(own)``:
        the plan is computed outside the coordinator's lock.
        """
        snapshot = self.snapshot(own)
        return self.apply(snapshot, compute_plan(snapshot))

    def attach(
        self,
        manager: RuntimeManager,
        *,
        group: str,
        publish: Callable[[PeerStatus], None] | None = None,
    ) -> None:
        """Make ``manager`` consult this coordinator at each window boundary.

        At every boundary the model's own status is built (:meth:`PeerStatus.from_manager`),
        handed to ``publish`` (e.g. a ROS publisher) and used for :meth:`decide`; without
        live peers the manager's own reactive rule runs.
        """

        def policy(mgr: RuntimeManager) -> int | None:
            own = PeerStatus.from_manager(mgr, name=self.name, group=group)
            if publish is not None:
                publish(own)
            return self.decide(own)

        manager.set_window_policy(policy)


def synthetic_group(models: int, *, violation: float = 1.5, group: str = "bench") -> list[PeerStatus]:
    """``models`` statuses that each claim to exceed their budget by ``violation`` x (for benchmarks).

    Every model has the same five-level table, runs its top level with a fresh
    window, and was slowed down by the others' work (``1 + 0.002 / ms`` of it); what a
    flood of spoofed peers looks like to the planner. Names ``m000``, ``m001``, ...
    """
    table = tuple(
        LevelSpec(level=i + 1, latency_ms=lat, accuracy=acc)
        for i, (lat, acc) in enumerate(
            zip((10.0, 14.0, 20.0, 28.0, 40.0), (70.0, 73.0, 76.0, 78.0, 80.0), strict=True)
        )
    )
    top = table[-1].latency_ms
    mean = top * (1.0 + 0.002 * top * (models - 1))
    return [
        PeerStatus(
            name=f"m{i:03d}",
            group=group,
            level=len(table),
            budget_ms=mean / violation,
            window_mean_ms=mean,
            levels=table,
        )
        for i in range(models)
    ]


def benchmark_plan(models: int = 17, *, violation: float = 1.5, repeats: int = 100) -> dict[str, float]:
    """Wall time of :func:`plan_group` on :func:`synthetic_group` in microseconds.

    Returns :func:`dynamic_ofa_ros.timing.summarize` of the times (``p50``, ``min``,
    ...) plus ``models``, ``violation`` and ``levels_lowered`` (the greedy's steps).
    """
    from dynamic_ofa_ros.timing import summarize

    peers = synthetic_group(models, violation=violation)
    times = []
    plan: dict[str, int] = {}
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        plan = plan_group(peers)
        times.append((time.perf_counter() - start) * 1e6)
    lowered = sum(peer.level - plan[peer.name] for peer in peers)
    return {**summarize(times), "models": float(models), "violation": violation, "levels_lowered": lowered}
