"""Turn a level family into a level table: per-level BN calibration, top-1, real latency, MACs.

For every level of a family (``dofa-levels search`` output, or any list of architectures):

1. extract the sub-network and reset + recompute its batch-norm running statistics on the
   calibration images at the level's resolution (:func:`dynamic_ofa_ros.bn.calibrate_bn`);
2. measure top-1 on the validation images, batched (skipped for random weights, whose accuracy
   is meaningless);
3. count MACs;
4. measure the latency on this device through :class:`dynamic_ofa_ros.engine.LevelEngine` in its
   execution mode (threads on CPU, CUDA graphs on GPU): p50 and p95 of ``iterations`` frames
   after ``warmup`` — or copy the latencies of the same architectures from another table
   (``latency_from``; accuracy does not depend on the device, latency does).

Levels are then sorted by latency and only those that keep both latency and accuracy strictly
increasing are kept (a measured Pareto front; the dropped ones are reported), renumbered 1..N and
written with :func:`dynamic_ofa_ros.levels.save_level_table` (JSON + BN safetensors, atomic).
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm  # type: ignore[import-untyped]

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.errors import ArchitectureError, DofaError
from dynamic_ofa_ros.levels import Level, LevelTable
from dynamic_ofa_ros.timing import device_kind, device_name, summarize
from offline_tools.accuracy import calibrated_subnet, top1_accuracy

if TYPE_CHECKING:  # pragma: no cover - typing only
    from dynamic_ofa_ros.supernet import Supernet
    from offline_tools.datasets import ImageSet

__all__ = ["CalibrationError", "CalibrationResult", "calibrate_levels", "measure_engine_latency"]


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


def measure_engine_latency(
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
    progress: bool = True,
) -> tuple[dict[int, tuple[float, float]], dict[str, Any]]:
    """``{level: (p50 ms, p95 ms)}`` of every level through the runtime engine, and the engine's mode.

    Every level first runs ``warmup`` frames of ``image``; then ``rounds`` passes over the levels
    each time ``iterations / rounds`` timed frames per level (after one untimed frame following
    the switch), so that a slow period of a shared machine hits all levels alike rather than
    one. Only frames that ran on the intended level count.
    """
    from dynamic_ofa_ros.engine import LevelEngine

    engine = LevelEngine(
        supernet, table, device=device, threads=threads, cuda_graphs=cuda_graphs, check_device=False
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


def _engine_mode(engine: Any) -> dict[str, Any]:
    """The execution mode the engine chose (what the latencies were measured in)."""
    per_level = list(getattr(engine, "execution", {}).values())
    modes = sorted({str(v.get("mode")) for v in per_level}) or ["eager"]
    info: dict[str, Any] = {"mode": modes[0] if len(modes) == 1 else "+".join(modes)}
    if getattr(engine, "threads", None) is not None:
        info["threads"] = engine.threads
    if any(v.get("half") for v in per_level):
        info["dtype"] = "float16 where faster" if not all(v.get("half") for v in per_level) else "float16"
    if any(v.get("channels_last") for v in per_level):
        info["channels_last"] = [bool(v.get("channels_last")) for v in per_level]
    return info


def calibrate_levels(
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
) -> CalibrationResult:
    """Calibrate, evaluate and profile every level of ``family`` (see the module docstring).

    ``threads`` is the engine's CPU thread count (what the latencies are measured with);
    ``compute_threads`` the thread count of BN calibration and evaluation (default: ``threads``,
    else torch's current setting) — e.g. all cores for the offline work, 1 for the latency.
    ``family``: a level table/family (its ``predicted_accuracy`` values are kept) or architectures.
    ``validation``: labelled images for top-1 (``None``: no accuracy measured). ``latency_from``:
    copy ``latency_ms``/``latency_p95_ms`` of the same architectures from that table (and its
    ``profiling``/``device``) instead of measuring here. ``min_step``: also drop a level less than
    this many points more accurate than the previous kept one (default 0: the measured Pareto
    front). Returns the table (not yet written).
    """
    from dynamic_ofa_ros import bn

    started = time.perf_counter()
    if isinstance(family, LevelTable):
        configs = [lv.config for lv in family.levels]
        predicted = {lv.config.key(): lv.predicted_accuracy for lv in family.levels}
        family_extra = dict(family.extra)
    else:
        configs = list(family)
        predicted = {}
        family_extra = {}
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
    if validation is not None and not validation.labelled:
        raise CalibrationError(f"{validation.name}: the validation images have no labels")
    measure_accuracy = validation is not None and supernet.meaningful_accuracy
    notes: list[str] = []
    if validation is not None and not supernet.meaningful_accuracy:
        notes.append("random weights: accuracy not measured (it would be meaningless)")
    latency_rows: dict[str, tuple[float, float | None]] = {}
    if latency_from is not None:
        for lv in latency_from.levels:
            latency_rows[lv.config.key()] = (lv.latency_ms, lv.latency_p95_ms)
        missing = [c.key() for c in configs if c.key() not in latency_rows]
        if missing:
            raise CalibrationError(
                f"--latency-from table {latency_from.path or ''} has no level for {len(missing)} of the "
                f"architectures (e.g. {missing[0]}); it must be a table of the same family"
            )

    previous_threads = _with_threads(compute_threads if compute_threads is not None else threads)
    seconds: dict[str, float] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    macs: dict[str, float] = {}
    accuracy: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        order = sorted(range(len(configs)), key=lambda i: (configs[i].resolution, i))
        for i in tqdm(order, desc="calibrate levels", disable=not progress, leave=False):
            cfg = configs[i]
            module = calibrated_subnet(supernet, cfg, calibration, batch_size=batch_size, device=device)
            states[cfg.key()] = bn.bn_state(module)
            macs[cfg.key()] = float(bn.count_macs(module, cfg.resolution))
            if measure_accuracy:
                assert validation is not None
                accuracy[cfg.key()] = top1_accuracy(
                    module,
                    validation,
                    cfg.resolution,
                    batch_size=batch_size,
                    device=device,
                    progress=progress,
                    desc=f"top-1 {cfg.key()[:24]}",
                )
            del module
        seconds["calibrate_and_evaluate"] = time.perf_counter() - t0
        torch.set_num_threads(previous_threads)
        _with_threads(threads)

        dataset = validation.name if measure_accuracy and validation is not None else None
        provisional = [
            Level(
                level=n,
                config=cfg,
                latency_ms=float(n),
                accuracy=None,
                predicted_accuracy=None,
                macs_m=round(macs[cfg.key()], 3),
            )
            for n, cfg in enumerate(configs, start=1)
        ]
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
        if latency_from is not None:
            lat = {cfg.key(): latency_rows[cfg.key()] for cfg in configs}
            header["device"] = latency_from.device
            header["device_name"] = latency_from.device_name
            header["profiling"] = {**latency_from.profiling, "latency_from": str(latency_from.path or "")}
        else:
            temp = LevelTable(
                device=header["device"],
                device_name=header["device_name"],
                profiling=header["profiling"],
                supernet=header["supernet"],
                calibration=header["calibration"],
                levels=provisional,
                bn={lv.level: states[lv.config.key()] for lv in provisional},
            )
            image = calibration.images[0] if validation is None else validation.images[0]
            measured, mode = measure_engine_latency(
                supernet,
                temp,
                image,
                device=device,
                threads=threads,
                cuda_graphs=cuda_graphs,
                warmup=warmup,
                iterations=iterations,
                progress=progress,
            )
            header["profiling"].update(mode)
            lat = {lv.config.key(): measured[lv.level] for lv in provisional}
        seconds["latency"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous_threads)

    rows = sorted(configs, key=lambda c: (lat[c.key()][0], c.key()))
    kept: list[SubnetConfig] = []
    dropped: list[str] = []
    last_lat, last_acc = -math.inf, -math.inf
    for cfg in rows:
        key = cfg.key()
        rank = accuracy.get(key, predicted.get(key))
        rank_value = -math.inf if rank is None else rank
        slower = lat[key][0] > last_lat
        better = rank is None or rank_value > last_acc + (min_step if math.isfinite(last_acc) else 0.0)
        if slower and better:
            kept.append(cfg)
            last_lat, last_acc = lat[key][0], rank_value
        else:
            if not slower:
                why = "same latency as a kept level"
            elif min_step > 0:
                why = f"not {min_step:g} points more accurate than a faster level"
            else:
                why = "not more accurate than a faster level"
            shown = "n/a" if rank is None else f"{rank:.2f}"
            dropped.append(f"{cfg.summary()} ({lat[key][0]:.3f} ms, {shown} %): {why}")
    levels = []
    bn_by_level: dict[int, dict[str, torch.Tensor]] = {}
    for n, cfg in enumerate(kept, start=1):
        key = cfg.key()
        p50, p95 = lat[key]
        levels.append(
            Level(
                level=n,
                config=cfg,
                latency_ms=round(p50, 4),
                latency_p95_ms=None if p95 is None else round(max(p95, p50), 4),
                accuracy=round(accuracy[key], 3) if key in accuracy else None,
                predicted_accuracy=None if predicted.get(key) is None else round(float(predicted[key]), 3),  # type: ignore[arg-type]
                accuracy_dataset=dataset if key in accuracy else None,
                macs_m=round(macs[key], 3),
            )
        )
        bn_by_level[n] = states[key]
    seconds["total"] = time.perf_counter() - started
    table_extra = {**family_extra, **(extra or {})}
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
