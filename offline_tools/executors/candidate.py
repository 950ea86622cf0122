"""Measuring one candidate, the worker that measures candidate after candidate, the progress bar.

:func:`evaluate_candidate` is the single definition of a measurement (extract → BN calibration →
top-1, optionally BN statistics and MACs); the in-process executor and every Ray worker call it,
so both give the same numbers. :class:`CandidateWorker` holds the super-network and the decoded
images of one worker, set up once.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Sequence

import torch
from tqdm import tqdm  # type: ignore[import-untyped]

from dynamic_ofa_ros import bn
from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.supernet import Supernet, state_dict_sha256
from offline_tools.accuracy import calibrated_subnet, top1_accuracy
from offline_tools.datasets import ImageSet
from offline_tools.executors.base import CandidateResult, EvaluationSetup, ExecutorError

__all__ = [
    "CandidateProgress",
    "CandidateWorker",
    "candidate_seed",
    "evaluate_candidate",
    "resolution_order",
]


def candidate_seed(cfg: SubnetConfig) -> int:
    """A seed derived from the architecture alone.

    A candidate's randomness then does not depend on which worker runs it or what ran before
    (the measurement itself draws no random numbers today).
    """
    return int.from_bytes(hashlib.sha256(cfg.key().encode()).digest()[:4], "little")


def resolution_order(cfgs: Sequence[SubnetConfig]) -> list[int]:
    """Indices of ``cfgs`` by resolution, then given order (one resolution reuses the resized images)."""
    return sorted(range(len(cfgs)), key=lambda i: (cfgs[i].resolution, i))


def evaluate_candidate(
    supernet: Supernet,
    cfg: SubnetConfig,
    calibration: ImageSet,
    validation: ImageSet | None,
    *,
    batch_size: int,
    device: str | torch.device,
    with_bn_state: bool = False,
    with_macs: bool = False,
    worker: str = "local",
) -> CandidateResult:
    """Extract ``cfg``, recompute its BN statistics on ``calibration``, top-1 on ``validation``."""
    seconds: dict[str, float] = {}
    cpu_started = time.process_time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(candidate_seed(cfg))
        module = calibrated_subnet(
            supernet, cfg, calibration, batch_size=batch_size, device=device, timings=seconds
        )
        started = time.perf_counter()
        top1 = (
            None
            if validation is None
            else top1_accuracy(module, validation, cfg.resolution, batch_size=batch_size, device=device)
        )
        seconds["evaluate"] = time.perf_counter() - started
    return CandidateResult(
        config=cfg,
        top1=top1,
        macs_m=float(bn.count_macs(module, cfg.resolution)) if with_macs else None,
        bn_state=bn.bn_state(module) if with_bn_state else None,
        seconds=seconds,
        worker=worker,
        cpu_s=time.process_time() - cpu_started,
    )


class CandidateWorker:
    """One worker: the super-network and decoded images, loaded once; then candidate after candidate.

    In-process it is the local executor's engine; wrapped by ``ray.remote`` it is a Ray actor
    (constructed from an object-store reference to the :class:`EvaluationSetup`).
    """

    def __init__(self, setup: EvaluationSetup, name: str, *, threads: int | None = None) -> None:
        started = time.perf_counter()
        if threads is not None:
            torch.set_num_threads(threads)
        self.setup = setup
        self.name = name
        self.device = setup.device
        if self.device.startswith("cuda") and os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            self.device = "cuda"  # Ray hands each GPU actor one visible device
        self.calibration = setup.calibration.load()
        self.validation = None if setup.validation is None else setup.validation.load()
        self.setup_s = time.perf_counter() - started

    def ready(self, *, check_sha256: bool = False) -> dict[str, object]:
        """``{"worker", "host", "setup_s", "threads"}`` once the worker is set up.

        With ``check_sha256`` the weights are verified against the driver's checksum (a cluster
        node with another copy of the model is refused).
        """
        if check_sha256:
            got = state_dict_sha256(self.setup.supernet.net)
            if got != self.setup.supernet.sha256:
                raise ExecutorError(
                    f"worker {self.name} on {socket.gethostname()}: the super-network's checksum is {got}, "
                    f"the driver's {self.setup.supernet.sha256}"
                )
        return {
            "worker": self.name,
            "host": socket.gethostname(),
            "setup_s": self.setup_s,
            "threads": torch.get_num_threads(),
        }

    def evaluate(self, cfg: SubnetConfig) -> CandidateResult:
        """Measure one candidate (see :func:`evaluate_candidate`)."""
        return evaluate_candidate(
            self.setup.supernet,
            cfg,
            self.calibration,
            self.validation,
            batch_size=self.setup.batch_size,
            device=self.device,
            with_bn_state=self.setup.with_bn_state,
            with_macs=self.setup.with_macs,
            worker=self.name,
        )


class CandidateProgress:
    """A tqdm bar over candidates: done, with running and retried counts beside it."""

    def __init__(self, total: int, *, enabled: bool, desc: str = "measure") -> None:
        self.bar = tqdm(total=total, desc=desc, unit="net", disable=not enabled, leave=False)
        self.running = 0
        self.retried = 0

    def update(self, *, done: int = 0, running: int | None = None, retried: int = 0) -> None:
        """Advance by ``done``; set the running count; add ``retried``."""
        if running is not None:
            self.running = running
        self.retried += retried
        self.bar.set_postfix(running=self.running, retried=self.retried, refresh=done == 0)
        if done:
            self.bar.update(done)

    def close(self) -> None:
        """Remove the bar."""
        self.bar.close()
