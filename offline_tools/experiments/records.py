"""Per-frame records of a run and the metrics computed from them (``docs/experiments.md``, "Metrics").

A :class:`RunRecord` is the timeline of one run (capture time, level, latencies, budget, load per
frame); :func:`analyse_run` finds its events (:func:`find_events`) and measures how each was
reacted to; :func:`metric_fields` are the headline numbers every result and baseline carries;
:func:`combine_models` pools two models of fig. 8.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NotRequired, TypedDict, TypeVar

import numpy as np

from dynamic_ofa_ros.timing import percentile
from offline_tools.experiments.budgets import lut_level

__all__ = [
    "Combined",
    "Event",
    "EventReaction",
    "Headline",
    "LatencyStats",
    "LoadInterval",
    "ManagerSummary",
    "RunMetrics",
    "RunRecord",
    "Timeline",
    "analyse_run",
    "combine_models",
    "find_events",
    "metric_fields",
    "p95_of",
]


class LatencyStats(TypedDict):
    """Latency of one level over a measurement (ms)."""

    p50: float
    p95: float
    mean: float


def p95_of(stats: Mapping[int, LatencyStats]) -> dict[int, float]:
    """The p95 latency of every level of ``stats``."""
    return {lvl: st["p95"] for lvl, st in stats.items()}


class LoadInterval(TypedDict):
    """What the co-located training job did while it was switched on."""

    seconds: float
    steps: int
    steps_per_s: float


class ManagerSummary(TypedDict):
    """The runtime manager's own counters at the end of a run (its reaction measure, for comparison)."""

    frames: int
    violations: int
    switches: int
    last_reaction_frames: int
    last_reaction_ms: float
    mode: str


class Timeline(TypedDict):
    """A run's per-frame columns as stored in the JSON (every ``stride``-th frame)."""

    stride: int
    frames: int
    t: list[float]
    level: list[int]
    latency_ms: list[float]
    inference_ms: list[float]
    budget_ms: list[float]
    load: list[int]


@dataclass
class Event:
    """A change the system must react to, at frame ``frame`` of a run.

    ``kind``: ``start`` (first frame), ``budget`` (new latency budget), ``load_on`` /
    ``load_off`` (the co-located job or the peer classifier starts / stops). ``target`` is the
    level the manager should reach (the look-up-table choice when the model is alone), or
    ``None`` when only the budget matters (under load).
    """

    frame: int
    t: float
    kind: str
    target: int | None = None


@dataclass
class RunRecord:
    """Per-frame timeline of one run: capture time (s since start), level, latencies, budget, load.

    Besides the columns: ``t0_monotonic`` (``time.monotonic()`` at the start, to align processes),
    ``switch_reasons`` (the manager's switches by reason), ``manager`` (its counters; dynamic runs
    only), ``load_interval`` (fig. 7's job during the run), ``statuses`` (fig. 8: peer statuses
    published / received) and ``t_offset_s`` (fig. 8: shift onto the other model's clock).
    """

    name: str
    t: list[float] = field(default_factory=list)
    level: list[int] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    budget_ms: list[float] = field(default_factory=list)
    load: list[int] = field(default_factory=list)
    t0_monotonic: float = 0.0
    switch_reasons: dict[str, int] = field(default_factory=dict)
    manager: ManagerSummary | None = None
    load_interval: LoadInterval | None = None
    statuses: dict[str, int] | None = None
    t_offset_s: float | None = None

    def __len__(self) -> int:
        return len(self.t)

    def append(
        self, t: float, level: int, latency: float, inference: float, budget: float, load: int
    ) -> None:
        """Record one frame."""
        self.t.append(t)
        self.level.append(level)
        self.latency_ms.append(latency)
        self.inference_ms.append(inference)
        self.budget_ms.append(budget)
        self.load.append(load)

    def shift(self, offset_s: float) -> None:
        """Move the capture times by ``offset_s`` (onto another process's start), remembering it."""
        self.t = [t + offset_s for t in self.t]
        self.t_offset_s = round(offset_s, 4)

    def compact(self, max_points: int) -> Timeline:
        """Rounded column arrays for the JSON; every ``stride``-th frame when longer than ``max_points``."""
        stride = max(1, math.ceil(len(self) / max(1, max_points)))
        sl = slice(None, None, stride)
        return {
            "stride": stride,
            "frames": len(self),
            "t": [round(v, 4) for v in self.t[sl]],
            "level": self.level[sl],
            "latency_ms": [round(v, 3) for v in self.latency_ms[sl]],
            "inference_ms": [round(v, 3) for v in self.inference_ms[sl]],
            "budget_ms": [round(v, 3) for v in self.budget_ms[sl]],
            "load": self.load[sl],
        }


class EventReaction(TypedDict):
    """How one event was reacted to (``dynamic.events`` in the JSON)."""

    kind: str
    frame: int
    t: float
    target: int | None
    budget_ms: float
    deadline_frames: int | None
    level_frames: int | None
    reaction_frames: int | None
    reaction_ms: float | None
    frames_in_phase: int


class Headline(TypedDict):
    """The headline metrics every result and baseline carries."""

    deadline_hit_after_reaction: float | None
    reaction_frames: int | None
    reaction_ms: float | None
    recovery_frames: int | None
    recovery_ms: float | None
    window_size: int
    mean_accuracy: float
    deadline_hit_all: float


class RunMetrics(Headline):
    """Every metric of one run (:func:`analyse_run`); the experiment adds the last three."""

    recovery_events: int
    frames: int
    frames_scored: int
    latency_ms_p50: float
    latency_ms_p95: float
    level_share: dict[int, float]
    switches: int
    events: list[EventReaction]
    switch_reasons: NotRequired[dict[str, int]]
    statuses: NotRequired[dict[str, int]]
    manager: NotRequired[ManagerSummary | dict[str, int]]


class Combined(Headline):
    """Two models' metrics pooled (fig. 8): the headline plus the frame count."""

    frames: int


_N = TypeVar("_N", int, float)


def _worst(values: Sequence[_N | None], *, empty: _N | None) -> _N | None:
    """The largest value; ``None`` when one is ``None`` (never reacted); ``empty`` when there is none."""
    if not values:
        return empty
    known = [v for v in values if v is not None]
    return None if len(known) < len(values) else max(known)


def find_events(rec: RunRecord, alone_lut: Mapping[int, float]) -> list[Event]:
    """Events of ``rec``: its start, every budget change and every load on/off transition.

    Targets: with no load, the look-up-table level for the budget (``alone_lut``); under load none.
    """
    events: list[Event] = []
    for i in range(len(rec)):
        kinds = []
        if i == 0:
            kinds.append("start")
        else:
            if rec.budget_ms[i] != rec.budget_ms[i - 1]:
                kinds.append("budget")
            if rec.load[i] != rec.load[i - 1]:
                kinds.append("load_on" if rec.load[i] else "load_off")
        if not kinds:
            continue
        kind = "load_off" if "load_off" in kinds else ("load_on" if "load_on" in kinds else kinds[0])
        target = None if rec.load[i] else lut_level(alone_lut, rec.budget_ms[i])
        events.append(Event(frame=i, t=rec.t[i], kind=kind, target=target))
    return events


def _event_reaction(rec: RunRecord, ev: Event, end: int, window: int, hit: np.ndarray) -> EventReaction:
    """Frames (and ms) from ``ev`` until a full window meets the budget and the target level is reached."""
    deadline: int | None = None
    # a full window inside the phase (the whole phase when it is shorter than a window)
    for j in range(ev.frame, max(ev.frame, end - window) + 1):
        if hit[j : min(j + window, end)].all():
            deadline = j - ev.frame
            break
    level: int | None = 0
    if ev.target is not None:
        level = next((j - ev.frame for j in range(ev.frame, end) if rec.level[j] == ev.target), None)
    frames: int | None
    if ev.kind == "load_off":  # the budget is met anyway: the reaction is stepping back up
        frames = level
    elif deadline is None or level is None:
        frames = None
    else:
        frames = max(deadline, level)
    ms = None
    if frames is not None:
        last = min(ev.frame + frames, len(rec) - 1)
        ms = round((rec.t[last] - rec.t[ev.frame]) * 1000.0, 3)
    return {
        "kind": ev.kind,
        "frame": ev.frame,
        "t": round(ev.t, 4),
        "target": ev.target,
        "budget_ms": round(rec.budget_ms[ev.frame], 4),
        "deadline_frames": deadline,
        "level_frames": level,
        "reaction_frames": frames,
        "reaction_ms": ms,
        "frames_in_phase": end - ev.frame,
    }


def _excluded_frames(
    n: int,
    events: Sequence[Event],
    bounds: Sequence[int],
    reactions: Sequence[EventReaction],
    reaction_from: Sequence[EventReaction] | None,
) -> np.ndarray:
    """Frames left out of ``deadline_hit_after_reaction``: from each event to the end of its reaction."""
    excluded = np.zeros(n, dtype=bool)
    given: dict[str, list[int | None]] = {}
    for other in reaction_from or ():
        given.setdefault(other["kind"], []).append(other["reaction_frames"])
    seen: dict[str, int] = {}
    for ev, end, reaction in zip(events, bounds, reactions, strict=True):
        nth = seen.get(ev.kind, 0)
        seen[ev.kind] = nth + 1
        if ev.kind == "load_off":
            continue  # stepping up happens while the budget is met: nothing to exclude
        frames = reaction["reaction_frames"]
        if reaction_from is not None and nth < len(given.get(ev.kind, [])):
            frames = given[ev.kind][nth]
        stop = end if frames is None else min(end, ev.frame + frames)
        excluded[ev.frame : stop] = True
    return excluded


def analyse_run(
    rec: RunRecord,
    *,
    window: int,
    accuracy: Mapping[int, float],
    alone_lut: Mapping[int, float],
    reaction_from: Sequence[EventReaction] | None = None,
    static: bool = False,
) -> RunMetrics:
    """Metrics of one run (see ``docs/experiments.md`` for the definitions).

    ``static``: a run that never switches; its reaction is only the deadline part (no target
    level) and it has no recovery.

    ``reaction_from``: another run's ``events`` (``kind`` + ``reaction_frames``); the k-th event
    of a kind here then excludes as many frames from ``deadline_hit_after_reaction`` as the
    k-th event of that kind there. A baseline passes the dynamic run's, so that every run is
    scored on the same part of its timeline. Default: the run's own reactions (an event never
    reacted to excludes the rest of its phase).
    """
    n = len(rec)
    if n == 0:
        raise RuntimeError(f"run {rec.name!r} recorded no frame; give the experiment more time")
    hit = np.asarray(rec.latency_ms, dtype=float) <= np.asarray(rec.budget_ms, dtype=float)
    events = find_events(rec, alone_lut)
    if static:
        for ev in events:
            ev.target = None
    bounds = [ev.frame for ev in events[1:]] + [n]
    reactions = [_event_reaction(rec, ev, end, window, hit) for ev, end in zip(events, bounds, strict=True)]
    scored = hit[~_excluded_frames(n, events, bounds, reactions, reaction_from)]
    restoring = [r for r in reactions if r["kind"] != "load_off"]
    recovering = [] if static else [r for r in reactions if r["kind"] == "load_off"]
    levels, counts = np.unique(np.asarray(rec.level), return_counts=True)
    return {
        "deadline_hit_after_reaction": float(scored.mean()) if scored.size else None,
        "reaction_frames": _worst([r["reaction_frames"] for r in restoring], empty=0),
        "reaction_ms": _worst([r["reaction_ms"] for r in restoring], empty=0.0),
        "recovery_frames": _worst([r["reaction_frames"] for r in recovering], empty=None),
        "recovery_ms": _worst([r["reaction_ms"] for r in recovering], empty=None),
        "recovery_events": len(recovering),
        "window_size": window,
        "mean_accuracy": float(np.mean([accuracy[lv] for lv in rec.level])),
        "deadline_hit_all": float(hit.mean()),
        "frames": n,
        "frames_scored": int(scored.size),
        "latency_ms_p50": percentile(rec.latency_ms, 50),
        "latency_ms_p95": percentile(rec.latency_ms, 95),
        "level_share": {int(lv): round(int(c) / n, 4) for lv, c in zip(levels, counts, strict=True)},
        "switches": int(np.count_nonzero(np.diff(np.asarray(rec.level)))) if n > 1 else 0,
        "events": reactions,
    }


def metric_fields(metrics: RunMetrics | Combined) -> Headline:
    """The headline fields (the ones every result and baseline carries)."""
    return {
        "deadline_hit_after_reaction": metrics["deadline_hit_after_reaction"],
        "reaction_frames": metrics["reaction_frames"],
        "reaction_ms": metrics["reaction_ms"],
        "recovery_frames": metrics["recovery_frames"],
        "recovery_ms": metrics["recovery_ms"],
        "window_size": metrics["window_size"],
        "mean_accuracy": metrics["mean_accuracy"],
        "deadline_hit_all": metrics["deadline_hit_all"],
    }


def combine_models(models: Mapping[str, RunMetrics], window: int) -> Combined:
    """Pool models' metrics: frame-weighted hit rate and accuracy, worst reaction.

    A reaction is ``None`` if one model never reacted; recovery counts only the models whose
    load (the peer) stopped.
    """
    runs = list(models.values())
    scored = sum(m["frames_scored"] for m in runs)
    hits = sum((m["deadline_hit_after_reaction"] or 0.0) * m["frames_scored"] for m in runs)
    frames = sum(m["frames"] for m in runs)
    recovering = [m for m in runs if m["recovery_events"]]
    return {
        "deadline_hit_after_reaction": hits / scored if scored else None,
        "reaction_frames": _worst([m["reaction_frames"] for m in runs], empty=None),
        "reaction_ms": _worst([m["reaction_ms"] for m in runs], empty=None),
        "recovery_frames": _worst([m["recovery_frames"] for m in recovering], empty=None),
        "recovery_ms": _worst([m["recovery_ms"] for m in recovering], empty=None),
        "window_size": window,
        "mean_accuracy": sum(m["mean_accuracy"] * m["frames"] for m in runs) / frames,
        "deadline_hit_all": sum(m["deadline_hit_all"] * m["frames"] for m in runs) / frames,
        "frames": frames,
    }
