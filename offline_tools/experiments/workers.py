"""Fig. 8's two classifier processes (``A`` and ``B``), each with its own engine and classifier.

The parent (:class:`WorkerPair`) sends commands -- measure every level, load the device
back-to-back ("hog"), run -- and collects the replies. Each worker's status travels to the other
through a ``multiprocessing`` queue: a coordinated :class:`DynamicClassifier` publishes its
:class:`PeerStatus` at each window boundary into the peer's inbox, and hands the statuses that
arrived in its own inbox to :meth:`DynamicClassifier.update_peer` before every frame.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Lock

from dynamic_ofa_ros.classifier import DynamicClassifier
from dynamic_ofa_ros.coordinator import Coordinator, PeerStatus
from offline_tools.experiments.context import Context, build_context
from offline_tools.experiments.figures import count_switches
from offline_tools.experiments.processes import drain
from offline_tools.experiments.records import LatencyStats, RunRecord
from offline_tools.experiments.runs import Schedule, measure_levels, run_frames
from offline_tools.experiments.settings import Inputs, Settings

__all__ = ["GROUP", "HogCmd", "MeasureCmd", "QuitCmd", "Reply", "RunCmd", "WorkerPair"]

#: The coordination group of the two classifiers.
GROUP = "fig8"


@dataclass(frozen=True)
class MeasureCmd:
    """Measure every level of ``levels`` (alone or while the peer hogs the device)."""

    levels: tuple[int, ...]
    frames: int
    fps: float


@dataclass(frozen=True)
class HogCmd:
    """Run ``level`` back-to-back until ``until`` (``time.monotonic``) or until told to stop."""

    level: int
    until: float


@dataclass(frozen=True)
class RunCmd:
    """One run: ``mode`` ``coordinated`` | ``reactive`` | ``static`` (locked at ``level``)."""

    name: str
    mode: str
    level: int | None
    budget_ms: float
    lut: dict[int, float]
    start_at: float
    duration_s: float
    fps: float
    peer_timeout_s: float


@dataclass(frozen=True)
class QuitCmd:
    """Stop serving."""


Command = MeasureCmd | HogCmd | RunCmd | QuitCmd


@dataclass(frozen=True)
class Reply:
    """A worker's answer: ``kind`` ``ready`` | ``measure`` | ``hog`` | ``run`` | ``error``."""

    name: str
    kind: str
    record: RunRecord | None = None
    stats: dict[int, LatencyStats] | None = None
    frames: int = 0
    error: str = ""


@dataclass(frozen=True)
class _Channels:
    """One worker's queues and flags (``own_flag``: it is running; the peer sees it as its load)."""

    commands: Queue[Command]
    replies: Queue[Reply]
    inbox: Queue[PeerStatus]
    outbox: Queue[PeerStatus]
    own_flag: Synchronized[int]
    peer_flag: Synchronized[int]
    stop: Synchronized[int]


def _classifier_worker(
    name: str, inputs: Inputs, settings: Settings, channels: _Channels, setup_lock: Lock | None
) -> None:
    """Process body of one classifier: build the engine, then serve commands until :class:`QuitCmd`."""
    try:
        ctx = build_context(inputs, settings, measure=False, quiet=True, setup_lock=setup_lock)
        channels.replies.put(Reply(name, "ready"))
        _serve(name, ctx, channels)
    except BaseException as exc:
        channels.replies.put(
            Reply(name, "error", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
        )


def _serve(name: str, ctx: Context, ch: _Channels) -> None:
    while True:
        cmd = ch.commands.get()
        if isinstance(cmd, QuitCmd):
            drain(ch.inbox)  # let the peer's queue feeder flush, so that it can exit
            ch.outbox.cancel_join_thread()
            return
        if isinstance(cmd, MeasureCmd):
            warmup = ctx.settings.warmup_frames
            stats = measure_levels(ctx.rig, cmd.levels, frames=cmd.frames, fps=cmd.fps, warmup=warmup)
            ch.replies.put(Reply(name, "measure", stats=stats))
        elif isinstance(cmd, HogCmd):
            ch.replies.put(Reply(name, "hog", frames=_hog(ctx, cmd, ch)))
        else:
            ch.replies.put(Reply(name, "run", record=_run(ctx, cmd, ch)))


def _hog(ctx: Context, cmd: HogCmd, ch: _Channels) -> int:
    """Load the device: ``cmd.level`` back-to-back until the deadline or the stop flag; frames run."""
    classifier = ctx.rig.classifier(level=cmd.level)
    frames = 0
    ch.own_flag.value = 1
    while not ch.stop.value and time.monotonic() < cmd.until:
        classifier.classify(ctx.rig.frame(frames))
        frames += 1
    ch.own_flag.value = 0
    return frames


def _run(ctx: Context, cmd: RunCmd, ch: _Channels) -> RunRecord:
    """One fig. 8 run of this classifier: static, reactive alone, or coordinated through the queues."""
    reasons = {"coordinator": 0, "violation": 0, "slack": 0}
    statuses = {"published": 0, "received": 0}
    drain(ch.inbox)  # statuses left over from the previous run
    classifier: DynamicClassifier
    before_frame: Callable[[], None] | None = None
    if cmd.mode == "static":
        classifier = ctx.rig.classifier(cmd.lut, level=cmd.level, name=cmd.name)
    elif cmd.mode == "coordinated":

        def publish(status: PeerStatus) -> None:
            statuses["published"] += 1
            ch.outbox.put(status)

        coordinator = Coordinator(cmd.name, timeout_s=cmd.peer_timeout_s, clock=time.monotonic)
        classifier = ctx.rig.classifier(
            cmd.lut,
            name=cmd.name,
            on_switch=count_switches(reasons),
            coordinator=coordinator,
            group=GROUP,
            publish=publish,
        )

        def before_frame() -> None:
            for status in drain(ch.inbox):
                statuses["received"] += 1
                classifier.update_peer(status)

    else:
        classifier = ctx.rig.classifier(cmd.lut, name=cmd.name, on_switch=count_switches(reasons))

    def running() -> None:
        ch.own_flag.value = 1

    schedule = Schedule(
        duration_s=cmd.duration_s,
        fps=cmd.fps,
        budget_at=lambda _t: cmd.budget_ms,
        load_flag=lambda: bool(ch.peer_flag.value),
        actions=((0.0, running),),
        start_at=cmd.start_at,
        before_frame=before_frame,
    )
    try:
        rec = run_frames(
            classifier, ctx.rig.images, schedule, name=cmd.name, warmup_frames=ctx.settings.warmup_frames
        )
    finally:
        ch.own_flag.value = 0
    rec.switch_reasons = reasons
    rec.statuses = statuses
    return rec


class WorkerPair:
    """The two classifier processes of fig. 8 (``A`` and ``B``) with their queues and flags."""

    names = ("A", "B")

    def __init__(self, inputs: Inputs, settings: Settings, setup_lock: Lock | None = None) -> None:
        ctx = mp.get_context("spawn")
        self.replies: Queue[Reply] = ctx.Queue()
        self.commands: dict[str, Queue[Command]] = {n: ctx.Queue() for n in self.names}
        # kept here: a queue collected before its process has unpickled it would be gone
        self.inboxes: dict[str, Queue[PeerStatus]] = {n: ctx.Queue() for n in self.names}
        self.flag: dict[str, Synchronized[int]] = {n: ctx.Value(ctypes.c_int, 0) for n in self.names}
        self.stop: Synchronized[int] = ctx.Value(ctypes.c_int, 0)
        self.timeout = settings.worker_start_timeout_s
        self.procs = []
        for me, peer in (("A", "B"), ("B", "A")):
            channels = _Channels(
                commands=self.commands[me],
                replies=self.replies,
                inbox=self.inboxes[me],
                outbox=self.inboxes[peer],
                own_flag=self.flag[me],
                peer_flag=self.flag[peer],
                stop=self.stop,
            )
            proc = ctx.Process(
                target=_classifier_worker,
                args=(me, inputs, settings, channels, setup_lock),
                daemon=True,
                name=f"dofa-classifier-{me}",
            )
            proc.start()
            self.procs.append(proc)
        self._spawned = time.monotonic()
        self.startup_s = math.nan

    def wait_ready(self) -> None:
        """Block until both classifiers have built their engines (raise if one failed)."""
        if math.isnan(self.startup_s):
            self.collect("ready", timeout=self.timeout)
            self.startup_s = time.monotonic() - self._spawned

    def send(self, name: str, cmd: Command) -> None:
        """Queue a command for one worker."""
        self.commands[name].put(cmd)

    def collect(self, kind: str, *, timeout: float, names: Sequence[str] = ("A", "B")) -> dict[str, Reply]:
        """Wait for one ``kind`` reply from each of ``names``; raise on a worker error or timeout."""
        got: dict[str, Reply] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(names):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"fig8 workers: no {kind!r} answer from {sorted(set(names) - set(got))} "
                    f"within {timeout:.0f} s"
                )
            try:
                reply = self.replies.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [p.name for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"fig8 workers died: {dead}") from None
                continue
            if reply.kind == "error":
                raise RuntimeError(f"fig8 worker {reply.name} failed: {reply.error}")
            if reply.kind == kind:
                got[reply.name] = reply
        return got

    def measure(
        self, levels: Sequence[int], frames: int, fps: float, *, hog_level: int | None = None
    ) -> dict[int, LatencyStats]:
        """Per-level latencies measured by ``A``, alone or while ``B`` runs ``hog_level`` back-to-back."""
        if hog_level is not None:
            self.stop.value = 0
            self.send("B", HogCmd(level=hog_level, until=time.monotonic() + 600.0))
            t0 = time.monotonic()
            while not self.flag["B"].value:
                if time.monotonic() - t0 > 60.0:
                    raise RuntimeError("fig8: B did not start loading the device within 60 s")
                time.sleep(0.005)
        self.send("A", MeasureCmd(levels=tuple(levels), frames=frames, fps=fps))
        try:
            stats = self.collect("measure", timeout=300.0, names=("A",))["A"].stats
        finally:
            self.stop.value = 1
        if hog_level is not None:
            self.collect("hog", timeout=60.0, names=("B",))
        if stats is None:
            raise RuntimeError("fig8: A's measurement came back empty")
        return stats

    def close(self) -> None:
        """Ask both to quit, then join (terminate when stuck)."""
        for n in self.names:
            self.send(n, QuitCmd())
        for proc in self.procs:
            proc.join(timeout=10.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5.0)
