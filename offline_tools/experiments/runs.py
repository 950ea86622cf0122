"""The camera-like frame loop every experiment runs, through :class:`DynamicClassifier`.

Frames are captured at ``fps`` (0 = back-to-back; a late frame is not queued: the next capture is
at the later of the next tick and now). Each frame goes through
:meth:`DynamicClassifier.classify` -- the same infer -> observe -> next-level loop the ROS node
runs -- whose latency (from handing the frame over to the result: validation, preprocessing,
model, probabilities back on the host) is what the manager compares with the budget.

A :class:`Rig` holds what the runs share (engine, camera frames, accuracies, manager settings)
and builds the classifiers: dynamic ones with the measured look-up latencies (``levels=``),
static baselines locked with ``set_level``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dynamic_ofa_ros.classifier import DynamicClassifier
from dynamic_ofa_ros.coordinator import Coordinator, PeerStatus
from dynamic_ofa_ros.engine import LevelEngine
from dynamic_ofa_ros.manager import Decision, LevelSpec, ManagerConfig
from dynamic_ofa_ros.timing import percentile
from offline_tools.experiments.budgets import monotone
from offline_tools.experiments.processes import wait_until
from offline_tools.experiments.records import LatencyStats, ManagerSummary, RunRecord

__all__ = ["Action", "Pacer", "Rig", "Schedule", "manager_summary", "measure_levels", "run_frames", "warm_up"]

#: ``(t, fn)``: call ``fn`` once at the first frame at or after ``t`` seconds into the run.
Action = tuple[float, Callable[[], None]]


@dataclass(frozen=True)
class Rig:
    """What every run of one process shares; builds its classifiers.

    Attributes:
        engine: every level materialised once.
        images: the camera's frames (one size), cycled through.
        accuracy: top-1 (%) per level, as the manager sees it.
        table_latency: the level table's latency per level (for locked classifiers).
        manager_config: window size and statistic of every dynamic run.
    """

    engine: LevelEngine
    images: Sequence[np.ndarray]
    accuracy: Mapping[int, float]
    table_latency: Mapping[int, float]
    manager_config: ManagerConfig

    @property
    def levels(self) -> list[int]:
        """Level numbers, lowest first."""
        return sorted(self.accuracy)

    def specs(self, lut: Mapping[int, float] | None = None) -> tuple[LevelSpec, ...]:
        """The levels as the manager sees them: ``lut`` (default: the table's) as their latencies."""
        latency = monotone(self.table_latency if lut is None else lut)
        return tuple(
            LevelSpec(level=lvl, latency_ms=latency[lvl], accuracy=self.accuracy[lvl])
            for lvl in sorted(latency)
        )

    def classifier(
        self,
        lut: Mapping[int, float] | None = None,
        *,
        level: int | None = None,
        name: str = "dynamic_ofa",
        on_switch: Callable[[Decision], None] | None = None,
        coordinator: Coordinator | None = None,
        group: str = "",
        publish: Callable[[PeerStatus], None] | None = None,
    ) -> DynamicClassifier:
        """A classifier on the engine with ``lut`` as the look-up latencies; ``level``: locked there."""
        classifier = DynamicClassifier(
            self.engine,
            manager_config=self.manager_config,
            levels=self.specs(lut),
            name=name,
            coordinator=coordinator,
            group=group,
            publish=publish,
            clock=time.monotonic,
            on_switch=on_switch,
        )
        if level is not None:
            classifier.set_level(level)
        return classifier

    def frame(self, i: int) -> np.ndarray:
        """The ``i``-th camera frame (the images cycled)."""
        return self.images[i % len(self.images)]


class Pacer:
    """Paces captures at ``fps`` (0: no pacing); a late capture is not made up for."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.next_t = time.monotonic()

    def restart(self) -> float:
        """Start the ticks now; returns now (``time.monotonic``)."""
        self.next_t = time.monotonic()
        return self.next_t

    def capture(self) -> float:
        """Wait for the next tick; the capture time (``time.monotonic``)."""
        if self.period:
            now = time.monotonic()
            if self.next_t > now:
                time.sleep(self.next_t - now)
            self.next_t = max(self.next_t + self.period, time.monotonic())
        return time.monotonic()


@dataclass(frozen=True)
class Schedule:
    """When a run's frames come and what happens meanwhile.

    Attributes:
        duration_s: length of the run.
        fps: camera rate (0 = back-to-back).
        budget_at: the budget ``t`` seconds after the start (a change applies before that frame).
        load_flag: whether the co-located load runs (sampled at capture).
        actions: ``(t, fn)`` called once at the first frame at or after ``t`` (start/stop the load);
            those past the end still run after it.
        start_at: a ``time.monotonic()`` instant to start at (to align processes).
        before_frame: called before every frame (fig. 8: hand over the peers' statuses).
    """

    duration_s: float
    fps: float
    budget_at: Callable[[float], float]
    load_flag: Callable[[], bool] | None = None
    actions: Sequence[Action] = ()
    start_at: float | None = None
    before_frame: Callable[[], None] | None = None


def _classify(classifier: DynamicClassifier, image: np.ndarray) -> tuple[int, float, float]:
    """One frame: ``(level, latency_ms, inference_ms)``; the latency runs from handing it over."""
    result = classifier.classify(image, captured_at=time.monotonic())
    return result.level, result.latency_ms, result.inference_ms


def warm_up(classifier: DynamicClassifier, images: Sequence[np.ndarray], frames: int) -> None:
    """Run ``frames`` frames at the classifier's current level without feeding its manager.

    A twin locked at that level does the work, so the run's first window starts clean.
    """
    if frames <= 0:
        return
    twin = DynamicClassifier(classifier.engine, levels=classifier.levels)
    twin.set_level(classifier.current_level)
    for i in range(frames):
        twin.classify(images[i % len(images)])


def manager_summary(classifier: DynamicClassifier) -> ManagerSummary:
    """The manager's own counters at the end of a run."""
    st = classifier.status()
    return {
        "frames": st.frames,
        "violations": st.violations,
        "switches": st.switches,
        "last_reaction_frames": st.last_reaction_frames,
        "last_reaction_ms": round(float(st.last_reaction_ms), 3),
        "mode": st.mode,
    }


def run_frames(
    classifier: DynamicClassifier,
    images: Sequence[np.ndarray],
    schedule: Schedule,
    *,
    name: str,
    warmup_frames: int = 0,
) -> RunRecord:
    """Run the camera-like loop for ``schedule.duration_s`` and record every frame.

    The first budget is set, ``warmup_frames`` run at the level it gives (:func:`warm_up`), then
    frames run until the end of the schedule. A dynamic run (no level locked) also records the
    manager's counters (``RunRecord.manager``).
    """
    rec = RunRecord(name=name)
    budget = schedule.budget_at(0.0)
    classifier.set_constraints(latency_budget_ms=budget)
    warm_up(classifier, images, warmup_frames)
    pending = sorted(schedule.actions, key=lambda a: a[0])
    pacer = Pacer(schedule.fps)
    wait_until(schedule.start_at)
    t_start = pacer.restart()
    rec.t0_monotonic = t_start
    i = 0
    while (elapsed := pacer.capture() - t_start) < schedule.duration_s:
        while pending and pending[0][0] <= elapsed:
            pending.pop(0)[1]()
        if (new_budget := schedule.budget_at(elapsed)) != budget:
            budget = new_budget
            classifier.set_constraints(latency_budget_ms=budget)
        loaded = 1 if schedule.load_flag is not None and schedule.load_flag() else 0
        if schedule.before_frame is not None:
            schedule.before_frame()
        level, latency, inference = _classify(classifier, images[i % len(images)])
        rec.append(elapsed, level, latency, inference, budget, loaded)
        i += 1
    for _, fn in pending:  # actions scheduled past the end (e.g. stopping the load) still run
        fn()
    if classifier.manager.manual_level == 0:
        rec.manager = manager_summary(classifier)
    return rec


def measure_levels(
    rig: Rig, levels: Iterable[int], *, frames: int, fps: float, warmup: int = 5
) -> dict[int, LatencyStats]:
    """Per level: p50/p95/mean latency over ``frames`` frames at ``fps``, the level locked.

    The same loop and latency as the runs (:meth:`DynamicClassifier.classify`).
    """
    out: dict[int, LatencyStats] = {}
    for lvl in levels:
        classifier = rig.classifier(level=lvl)
        warm_up(classifier, rig.images, warmup)
        pacer = Pacer(fps)
        samples = []
        for i in range(frames):
            pacer.capture()
            samples.append(_classify(classifier, rig.frame(i))[1])
        out[int(lvl)] = {
            "p50": percentile(samples, 50),
            "p95": percentile(samples, 95),
            "mean": float(np.mean(samples)),
        }
    return out
