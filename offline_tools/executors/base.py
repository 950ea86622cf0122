"""What every candidate executor shares: the recipe, the work's setup, results, statistics.

A *candidate* is one sub-network to measure: extract it from the super-network, recompute its
batch-norm statistics on the calibration images at its resolution, then (optionally) its top-1
on the validation images, its BN statistics and its MACs. Candidates are independent, so an
executor may run them anywhere and in any order; :meth:`CandidateExecutor.run` returns them in
the order asked, whatever order they finished in.

The package (:mod:`offline_tools.executors`) re-exports the names its users need and lists them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.errors import DofaError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from dynamic_ofa_ros.supernet import Supernet
    from offline_tools.datasets import ImageSet

ExecutorKind = Literal["local", "ray"]
#: The executors ``--executor`` accepts.
EXECUTOR_KINDS: tuple[ExecutorKind, ...] = ("local", "ray")

ImageShipping = Literal["store", "path"]


class ExecutorError(DofaError):
    """The candidates could not be measured (Ray missing, workers failing again and again, ...)."""


class ParallelExecutorRefusedError(ExecutorError):
    """A parallel executor was asked for work that must run alone (latency profiling)."""


def refuse_parallel(kind: str, what: str) -> None:
    """Raise :class:`ParallelExecutorRefusedError` unless ``kind`` is the in-process executor.

    Latency is measured alone on purpose: work running beside it on the same machine (other
    workers, their data transfers) shares the cores, caches and memory bandwidth, and a latency
    table measured that way is wrong for the node that later runs alone.
    """
    if kind != "local":
        raise ParallelExecutorRefusedError(
            f"{what} measures latency and runs only with --executor local: co-located work (the "
            f"{kind} workers, their transfers) competes for the cores, caches and memory bandwidth "
            "and distorts a latency table"
        )


@dataclass(frozen=True)
class ExecutorSpec:
    """How to run candidates: in this process, or on Ray workers (``--executor``, ``--ray-address``, ...).

    Attributes:
        kind: ``"local"`` (in-process, one after another) or ``"ray"`` (Ray actors).
        address: an existing Ray cluster (``ray start --head`` prints it); ``None``: a local Ray
            instance on this machine, stopped again by :meth:`CandidateExecutor.close`.
        workers: Ray actors (default: the cluster's GPUs for CUDA, else its CPUs / ``threads``).
        threads: torch threads of each Ray worker (default 1); the local executor uses the
            caller's torch setting.
        data: ``"store"``: the driver decodes the images once and ships them through Ray's object
            store; ``"path"``: each worker decodes them itself from the same paths (a cluster whose
            nodes see the data; nothing large passes through the driver).
        max_retries: how often one candidate is retried after its worker died.
    """

    kind: ExecutorKind = "local"
    address: str | None = None
    workers: int | None = None
    threads: int | None = None
    data: ImageShipping = "store"
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.kind not in EXECUTOR_KINDS:
            raise ExecutorError(f"unknown executor {self.kind!r} (choose {', '.join(EXECUTOR_KINDS)})")
        if self.workers is not None and self.workers < 1:
            raise ExecutorError(f"workers={self.workers} must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ExecutorError(f"threads={self.threads} must be >= 1")
        if self.max_retries < 0:
            raise ExecutorError(f"max_retries={self.max_retries} must be >= 0")
        if self.kind == "local" and (self.address or self.workers is not None):
            raise ExecutorError("--ray-address and --workers need --executor ray")

    @property
    def parallel(self) -> bool:
        """Whether candidates run outside this process, several at a time."""
        return self.kind != "local"


@dataclass(frozen=True)
class ImageData:
    """One image set as a worker gets it: decoded here (``images``), or a loader it calls once.

    ``name``, ``count`` and ``labelled`` describe the set without decoding it (records and
    checks on the driver); a worker calls :meth:`load` once and keeps the decoded images.
    """

    name: str
    count: int
    labelled: bool
    images: ImageSet | None = None
    loader: Callable[[], ImageSet] | None = None

    @classmethod
    def decoded(cls, images: ImageSet) -> ImageData:
        """Images already decoded (shipped as they are; a fresh set without cached tensors)."""
        from offline_tools.datasets import ImageSet

        fresh = ImageSet(name=images.name, images=images.images, labels=images.labels, cache=images.cache)
        return cls(name=images.name, count=len(images), labelled=images.labelled, images=fresh)

    def load(self) -> ImageSet:
        """The decoded images (decoding them now when only a loader was given)."""
        if self.images is not None:
            return self.images
        if self.loader is None:
            raise ExecutorError(f"{self.name}: neither images nor a loader")
        return self.loader()

    def describe(self) -> dict[str, object]:
        """``{"name", "images"}``: what records name the set by."""
        return {"name": self.name, "images": self.count}


@dataclass(frozen=True)
class EvaluationSetup:
    """Everything a worker needs once: the super-network, the images and how to run them.

    Attributes:
        supernet: the super-network the candidates are extracted from.
        calibration: images for the BN statistics.
        validation: labelled images for top-1; ``None``: no top-1.
        device: ``cpu`` or ``cuda[:N]`` (a Ray worker uses the GPU Ray gave it).
        batch_size: images per batch (BN statistics are averaged per batch, so it is part of
            what a measurement means).
        with_bn_state: return each candidate's BN statistics (level tables need them).
        with_macs: return each candidate's MACs.
    """

    supernet: Supernet
    calibration: ImageData
    validation: ImageData | None = None
    device: str = "cpu"
    batch_size: int = 64
    with_bn_state: bool = False
    with_macs: bool = False

    def __post_init__(self) -> None:
        if self.validation is not None and not self.validation.labelled:
            raise ExecutorError(f"{self.validation.name}: the validation images have no labels")
        if self.batch_size < 1:
            raise ExecutorError(f"batch_size={self.batch_size} must be >= 1")

    @property
    def images_per_candidate(self) -> int:
        """Forward passes per candidate: calibration plus validation images."""
        return self.calibration.count + (self.validation.count if self.validation is not None else 0)


@dataclass
class CandidateResult:
    """One measured candidate.

    ``seconds`` splits its cost: ``extract``, ``calibrate`` (BN statistics), ``evaluate`` (top-1)
    on the worker, and ``transfer`` (everything else the driver waited: scheduling, arguments and
    results crossing processes or machines; 0 in-process).
    """

    config: SubnetConfig
    top1: float | None
    macs_m: float | None = None
    bn_state: dict[str, torch.Tensor] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    worker: str = "local"
    attempts: int = 1
    cpu_s: float = 0.0
    """CPU seconds of the worker's process while it measured the candidate (all its threads)."""

    @property
    def key(self) -> str:
        """``config.key()``."""
        return self.config.key()

    @property
    def compute_seconds(self) -> float:
        """Seconds the worker spent on it (extract + calibrate + evaluate)."""
        return sum(v for k, v in self.seconds.items() if k != "transfer")


@dataclass
class ExecutorStats:
    """What an executor did over all its runs (for the summary line and benchmark reports)."""

    kind: str
    workers: int
    images_per_candidate: int
    candidates: int = 0
    retried: int = 0
    wall_s: float = 0.0
    setup_s: list[float] = field(default_factory=list)
    """Per worker: seconds until it was ready (process start, super-network and images)."""
    split_s: dict[str, float] = field(default_factory=dict)
    """Summed per-candidate ``seconds`` (extract, calibrate, evaluate, transfer)."""
    cpu_s: float = 0.0
    """Summed per-candidate CPU seconds of the workers."""

    def add(self, result: CandidateResult) -> None:
        """Count one finished candidate."""
        self.candidates += 1
        self.cpu_s += result.cpu_s
        for name, value in result.seconds.items():
            self.split_s[name] = self.split_s.get(name, 0.0) + value

    @property
    def images(self) -> int:
        """Images processed (calibration + validation per candidate)."""
        return self.candidates * self.images_per_candidate

    def images_per_s_per_worker(self) -> float:
        """Throughput of one worker over the wall time of the runs."""
        if self.wall_s <= 0 or self.workers <= 0:
            return math.nan
        return self.images / self.wall_s / self.workers

    def summary_line(self) -> str:
        """``N candidates, M images in T s on W <kind> workers: X images/s per worker (R retried)``."""
        return (
            f"{self.candidates} candidates, {self.images} images in {self.wall_s:.1f} s on {self.workers} "
            f"{self.kind} worker{'s' if self.workers != 1 else ''}: "
            f"{self.images_per_s_per_worker():.1f} images/s per worker ({self.retried} retried)"
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form, with the mean per-candidate cost split."""
        n = max(1, self.candidates)
        compute = sum(v for k, v in self.split_s.items() if k != "transfer")
        return {
            "executor": self.kind,
            "workers": self.workers,
            "candidates": self.candidates,
            "images": self.images,
            "images_per_candidate": self.images_per_candidate,
            "wall_s": round(self.wall_s, 3),
            "retried": self.retried,
            "images_per_s_per_worker": round(self.images_per_s_per_worker(), 3),
            "worker_setup_s": [round(v, 3) for v in self.setup_s],
            "per_candidate_s": {k: round(v / n, 4) for k, v in sorted(self.split_s.items())},
            "cpu_s_per_candidate": round(self.cpu_s / n, 4),
            # CPU seconds per second of a worker's compute: 1.0 with a core to itself (1 thread)
            "cpu_share": round(self.cpu_s / compute, 3) if compute > 0 else math.nan,
        }


class Timer:
    """Adds the seconds of every ``with`` block to :attr:`ExecutorStats.wall_s`."""

    def __init__(self, stats: ExecutorStats) -> None:
        self.stats = stats
        self._start = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stats.wall_s += time.perf_counter() - self._start


ResultCallback = Callable[[CandidateResult], None]


class CandidateExecutor(Protocol):
    """Measures candidates; see the module docstring."""

    @property
    def kind(self) -> str:
        """``local`` or ``ray``."""
        ...

    @property
    def stats(self) -> ExecutorStats:
        """What it did so far."""
        ...

    def run(
        self, cfgs: Sequence[SubnetConfig], *, on_result: ResultCallback | None = None
    ) -> list[CandidateResult]:
        """Measure ``cfgs``; results in the order of ``cfgs``.

        ``on_result`` is called in this process for each result as soon as it is known (in
        completion order), so a caller can persist it before the next one finishes.
        """
        ...

    def close(self) -> None:
        """Stop the workers (idempotent); a local Ray instance it started is shut down."""
        ...
