"""Re-profile a calibrated level table in an execution backend: latency and top-1 of whole levels.

A table's latencies and accuracies describe the backend that measured them. This module takes a
calibrated table (architectures + BN statistics, e.g. the torch-profiled ``cpu.json``) and measures
every level again as the runtime will run it: compiled by :mod:`dynamic_ofa_ros.backends` through
:class:`~dynamic_ofa_ros.engine.LevelEngine` (same export, cache, threads and preprocessing).

* **latency**: every level runs ``warmup`` frames, then ``rounds`` interleaved passes over the
  levels, each timing ``iterations / rounds`` frames of ``engine.infer`` (a photo, preprocessing
  included, as the manager sees it), so that a busy period of a shared machine hits all levels
  alike; p50 and p95; the load average before and after is recorded;
* **top-1**: every validation photo through ``engine.infer_batch`` (the engine's own
  preprocessing), skipped for random weights;
* **front**: a backend may reorder levels (operators cost differently than in eager torch):
  ordered by their new latency, levels that are not strictly slower *and* more accurate than
  the previous kept level are dropped, reported, and named in the table's ``extra``.

The architectures are not searched again: the result keeps the source table's ``search`` record.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]

from dynamic_ofa_ros.backends.header import profiling_header, table_backend
from dynamic_ofa_ros.engine import LevelEngine
from dynamic_ofa_ros.errors import DofaError
from dynamic_ofa_ros.levels import Level, LevelTable
from dynamic_ofa_ros.supernet import Supernet
from dynamic_ofa_ros.timing import device_name, summarize
from offline_tools.datasets import ImageSet

__all__ = [
    "LevelMeasurement",
    "ReprofileError",
    "ReprofileResult",
    "measure_top1",
    "pareto_levels",
    "reprofile_table",
]


class ReprofileError(DofaError):
    """A table cannot be re-profiled (no BN statistics, unlabelled photos, a level never ran)."""


@dataclass(frozen=True)
class LevelMeasurement:
    """One level as measured in the backend (``accuracy`` ``None``: not measured)."""

    level: Level
    latency_ms: float
    latency_p95_ms: float
    accuracy: float | None


@dataclass
class ReprofileResult:
    """The re-profiled table, what every source level measured, and what was dropped and why."""

    table: LevelTable
    measured: list[LevelMeasurement]
    dropped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: per source level, its old and new latency and top-1; the dropped levels."""
        return {
            "profiling": dict(self.table.profiling),
            "levels": [
                {
                    "source_level": m.level.level,
                    "resolution": m.level.resolution,
                    "source_latency_ms": m.level.latency_ms,
                    "latency_ms": round(m.latency_ms, 4),
                    "latency_p95_ms": round(m.latency_p95_ms, 4),
                    "source_accuracy": m.level.accuracy,
                    "accuracy": None if m.accuracy is None else round(m.accuracy, 3),
                }
                for m in self.measured
            ],
            "kept": [lv.level for lv in self.table.levels],
            "dropped": list(self.dropped),
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def measure_top1(engine: LevelEngine, level: int, images: ImageSet, *, chunk: int = 256) -> float:
    """Top-1 in percent of ``level`` on the labelled ``images``, through ``engine.infer_batch``."""
    if images.labels is None:
        raise ReprofileError(f"{images.name}: top-1 needs labelled photos")
    correct = 0
    for start in range(0, len(images), chunk):
        probs = engine.infer_batch(images.images[start : start + chunk], level=level)
        labels = np.asarray(images.labels[start : start + chunk])
        correct += int((probs.argmax(axis=1) == labels).sum())
    return 100.0 * correct / len(images)


def _timed(engine: LevelEngine, image: np.ndarray, level: int) -> float:
    return float(engine.infer(image, level=level).inference_ms)


def _latencies(
    engine: LevelEngine, image: np.ndarray, *, warmup: int, iterations: int, rounds: int, progress: bool
) -> dict[int, tuple[float, float]]:
    """``{level: (p50, p95)}`` ms of ``engine.infer(image)``, levels interleaved round by round."""
    numbers = [lv.level for lv in engine.levels]
    for n in numbers:
        for _ in range(warmup):
            engine.infer(image, level=n)
    rounds = max(1, min(rounds, iterations))
    per_round = [iterations // rounds + (1 if r < iterations % rounds else 0) for r in range(rounds)]
    samples: dict[int, list[float]] = {n: [] for n in numbers}
    with tqdm(total=iterations * len(numbers), desc="latency", disable=not progress, leave=False) as bar:
        for count in per_round:
            for n in numbers:
                engine.infer(image, level=n)  # the first frame after another level: not timed
                samples[n].extend(_timed(engine, image, n) for _ in range(count))
                bar.update(count)
    out: dict[int, tuple[float, float]] = {}
    for n, values in samples.items():
        stats = summarize(values)
        if not values or not math.isfinite(stats["p50"]):
            raise ReprofileError(f"level {n}: no latency sample")
        out[n] = (stats["p50"], max(stats["p95"], stats["p50"]))
    return out


def pareto_levels(measured: Sequence[LevelMeasurement]) -> tuple[list[LevelMeasurement], list[str]]:
    """The measured Pareto front: latency and accuracy strictly increasing; why the others went.

    Levels are ordered by their latency in the backend (ties: source order); one that is not
    slower than the last kept one, or (when accuracy was measured) not more accurate, is dropped:
    a faster level at least as accurate exists.
    """
    kept: list[LevelMeasurement] = []
    dropped: list[str] = []
    for m in sorted(measured, key=lambda m: (m.latency_ms, m.level.level)):
        if not kept:
            kept.append(m)
            continue
        last = kept[-1]
        if m.latency_ms <= last.latency_ms:
            why = f"not slower than source level {last.level.level} ({last.latency_ms:.3f} ms)"
        elif m.accuracy is not None and last.accuracy is not None and m.accuracy <= last.accuracy:
            why = (
                f"slower than source level {last.level.level} ({last.latency_ms:.3f} ms) "
                f"but not more accurate ({last.accuracy:.3f} %)"
            )
        else:
            kept.append(m)
            continue
        shown = "n/a" if m.accuracy is None else f"{m.accuracy:.3f} %"
        dropped.append(
            f"source level {m.level.level} ({m.level.config.summary()}; "
            f"{m.latency_ms:.3f} ms, {shown}): {why}"
        )
    return kept, dropped


def _load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def reprofile_table(
    supernet: Supernet,
    table: LevelTable,
    validation: ImageSet,
    *,
    backend: str,
    precision: str = "f32",
    threads: int = 1,
    warmup: int = 20,
    iterations: int = 200,
    rounds: int = 10,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> ReprofileResult:
    """``table`` measured again in ``backend`` (see the module docstring); nothing is written.

    The result's ``profiling`` is :func:`~dynamic_ofa_ros.backends.header.profiling_header` plus
    ``mode``, ``threads``, ``warmup``, ``iterations``, ``rounds``, ``load_average`` and ``date``;
    its ``extra["reprofiled_from"]`` names the source table and its per-level numbers.
    """
    if table.bn is None:
        raise ReprofileError(f"{table.path or 'level table'}: has no BN statistics; calibrate it first")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    engine = LevelEngine(
        supernet,
        table,
        backend=backend,
        precision=precision,
        check_backend=False,  # the source table was profiled in another backend: that is the point
        threads=threads,
        warmup=1,
        cache_dir=None if cache_dir is None else Path(cache_dir),
    )
    seconds["compile"] = time.perf_counter() - start
    load_before = _load_average()
    start = time.perf_counter()
    latencies = _latencies(
        engine, validation.images[0], warmup=warmup, iterations=iterations, rounds=rounds, progress=progress
    )
    seconds["latency"] = time.perf_counter() - start
    load_after = _load_average()
    measure_accuracy = table.meaningful_accuracy and supernet.meaningful_accuracy and validation.labelled
    start = time.perf_counter()
    measured = [
        LevelMeasurement(
            level=lv,
            latency_ms=latencies[lv.level][0],
            latency_p95_ms=latencies[lv.level][1],
            accuracy=measure_top1(engine, lv.level, validation) if measure_accuracy else None,
        )
        for lv in tqdm(table.levels, desc="top-1", disable=not progress or not measure_accuracy, leave=False)
    ]
    seconds["accuracy"] = time.perf_counter() - start
    kept, dropped = pareto_levels(measured)
    profiling = {
        **profiling_header(engine.backend, precision=precision),
        "mode": "compiled",
        "threads": engine.threads,
        "batch": 1,
        "warmup": warmup,
        "iterations": iterations,
        "rounds": rounds,
        "timed": "LevelEngine.infer of one validation photo (preprocessing + model)",
        "load_average": {"before": load_before, "after": load_after},
        "date": _dt.date.today().isoformat(),
    }
    return ReprofileResult(
        table=_result_table(table, kept, measured, dropped, profiling, validation),
        measured=measured,
        dropped=dropped,
        seconds=seconds,
    )


def _result_table(
    table: LevelTable,
    kept: Sequence[LevelMeasurement],
    measured: Sequence[LevelMeasurement],
    dropped: Sequence[str],
    profiling: dict[str, Any],
    validation: ImageSet,
) -> LevelTable:
    """The kept levels renumbered 1..N with their new numbers and their BN statistics."""
    assert table.bn is not None
    dataset = f"{Path(validation.name).name} ({len(validation)})"
    levels: list[Level] = []
    bn = {}
    for n, m in enumerate(kept, start=1):
        levels.append(
            dataclasses.replace(
                m.level,
                level=n,
                latency_ms=round(m.latency_ms, 4),
                latency_p95_ms=round(m.latency_p95_ms, 4),
                accuracy=m.level.accuracy if m.accuracy is None else round(m.accuracy, 3),
                accuracy_dataset=m.level.accuracy_dataset if m.accuracy is None else dataset,
            )
        )
        bn[n] = table.bn[m.level.level]
    source = {
        "table": table.path.name if table.path is not None else None,
        "backend": table_backend(table.profiling),
        "profiling": dict(table.profiling),
        "levels": [
            {
                "level": m.level.level,
                "latency_ms": m.level.latency_ms,
                "accuracy": m.level.accuracy,
                "accuracy_dataset": m.level.accuracy_dataset,
            }
            for m in measured
        ],
        "dropped": list(dropped),
        "note": "architectures and BN statistics of the source table; not re-searched in this backend",
    }
    return dataclasses.replace(
        table,
        device_name=device_name("cpu"),
        profiling=profiling,
        levels=levels,
        bn=bn,
        path=None,
        extra={**table.extra, "reprofiled_from": source},
    )
