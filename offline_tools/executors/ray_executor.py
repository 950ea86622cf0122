"""``--executor ray``: candidates measured by Ray actors, on this machine or an existing cluster.

Each worker is a Ray actor (:class:`~offline_tools.executors.candidate.CandidateWorker`) that
receives the :class:`~offline_tools.executors.base.EvaluationSetup` once, through the object
store (super-network weights and, with ``data="store"``, the images decoded once by the driver;
with ``data="path"`` each worker decodes the images itself, once), and then measures candidate
after candidate. The driver keeps one candidate in flight per worker, in order of resolution,
and collects results as they finish; :meth:`RayExecutor.run` returns them in the order asked.

Faults: a worker that dies (killed, out of memory, node lost) is replaced and its candidate is
retried (``max_retries`` per candidate); results already delivered stay delivered, so a caller
persisting them in ``on_result`` loses nothing. Ctrl-C kills the workers and, for a local Ray
instance, shuts it down before the ``KeyboardInterrupt`` goes on.

``address=None`` starts a local Ray instance sized for the workers (``num_cpus = workers ×
threads``, the object store sized for the setup) and stops it in :meth:`RayExecutor.close`;
an address (``ray start --head`` prints one) joins that cluster and leaves it running.
Each worker reserves ``threads`` CPUs and, on CUDA, one GPU (``num_gpus=1``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

from dynamic_ofa_ros.arch import SubnetConfig
from offline_tools.executors.base import (
    CandidateResult,
    EvaluationSetup,
    ExecutorError,
    ExecutorSpec,
    ExecutorStats,
    ResultCallback,
    Timer,
)
from offline_tools.executors.candidate import CandidateProgress, CandidateWorker, resolution_order

__all__ = ["RayExecutor"]

_LOST = (RayActorError, WorkerCrashedError)
_MIB = 2**20


def _payload_bytes(setup: EvaluationSetup) -> int:
    """Bytes of the setup shipped through the object store (weights + decoded images)."""
    total = sum(int(t.numel() * t.element_size()) for t in setup.supernet.net.state_dict().values())
    for data in (setup.calibration, setup.validation):
        if data is not None and data.images is not None:
            total += sum(int(im.nbytes) for im in data.images.images)
    return total


def _cpu_setup(setup: EvaluationSetup) -> EvaluationSetup:
    """The setup with the super-network on the CPU (workers move sub-networks to their own GPU)."""
    if setup.supernet.device.type == "cpu":
        return setup
    net = copy.deepcopy(setup.supernet.net).cpu()
    return replace(setup, supernet=replace(setup.supernet, net=net))


@dataclass
class _Slot:
    """One worker: its actor handle and name."""

    name: str
    actor: Any  # a Ray ActorHandle (untyped proxy: its methods are created at run time)


class RayExecutor:
    """Measures candidates on Ray actors (see the module docstring)."""

    kind = "ray"

    def __init__(
        self, setup: EvaluationSetup, spec: ExecutorSpec, *, progress: bool = True, desc: str = "measure"
    ) -> None:
        self.spec = spec
        self.progress = progress
        self.desc = desc
        self.cuda = setup.device.startswith("cuda")
        self.threads = spec.threads or 1
        self._owns_ray = False
        self._started_workers = 0
        self._slots: list[_Slot] = []
        try:
            self._start_ray(setup)
            self.workers = spec.workers or self._default_workers()
            self._stats = ExecutorStats(
                kind="ray", workers=self.workers, images_per_candidate=setup.images_per_candidate
            )
            self._setup_ref = ray.put(_cpu_setup(setup))
            self._start_workers()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ cluster and workers
    def _start_ray(self, setup: EvaluationSetup) -> None:
        """Join ``spec.address``, or start a local instance sized for the workers."""
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if ray.is_initialized():
            return
        common: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        if self.spec.address:
            ray.init(address=self.spec.address, **common)
            return
        workers = self.spec.workers or (
            max(1, torch.cuda.device_count()) if self.cuda else max(1, (os.cpu_count() or 1) // self.threads)
        )
        store = max(256 * _MIB, int(_payload_bytes(setup) * 1.5) + 128 * _MIB)
        ray.init(
            num_cpus=workers * self.threads,
            num_gpus=torch.cuda.device_count() if self.cuda else 0,
            object_store_memory=store,
            **common,
        )
        self._owns_ray = True

    def _default_workers(self) -> int:
        """The cluster's GPUs (CUDA) or CPUs / threads."""
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        if self.cuda:
            gpus = int(resources.get("GPU", 0))
            if gpus < 1:
                raise ExecutorError("--torch-device cuda with --executor ray: the Ray cluster has no GPU")
            return gpus
        return max(1, int(resources.get("CPU", 1)) // self.threads)

    def _new_worker(self) -> _Slot:
        self._started_workers += 1
        name = f"ray-{self._started_workers}"
        remote = ray.remote(CandidateWorker).options(
            num_cpus=self.threads, num_gpus=1 if self.cuda else 0, max_restarts=0
        )
        return _Slot(name=name, actor=remote.remote(self._setup_ref, name, threads=self.threads))

    def _start_workers(self) -> None:
        """Start the workers and wait until each has loaded the model and images (its setup time)."""
        started = time.perf_counter()
        self._slots = [self._new_worker() for _ in range(self.workers)]
        waiting = [slot.actor.ready.remote(check_sha256=True) for slot in self._slots]
        while waiting:  # each worker's start-up as the driver sees it (process, imports, setup transfer)
            ready, waiting = ray.wait(waiting, num_returns=1)
            ray.get(ready)
            self._stats.setup_s.append(time.perf_counter() - started)

    @property
    def stats(self) -> ExecutorStats:
        """What it did so far."""
        return self._stats

    @property
    def actors(self) -> list[Any]:
        """The live workers' actor handles (e.g. for fault-injection tests)."""
        return [slot.actor for slot in self._slots]

    # ------------------------------------------------------------------ running
    def run(
        self, cfgs: Sequence[SubnetConfig], *, on_result: ResultCallback | None = None
    ) -> list[CandidateResult]:
        """Measure ``cfgs`` on the workers; results in the order of ``cfgs`` (module docstring)."""
        if not self._slots:
            raise ExecutorError("the Ray executor is closed")
        results: dict[int, CandidateResult] = {}
        bar = CandidateProgress(len(cfgs), enabled=self.progress and len(cfgs) >= 2, desc=self.desc)
        try:
            with Timer(self._stats):
                _Dispatch(self, cfgs, results, bar, on_result).loop()
        except BaseException:
            self.close()  # Ctrl-C or a failure: no cluster work is left running
            raise
        finally:
            bar.close()
        return [results[i] for i in range(len(cfgs))]

    def replace_worker(self, dead: _Slot) -> _Slot:
        """A new worker in place of ``dead``.

        Its start-up is not waited for: the next candidate queues behind it (that candidate's
        ``transfer`` then includes the start-up).
        """
        index = self._slots.index(dead)
        with contextlib.suppress(Exception):  # it is usually gone already
            ray.kill(dead.actor, no_restart=True)
        slot = self._new_worker()
        self._slots[index] = slot
        return slot

    def close(self) -> None:
        """Kill the workers; shut down the local Ray instance this executor started (idempotent)."""
        for slot in self._slots:
            with contextlib.suppress(Exception):  # an actor already gone is what we want
                ray.kill(slot.actor, no_restart=True)
        self._slots = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False


class _Dispatch:
    """One :meth:`RayExecutor.run`: one candidate in flight per worker, retries, callbacks."""

    def __init__(
        self,
        executor: RayExecutor,
        cfgs: Sequence[SubnetConfig],
        results: dict[int, CandidateResult],
        bar: CandidateProgress,
        on_result: ResultCallback | None,
    ) -> None:
        self.ex = executor
        self.cfgs = cfgs
        self.results = results
        self.bar = bar
        self.on_result = on_result
        self.pending: deque[int] = deque(resolution_order(cfgs))
        self.idle: deque[_Slot] = deque(executor._slots)
        self.inflight: dict[Any, tuple[int, _Slot, float]] = {}
        self.attempts: dict[int, int] = {}

    def loop(self) -> None:
        while self.pending or self.inflight:
            while self.idle and self.pending:
                self._submit(self.pending.popleft(), self.idle.popleft())
            self.bar.update(running=len(self.inflight))
            ready, _ = ray.wait(list(self.inflight), num_returns=1)
            for ref in ready:
                self._collect(ref)

    def _submit(self, index: int, slot: _Slot) -> None:
        self.attempts[index] = self.attempts.get(index, 0) + 1
        ref = slot.actor.evaluate.remote(self.cfgs[index])
        self.inflight[ref] = (index, slot, time.perf_counter())

    def _collect(self, ref: Any) -> None:  # noqa: ANN401 (a Ray ObjectRef)
        index, slot, submitted = self.inflight.pop(ref)
        try:
            result: CandidateResult = ray.get(ref)
        except RayTaskError as exc:  # the measurement itself failed: the same on any worker
            cause = exc.cause
            raise (cause if isinstance(cause, Exception) else ExecutorError(str(exc))) from exc
        except _LOST as exc:
            self._retry(index, slot, exc)
            return
        wall = time.perf_counter() - submitted
        result.seconds["transfer"] = max(0.0, wall - result.compute_seconds)
        result.attempts = self.attempts[index]
        self.results[index] = result
        self.ex.stats.add(result)
        self.idle.append(slot)
        if self.on_result is not None:
            self.on_result(result)
        self.bar.update(done=1, running=len(self.inflight))

    def _retry(self, index: int, slot: _Slot, exc: BaseException) -> None:
        if self.attempts[index] > self.ex.spec.max_retries:
            raise ExecutorError(
                f"{self.cfgs[index].key()}: its worker died {self.attempts[index]} times "
                f"(last: {type(exc).__name__}: {exc})"
            ) from exc
        self.ex.stats.retried += 1
        self.bar.update(retried=1)
        self.pending.appendleft(index)
        self.idle.append(self.ex.replace_worker(slot))
