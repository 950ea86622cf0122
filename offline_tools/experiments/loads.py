"""Fig. 7's co-located training job: a torchvision ResNet-18 training in another process.

The job is spawned at start-up, builds its model and runs two warm-up steps, then idles until
:meth:`TrainingLoad.on`; :meth:`TrainingLoad.off` stops it after the current step. It trains on
random data (SGD, momentum 0.9) only to load the device the classifier runs on.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event, Lock

import torch

from offline_tools.experiments.processes import locked
from offline_tools.experiments.records import LoadInterval
from offline_tools.experiments.settings import Settings

__all__ = ["LoadJob", "TrainingLoad", "start_training_load"]


@dataclass(frozen=True)
class LoadJob:
    """What the training job trains: device, batch size, input resolution, CPU threads (0 = torch's)."""

    device: str
    batch: int
    resolution: int
    threads: int


@dataclass(frozen=True)
class _Signals:
    """Shared state between the parent and the job (passed to the spawned process)."""

    ready: Event
    go: Event
    quit: Event
    active: Synchronized[int]
    steps: Synchronized[int]
    errors: Queue[str]


def _training_step(job: LoadJob) -> Callable[[], None]:
    """Build ResNet-18, SGD and a random batch on ``job.device``; one training step per call."""
    import torchvision

    dev = torch.device(job.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(job.batch, 3, job.resolution, job.resolution, device=dev)
    y = torch.randint(0, 1000, (job.batch,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    return step


def _training_job(job: LoadJob, signals: _Signals, setup_lock: Lock | None) -> None:
    """Process body: train while ``go`` is set, until ``quit``; the set-up runs under ``setup_lock``."""
    try:
        if job.threads > 0:
            torch.set_num_threads(job.threads)
        with locked(setup_lock):
            step = _training_step(job)
            for _ in range(2):  # cuDNN autotuning / allocator warm-up before we count as ready
                step()
        signals.ready.set()
        while not signals.quit.is_set():
            if not signals.go.wait(timeout=0.02):
                continue
            signals.active.value = 1
            while signals.go.is_set() and not signals.quit.is_set():
                step()
                with signals.steps.get_lock():
                    signals.steps.value += 1
            signals.active.value = 0
    except BaseException as exc:  # reported to the parent, which raises it
        signals.errors.put(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
        signals.ready.set()


class TrainingLoad:
    """A ResNet-18 training job in another process (spawned), started and stopped on demand.

    ``on()`` lets it train (it reports ``running`` once the first step is launched), ``off()``
    stops it after the current step. ``timeout_s`` bounds its start-up (:meth:`wait_ready`).
    """

    def __init__(self, job: LoadJob, *, timeout_s: float, setup_lock: Lock | None = None) -> None:
        ctx = mp.get_context("spawn")
        self.job = job
        self.signals = _Signals(
            ready=ctx.Event(),
            go=ctx.Event(),
            quit=ctx.Event(),
            active=ctx.Value(ctypes.c_int, 0),
            steps=ctx.Value(ctypes.c_long, 0),
            errors=ctx.Queue(),
        )
        self.proc = ctx.Process(
            target=_training_job,
            args=(job, self.signals, setup_lock),
            daemon=True,
            name="dofa-training-load",
        )
        self.proc.start()
        self._spawned = time.monotonic()
        self.timeout_s = timeout_s
        self.startup_s = math.nan
        self._on_at = 0.0
        self._steps_at = 0
        self.intervals: list[LoadInterval] = []

    @property
    def settings(self) -> dict[str, object]:
        """The job's settings for the result file."""
        return dict(asdict(self.job))

    def wait_ready(self) -> None:
        """Block until the job has built its model and run its warm-up steps (raise if it failed)."""
        if not math.isnan(self.startup_s):
            return
        while not self.signals.ready.wait(timeout=0.5):
            if not self.proc.is_alive():
                break
            if time.monotonic() - self._spawned > self.timeout_s:
                self.close()
                raise RuntimeError(f"the training job did not start within {self.timeout_s:.0f} s")
        self.startup_s = time.monotonic() - self._spawned
        self._check()

    def _check(self) -> None:
        try:
            msg: str | None = self.signals.errors.get_nowait()
        except queue.Empty:
            msg = None
        if msg is not None or not self.proc.is_alive():
            self.close()
            raise RuntimeError(f"the training job failed: {msg or 'process exited'}")

    @property
    def running(self) -> bool:
        """Whether it is training right now."""
        return bool(self.signals.active.value)

    def on(self) -> None:
        """Start training (returns at once)."""
        self._check()
        self._on_at = time.monotonic()
        self._steps_at = int(self.signals.steps.value)
        self.signals.go.set()

    def off(self) -> None:
        """Ask it to stop after the current step (returns at once; ``running`` drops when it has)."""
        self.signals.go.clear()

    def wait_running(self, wait_s: float = 30.0) -> None:
        """After :meth:`on`: wait (at most ``wait_s``) until the first step is under way."""
        t0 = time.monotonic()
        while not self.running and time.monotonic() - t0 < wait_s:
            time.sleep(0.005)

    def wait_idle(self, wait_s: float = 30.0) -> LoadInterval:
        """After :meth:`off`: wait until the job is idle; record and return the interval's step rate."""
        self.signals.go.clear()
        t0 = time.monotonic()
        while self.signals.active.value and time.monotonic() - t0 < wait_s:
            time.sleep(0.002)
        dur = max(time.monotonic() - self._on_at, 1e-9)
        done = int(self.signals.steps.value) - self._steps_at
        interval: LoadInterval = {
            "seconds": round(dur, 3),
            "steps": done,
            "steps_per_s": round(done / dur, 2),
        }
        self.intervals.append(interval)
        return interval

    def close(self) -> None:
        """Stop and join the process."""
        self.signals.go.clear()
        self.signals.quit.set()
        self.proc.join(timeout=15.0)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5.0)


def start_training_load(settings: Settings, setup_lock: Lock | None = None) -> TrainingLoad:
    """Spawn fig. 7's training job (returns at once; it idles until :meth:`TrainingLoad.on`)."""
    job = LoadJob(
        device=settings.device,
        batch=settings.load_batch,
        resolution=settings.load_resolution,
        threads=settings.load_threads,
    )
    return TrainingLoad(job, timeout_s=settings.worker_start_timeout_s, setup_lock=setup_lock)
