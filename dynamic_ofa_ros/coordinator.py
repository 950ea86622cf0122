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
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dynamic_ofa_ros.errors import ConstraintError
from dynamic_ofa_ros.manager import PRIORITIES, LevelSpec, RuntimeManager, validate_levels


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


class _Model:
    """Planner view of one peer: its table, constraints, measurement and interference estimate."""

    __slots__ = ("status", "lat", "acc", "n", "lower", "budget", "fresh", "slow", "k", "work_measured")

    def __init__(self, status: PeerStatus) -> None:
        self.status = status
        self.lat = tuple(spec.latency_ms for spec in status.levels)
        self.acc = tuple(spec.accuracy for spec in status.levels)
        self.n = len(self.lat)
        self.lower = 1
        if status.priority == "accuracy":
            floor = next((s.level for s in status.levels if s.accuracy >= status.min_accuracy), self.n)
            self.lower = min(floor, status.level)  # the planner never forces a step up to reach the floor
        self.budget = status.budget_ms
        self.fresh = False
        self.slow = 1.0
        self.k = 0.0
        self.work_measured = 0.0


def _measured_level(peer: PeerStatus, other: PeerStatus) -> int | None:
    """The level ``other`` ran at during ``peer``'s window, or ``None`` if it changed during it."""
    if other.since <= peer.window_start:
        return other.level
    if other.since >= peer.window_end:
        return other.previous_level or other.level
    return None


def plan_group(
    peers: Sequence[PeerStatus], *, margin: float = 0.85, down_margin: float = 0.95
) -> dict[str, int]:
    """The level of every model of a group for its next window (see the module docstring).

    ``peers`` are the statuses of all models of the group, including the caller's
    own; names must be unique. ``margin`` is the step-up hysteresis (predicted
    latency at most ``margin`` x budget after a step up), ``down_margin`` the
    target of a step down. Deterministic: the result depends only on the statuses.
    """
    if not 0.0 < margin <= down_margin <= 1.0:
        raise ConstraintError(f"need 0 < margin ({margin}) <= down_margin ({down_margin}) <= 1")
    ordered = sorted(peers, key=lambda peer: peer.name)
    names = [peer.name for peer in ordered]
    if len(set(names)) != len(names):
        raise ConstraintError(f"duplicate model names in group plan: {names}; give every model a unique name")
    models = [_Model(peer) for peer in ordered]
    count = len(models)
    plan = [peer.level for peer in ordered]

    for i, model in enumerate(models):
        peer = model.status
        if peer.window_mean_ms <= 0.0:
            continue
        work = 0.0
        stale = False
        for j, other in enumerate(models):
            if j == i:
                continue
            level = _measured_level(peer, other.status)
            if level is None:
                stale = True
                break
            work += other.lat[level - 1]
        if stale:
            continue
        model.fresh = True
        model.slow = peer.window_mean_ms / model.lat[peer.level - 1]
        model.work_measured = work
        model.k = max(0.0, model.slow - 1.0) / work if work > 0.0 else 0.0

    def predict(i: int, levels: Sequence[int]) -> float:
        model = models[i]
        work = sum(models[j].lat[levels[j] - 1] for j in range(count) if j != i)
        return model.lat[levels[i] - 1] * (model.slow + model.k * (work - model.work_measured))

    def excess(levels: Sequence[int]) -> float:
        total = 0.0
        for i, model in enumerate(models):
            if model.fresh and model.budget > 0.0:
                total += max(0.0, predict(i, levels) - down_margin * model.budget) / model.budget
        return total

    movable = [not model.status.locked and model.fresh for model in models]
    violated = any(
        model.fresh and model.budget > 0.0 and model.status.window_mean_ms > model.budget for model in models
    )
    if violated:
        while True:
            current = excess(plan)
            if current <= _EPS:
                break
            best = -1
            best_score = 0.0
            for i, model in enumerate(models):
                if not movable[i] or plan[i] <= model.lower:
                    continue
                trial = list(plan)
                trial[i] -= 1
                saved = current - excess(trial)
                if saved <= _EPS:
                    continue
                lost = max(model.acc[plan[i] - 1] - model.acc[plan[i] - 2], 1e-6)
                score = saved / lost
                if score > best_score * (1.0 + 1e-12) + _EPS:
                    best, best_score = i, score
            if best < 0:
                break
            plan[best] -= 1
    elif all(model.fresh for model in models):
        before = [predict(i, plan) for i in range(count)]
        best = -1
        best_score = 0.0
        for i, model in enumerate(models):
            if not movable[i] or plan[i] >= model.n:
                continue
            trial = list(plan)
            trial[i] += 1
            added = 0.0
            fits = True
            for j, other in enumerate(models):
                if other.budget <= 0.0:
                    continue
                after = predict(j, trial)
                if after > before[j] + _EPS:
                    if after > margin * other.budget:
                        fits = False
                        break
                    added += (after - before[j]) / other.budget
            if not fits:
                continue
            gained = model.acc[plan[i]] - model.acc[plan[i] - 1]
            score = (gained + 1e-6) / max(added, 1e-9)
            if score > best_score * (1.0 + 1e-12) + _EPS:
                best, best_score = i, score
        if best >= 0:
            plan[best] += 1
    return dict(zip(names, plan, strict=True))


class Coordinator:
    """One model's side of group coordination: remembers peers, decides its own level.

    ``timeout_s``: a peer not heard from for this long is forgotten. ``margin``,
    ``down_margin``: see :func:`plan_group`. ``up_windows``: a planned step up of
    this model is applied only when planned for this many consecutive decisions
    (hysteresis, like the manager's). ``clock`` (seconds) times the receipt of
    statuses, so peers' clocks need not agree for the timeout.
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
        self.name = self_name
        self.timeout_s = float(timeout_s)
        self.margin = float(margin)
        self.down_margin = float(down_margin)
        self.up_windows = up_windows
        self._clock = clock
        self._peers: dict[str, tuple[float, PeerStatus]] = {}
        self._up_streak = 0
        self.last_plan: dict[str, int] = {}

    def update(self, peer: PeerStatus) -> bool:
        """Remember a peer's latest status; returns ``False`` for this model's own status (ignored)."""
        if peer.name == self.name:
            return False
        self._peers[peer.name] = (float(self._clock()), peer)
        return True

    def forget_stale(self) -> list[str]:
        """Drop peers not heard from within ``timeout_s``; returns their names."""
        limit = float(self._clock()) - self.timeout_s
        gone = sorted(name for name, (seen, _) in self._peers.items() if seen < limit)
        for name in gone:
            del self._peers[name]
        return gone

    def peers(self, group: str | None = None) -> list[PeerStatus]:
        """Live peers (after :meth:`forget_stale`), sorted by name, optionally of one group."""
        self.forget_stale()
        return [
            status
            for name, (_, status) in sorted(self._peers.items())
            if group is None or status.group == group
        ]

    def decide(self, own: PeerStatus) -> int | None:
        """This model's level for its next window, or ``None`` when no live peer shares its group.

        ``None`` means: act alone (the manager's own reactive rule).
        """
        live = self.peers(own.group)
        if not live:
            self._up_streak = 0
            self.last_plan = {}
            return None
        plan = plan_group([own, *live], margin=self.margin, down_margin=self.down_margin)
        self.last_plan = plan
        target = plan[own.name]
        if target > own.level:
            self._up_streak += 1
            if self._up_streak < self.up_windows:
                return own.level
        self._up_streak = 0
        return target

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
