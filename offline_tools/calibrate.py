"""Turn a level family into a level table: per-level BN calibration, top-1, real latency, MACs.

For every level of a family (``dofa-levels search`` output, or any list of architectures):

1. extract the sub-network and reset + recompute its batch-norm running statistics on the
   calibration images at the level's resolution (:func:`dynamic_ofa_ros.bn.calibrate_bn`);
2. measure top-1 on the validation images, batched (skipped for random weights, whose accuracy
   is meaningless);
3. count MACs;
4. measure the latency on this device through :class:`dynamic_ofa_ros.engine.LevelEngine` in the
   execution backend that will run the table (``backend``: ``torch`` -- eager with ``threads`` on
   a CPU, CUDA graphs on a GPU -- or ``openvino``/``onnxruntime``, each level compiled as at run
   time, the path ``dofa-levels reprofile`` measures in): p50 and p95 of ``iterations`` frames
   after ``warmup``, and the table's ``profiling`` header names the backend
   (:func:`dynamic_ofa_ros.backends.header.profiling_header`) -- or copy the latencies of the same
   architectures from another table (``latency_from``; accuracy does not depend on the device,
   latency does).

Levels are then sorted by latency and only those that keep both latency and accuracy strictly
increasing are kept (a measured Pareto front; the dropped ones are reported), renumbered 1..N and
written with :func:`dynamic_ofa_ros.levels.save_level_table` (JSON + BN safetensors, atomic).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm  # type: ignore[import-untyped]

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.backends.header import profiling_header, table_backend
from dynamic_ofa_ros.errors import ArchitectureError, DofaError
from dynamic_ofa_ros.levels import Level, LevelTable
from dynamic_ofa_ros.timing import device_kind, device_name, summarize
from offline_tools.executors import EvaluationSetup, ExecutorSpec, ImageData, open_executor

if TYPE_CHECKING:  # pragma: no cover - typing only
    from dynamic_ofa_ros.engine import LevelEngine
    from dynamic_ofa_ros.supernet import Supernet
    from offline_tools.datasets import ImageSet

__all__ = [
    "CalibrationError",
    "CalibrationResult",
    "calibrate_levels",
    "default_backend",
    "measure_engine_latency",
]


class CalibrationError(DofaError):
    """A family cannot be calibrated (architectures outside the model, missing latencies, ...)."""


@dataclass
class CalibrationResult:
    """The calibrated table and what it took."""

    table: LevelTable
    seconds: dict[str, float]
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready run summary."""
        return {
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "levels": [
                {
                    "level": lv.level,
                    "arch": lv.config.summary(),
                    "latency_ms": lv.latency_ms,
                    "latency_p95_ms": lv.latency_p95_ms,
                    "accuracy": lv.accuracy,
                    "predicted_accuracy": lv.predicted_accuracy,
                    "macs_m": lv.macs_m,
                }
                for lv in self.table.levels
            ],
            "dropped": list(self.dropped),
            "notes": list(self.notes),
        }


def _with_threads(threads: int | None) -> int:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    return previous


def default_backend(family: LevelTable | Sequence[SubnetConfig], device: str) -> str:
    """The backend a family is calibrated in by default: its latency table's on a CPU, else torch.

    A family searched on a latency table carries the table's metadata in its ``profiling``
    header (``backend``: the table's backend; absent for torch tables and OFA's); on CUDA the
    engine runs torch (CUDA graphs).
    """
    if device_kind(device) != "cpu" or not isinstance(family, LevelTable):
        return "torch"
    return table_backend(family.profiling)


def measure_engine_latency(  # noqa: PLR0913 - keyword-only options of the engine and the timing
    supernet: Supernet,
    table: LevelTable,
    image: np.ndarray,
    *,
    device: str = "cpu",
    threads: int | None = None,
    cuda_graphs: bool = True,
    warmup: int = 10,
    iterations: int = 50,
    rounds: int = 5,
    backend: str = "torch",
    precision: str = "f32",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[dict[int, tuple[float, float]], dict[str, Any]]:
    """``{level: (p50 ms, p95 ms)}`` of every level through the runtime engine, and the engine's mode.

    The engine runs ``backend`` as ``dofa-levels reprofile`` runs it (``check_backend=False``: the
    provisional table names no backend yet; a compiled backend exports each level with its BN
    statistics into the artefact cache, ``cache_dir`` or the platform's, and compiles it with
    ``threads`` and ``precision``). Every level first runs ``warmup`` frames of ``image``; then
    ``rounds`` passes over the levels each time ``iterations / rounds`` timed frames per level
    (after one untimed frame following the switch), so that a slow period of a shared machine
    hits all levels alike rather than one. Only frames that ran on the intended level count.
    """
    from dynamic_ofa_ros.engine import LevelEngine

    engine = LevelEngine(
        supernet,
        table,
        device=device,
        threads=threads,
        cuda_graphs=cuda_graphs,
        check_device=False,
        backend=backend,
        precision=precision,
        check_backend=False,
        cache_dir=None if cache_dir is None else Path(cache_dir),
    )
    samples: dict[int, list[float]] = {lv.level: [] for lv in table.levels}
    rounds = max(1, min(rounds, iterations))
    per_round = [iterations // rounds + (1 if r < iterations % rounds else 0) for r in range(rounds)]
    try:
        for lv in table.levels:
            engine.switch(lv.level)
            for _ in range(warmup):
                engine.infer(image)
        bar = tqdm(total=iterations * len(table.levels), desc="latency", disable=not progress, leave=False)
        for count in per_round:
            for lv in table.levels:
                engine.switch(lv.level)
                engine.infer(image)  # the switch takes effect on this frame; not timed
                got = 0
                for _ in range(count * 3):
                    if got == count:
                        break
                    res = engine.infer(image)
                    if res.level == lv.level:
                        samples[lv.level].append(float(res.inference_ms))
                        got += 1
                bar.update(count)
        bar.close()
        results: dict[int, tuple[float, float]] = {}
        for level, values in samples.items():
            if not values:
                raise CalibrationError(f"level {level}: the engine never ran it; cannot measure its latency")
            stats = summarize(values)
            results[level] = (stats["p50"], max(stats["p95"], stats["p50"]))
        mode = _engine_mode(engine)
    finally:
        close = getattr(engine, "close", None)
        if callable(close):
            close()
    return results, mode


def _engine_mode(engine: LevelEngine) -> dict[str, Any]:
    """The execution mode the engine chose (what the latencies were measured in)."""
    per_level = list(engine.execution.values())
    modes = sorted({str(v.get("mode")) for v in per_level}) or ["eager"]
    info: dict[str, Any] = {
        "mode": modes[0] if len(modes) == 1 else "+".join(modes),
        "backend": engine.backend,
    }
    if engine.threads is not None:
        info["threads"] = engine.threads
    if any(v.get("half") for v in per_level):
        info["dtype"] = "float16 where faster" if not all(v.get("half") for v in per_level) else "float16"
    if any(v.get("channels_last") for v in per_level):
        info["channels_last"] = [bool(v.get("channels_last")) for v in per_level]
    return info


@dataclass(frozen=True)
class _RunOptions:
    """How :func:`calibrate_levels` runs the sub-networks (the keyword options it was given)."""

    device: str
    threads: int | None
    cuda_graphs: bool
    batch_size: int
    warmup: int
    iterations: int
    progress: bool
    executor: ExecutorSpec
    backend: str = "torch"
    precision: str = "f32"
    cache_dir: str | os.PathLike[str] | None = None


@dataclass
class _Family:
    """The architectures to calibrate, with what the family already knew about them."""

    configs: list[SubnetConfig]
    predicted: dict[str, float | None]
    extra: dict[str, Any]

    @classmethod
    def read(cls, family: LevelTable | Sequence[SubnetConfig]) -> _Family:
        if isinstance(family, LevelTable):
            return cls(
                configs=[lv.config for lv in family.levels],
                predicted={lv.config.key(): lv.predicted_accuracy for lv in family.levels},
                extra=dict(family.extra),
            )
        return cls(configs=list(family), predicted={}, extra={})


@dataclass
class _Calibrated:
    """Per architecture key: BN statistics, MMACs and (when measured) top-1 %."""

    states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    macs: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)


#: Per architecture key: (p50 ms, p95 ms or None).
_Latencies = dict[str, tuple[float, float | None]]


def calibrate_levels(  # noqa: PLR0913 (keyword-only options, one per `dofa-levels calibrate` flag)
    supernet: Supernet,
    family: LevelTable | Sequence[SubnetConfig],
    *,
    calibration: ImageSet,
    validation: ImageSet | None = None,
    device: str = "cpu",
    threads: int | None = None,
    compute_threads: int | None = None,
    cuda_graphs: bool = True,
    batch_size: int = 64,
    warmup: int = 10,
    iterations: int = 50,
    latency_from: LevelTable | None = None,
    device_label: str | None = None,
    min_step: float = 0.0,
    extra: Mapping[str, Any] | None = None,
    progress: bool = True,
    executor: ExecutorSpec | None = None,
    backend: str | None = None,
    precision: str = "f32",
    cache_dir: str | os.PathLike[str] | None = None,
) -> CalibrationResult:
    """Calibrate, evaluate and profile every level of ``family`` (see the module docstring).

    Args:
        supernet: the super-network the levels are extracted from.
        family: a level table/family (its ``predicted_accuracy`` values are kept) or architectures.
        calibration: images for the BN statistics.
        validation: labelled images for top-1 (``None``: no accuracy measured).
        device: where calibration, evaluation and profiling run.
        threads: the engine's CPU thread count (what the latencies are measured with).
        compute_threads: the thread count of BN calibration and evaluation (default: ``threads``,
            else torch's current setting) — e.g. all cores for the offline work, 1 for the latency.
        cuda_graphs: let the engine capture CUDA graphs (as at run time).
        batch_size: images per batch for calibration and evaluation.
        warmup: untimed frames per level before profiling.
        iterations: timed frames per level.
        latency_from: copy ``latency_ms``/``latency_p95_ms`` of the same architectures from that
            table (and its ``profiling``/``device``) instead of measuring here.
        device_label: the table's ``device`` (default: the device kind).
        min_step: also drop a level less than this many points more accurate than the previous
            kept one (default 0: the measured Pareto front).
        extra: extra top-level fields for the table.
        progress: show progress bars.
        executor: where the levels are calibrated and evaluated (default: in this process; a
            parallel one is stopped before the latency is measured).
        backend: the execution backend the latencies are measured in (``torch``, ``openvino``,
            ``onnxruntime``; default :func:`default_backend`: the family's latency table's on a
            CPU, else torch); named in the table's ``profiling`` header.
        precision: the compiled backend's inference precision (explicit).
        cache_dir: where a compiled backend keeps the levels' ONNX files (default: the
            platform's cache folder, as the engine's).

    Returns:
        The table (not yet written), the time each phase took, the dropped levels and notes.

    Raises:
        CalibrationError: an empty family, an architecture outside the model or at a resolution
            it was not trained at, unlabelled validation images, or ``latency_from`` lacking levels.
    """
    started = time.perf_counter()
    parsed = _Family.read(family)
    configs = parsed.configs
    _check_family(supernet, configs)
    if validation is not None and not validation.labelled:
        raise CalibrationError(f"{validation.name}: the validation images have no labels")
    measure_accuracy = validation is not None and supernet.meaningful_accuracy
    notes: list[str] = []
    if validation is not None and not supernet.meaningful_accuracy:
        notes.append("random weights: accuracy not measured (it would be meaningless)")
    copied = None if latency_from is None else _copied_latencies(latency_from, configs)
    run = _RunOptions(
        device,
        threads,
        cuda_graphs,
        batch_size,
        warmup,
        iterations,
        progress,
        executor or ExecutorSpec(),
        backend=backend or default_backend(family, device),
        precision=precision,
        cache_dir=cache_dir,
    )

    previous_threads = _with_threads(compute_threads if compute_threads is not None else threads)
    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        calibrated = _calibrate_and_evaluate(
            supernet, configs, calibration, validation if measure_accuracy else None, run
        )
        seconds["calibrate_and_evaluate"] = time.perf_counter() - t0
        torch.set_num_threads(previous_threads)
        _with_threads(threads)
        header = _header(
            supernet,
            calibration=calibration,
            device=device,
            threads=threads,
            warmup=warmup,
            iterations=iterations,
            batch_size=batch_size,
            device_label=device_label,
        )
        t0 = time.perf_counter()
        if latency_from is not None and copied is not None:
            _use_profiling_of(header, latency_from)
            latencies = copied
        else:
            image = calibration.images[0] if validation is None else validation.images[0]
            latencies = _measured_latencies(supernet, configs, calibrated, header, image, run)
        seconds["latency"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous_threads)

    kept, dropped = _measured_front(configs, latencies, calibrated.accuracy, parsed.predicted, min_step)
    dataset = validation.name if measure_accuracy and validation is not None else None
    levels, bn_by_level = _numbered_levels(kept, latencies, calibrated, parsed.predicted, dataset)
    seconds["total"] = time.perf_counter() - started
    table_extra = {**parsed.extra, **(extra or {})}
    table_extra.pop("search_levels_dropped", None)
    table = LevelTable(
        device=header["device"],
        device_name=header["device_name"],
        profiling=header["profiling"],
        supernet=header["supernet"],
        calibration=header["calibration"],
        levels=levels,
        bn=bn_by_level,
        extra=table_extra,
    )
    return CalibrationResult(table=table, seconds=seconds, dropped=dropped, notes=notes)


def _check_family(supernet: Supernet, configs: Sequence[SubnetConfig]) -> None:
    """Every architecture a sub-network of ``supernet`` at a resolution it was trained at."""
    if not configs:
        raise CalibrationError("the family has no levels")
    space = supernet.search_space(
        resolutions=tuple(sorted({*supernet.resolutions, *(c.resolution for c in configs)}))
    )
    for i, cfg in enumerate(configs):
        try:
            space.check(cfg)
        except ArchitectureError as exc:
            raise CalibrationError(
                f"level {i + 1} ({cfg.key()}): {exc}; it is not a sub-network of this model"
            ) from exc
        if cfg.resolution not in supernet.resolutions:
            raise CalibrationError(
                f"level {i + 1} ({cfg.key()}) uses resolution {cfg.resolution}, which {supernet.name} from "
                f"{supernet.source} was not trained at "
                f"({min(supernet.resolutions)}..{max(supernet.resolutions)});"
                " search with the model's resolutions"
            )


def _copied_latencies(latency_from: LevelTable, configs: Sequence[SubnetConfig]) -> _Latencies:
    """The latencies of ``configs`` in ``latency_from``, which must have all of them."""
    rows = {lv.config.key(): (lv.latency_ms, lv.latency_p95_ms) for lv in latency_from.levels}
    missing = [c.key() for c in configs if c.key() not in rows]
    if missing:
        raise CalibrationError(
            f"--latency-from table {latency_from.path or ''} has no level for {len(missing)} of the "
            f"architectures (e.g. {missing[0]}); it must be a table of the same family"
        )
    return {cfg.key(): rows[cfg.key()] for cfg in configs}


def _use_profiling_of(header: dict[str, Any], latency_from: LevelTable) -> None:
    """Copied latencies: the table names the device and profiling they were measured with."""
    header["device"] = latency_from.device
    header["device_name"] = latency_from.device_name
    header["profiling"] = {**latency_from.profiling, "latency_from": str(latency_from.path or "")}


def _calibrate_and_evaluate(
    supernet: Supernet,
    configs: Sequence[SubnetConfig],
    calibration: ImageSet,
    validation: ImageSet | None,
    run: _RunOptions,
) -> _Calibrated:
    """BN statistics and MACs of every architecture, and top-1 on ``validation`` when given.

    The executor (``run.executor``; in-process by default) measures them — in this process in
    order of resolution, so consecutive ones share the resized images — and is closed before
    anything else happens (no worker is left beside the latency measurement).
    """
    setup = EvaluationSetup(
        supernet=supernet,
        calibration=ImageData.decoded(calibration),
        validation=None if validation is None else ImageData.decoded(validation),
        device=run.device,
        batch_size=run.batch_size,
        with_bn_state=True,
        with_macs=True,
    )
    executor = open_executor(run.executor, setup, progress=run.progress, desc="calibrate levels")
    try:
        results = executor.run(configs)
    finally:
        executor.close()
    out = _Calibrated()
    for result in results:
        assert result.bn_state is not None and result.macs_m is not None  # asked for in the setup
        out.states[result.key] = result.bn_state
        out.macs[result.key] = result.macs_m
        if result.top1 is not None:
            out.accuracy[result.key] = result.top1
    return out


def _measured_latencies(
    supernet: Supernet,
    configs: Sequence[SubnetConfig],
    calibrated: _Calibrated,
    header: dict[str, Any],
    image: np.ndarray,
    run: _RunOptions,
) -> _Latencies:
    """Latencies of ``configs`` through the engine, on a provisional table of the calibrated levels.

    The engine's execution mode is recorded in ``header["profiling"]``.
    """
    provisional = [
        Level(level=n, config=cfg, latency_ms=float(n), macs_m=round(calibrated.macs[cfg.key()], 3))
        for n, cfg in enumerate(configs, start=1)
    ]
    temp = LevelTable(
        device=header["device"],
        device_name=header["device_name"],
        profiling=header["profiling"],
        supernet=header["supernet"],
        calibration=header["calibration"],
        levels=provisional,
        bn={lv.level: calibrated.states[lv.config.key()] for lv in provisional},
    )
    load_before = _load_average()
    measured, mode = measure_engine_latency(
        supernet,
        temp,
        image,
        device=run.device,
        threads=run.threads,
        cuda_graphs=run.cuda_graphs,
        warmup=run.warmup,
        iterations=run.iterations,
        backend=run.backend,
        precision=run.precision,
        cache_dir=run.cache_dir,
        progress=run.progress,
    )
    header["profiling"].update(mode)
    if device_kind(run.device) == "cpu":  # the backend fields of a level table (as reprofile writes)
        header["profiling"].update(profiling_header(mode["backend"], precision=run.precision))
        header["profiling"]["timed"] = "LevelEngine.infer of one photo (preprocessing + model)"
        header["profiling"]["load_average"] = {"before": load_before, "after": _load_average()}
    else:
        header["profiling"].pop("backend", None)  # CUDA: torch, as tables without one say
    return {lv.config.key(): measured[lv.level] for lv in provisional}


def _load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def _measured_front(
    configs: Sequence[SubnetConfig],
    latencies: _Latencies,
    accuracy: Mapping[str, float],
    predicted: Mapping[str, float | None],
    min_step: float,
) -> tuple[list[SubnetConfig], list[str]]:
    """The architectures that keep latency and accuracy strictly increasing, and why the others went.

    Accuracy is the measured one, else the family's prediction; an architecture with neither
    is kept when it is slower than the previous kept one.
    """
    kept: list[SubnetConfig] = []
    dropped: list[str] = []
    last_lat, last_acc = -math.inf, -math.inf
    for cfg in sorted(configs, key=lambda c: (latencies[c.key()][0], c.key())):
        key = cfg.key()
        rank = accuracy.get(key, predicted.get(key))
        rank_value = -math.inf if rank is None else rank
        slower = latencies[key][0] > last_lat
        better = rank is None or rank_value > last_acc + (min_step if math.isfinite(last_acc) else 0.0)
        if slower and better:
            kept.append(cfg)
            last_lat, last_acc = latencies[key][0], rank_value
            continue
        if not slower:
            why = "same latency as a kept level"
        elif min_step > 0:
            why = f"not {min_step:g} points more accurate than a faster level"
        else:
            why = "not more accurate than a faster level"
        shown = "n/a" if rank is None else f"{rank:.2f}"
        dropped.append(f"{cfg.summary()} ({latencies[key][0]:.3f} ms, {shown} %): {why}")
    return kept, dropped


def _numbered_levels(
    kept: Sequence[SubnetConfig],
    latencies: _Latencies,
    calibrated: _Calibrated,
    predicted: Mapping[str, float | None],
    dataset: str | None,
) -> tuple[list[Level], dict[int, dict[str, torch.Tensor]]]:
    """The kept architectures as levels 1..N (rounded numbers) and their BN statistics."""
    levels: list[Level] = []
    bn_by_level: dict[int, dict[str, torch.Tensor]] = {}
    for n, cfg in enumerate(kept, start=1):
        key = cfg.key()
        p50, p95 = latencies[key]
        guess = predicted.get(key)
        measured = calibrated.accuracy.get(key)
        levels.append(
            Level(
                level=n,
                config=cfg,
                latency_ms=round(p50, 4),
                latency_p95_ms=None if p95 is None else round(max(p95, p50), 4),
                accuracy=None if measured is None else round(measured, 3),
                predicted_accuracy=None if guess is None else round(float(guess), 3),
                accuracy_dataset=dataset if measured is not None else None,
                macs_m=round(calibrated.macs[key], 3),
            )
        )
        bn_by_level[n] = calibrated.states[key]
    return levels, bn_by_level


def _header(
    supernet: Supernet,
    *,
    calibration: ImageSet,
    device: str,
    threads: int | None,
    warmup: int,
    iterations: int,
    batch_size: int,
    device_label: str | None,
) -> dict[str, Any]:
    kind = device_kind(device)
    return {
        "device": device_label or kind,
        "device_name": device_name(device),
        "profiling": {
            "mode": "eager",
            "threads": threads if threads is not None else torch.get_num_threads(),
            "dtype": "float32",
            "batch": 1,
            "warmup": warmup,
            "iterations": iterations,
            "torch": torch.__version__.split("+")[0],
            "date": _dt.date.today().isoformat(),
        },
        "supernet": supernet.identity(),
        "calibration": {"dataset": calibration.name, "images": len(calibration), "batch_size": batch_size},
    }
