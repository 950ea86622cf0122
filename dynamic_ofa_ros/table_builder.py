"""A small, real level-table generator for tests and benchmarks (CPU, eager).

:func:`build_level_table` extracts each architecture from a super-network, calibrates its BN
statistics, profiles it and counts its MACs, and returns a :class:`~dynamic_ofa_ros.levels.LevelTable`
ready for :func:`~dynamic_ofa_ros.levels.save_level_table`. It is what the test suite and
``dofa-bench``'s synthetic table use; the shipped tables come from ``dofa-levels build``, which
adds measured accuracy and per-operator latency prediction on the target device.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.errors import ArchitectureError, LevelTableError
from dynamic_ofa_ros.levels import Level, LevelTable

if TYPE_CHECKING:
    from dynamic_ofa_ros.supernet import Supernet

__all__ = ["build_level_table", "profile_module"]

#: Calibration set used when no batches are given: meaningless for trained weights.
_SYNTHETIC_CALIBRATION = "synthetic uniform-noise images (random weights: accuracy meaningless)"


def profile_module(
    module: torch.nn.Module,
    resolution: int,
    *,
    warmup: int = 5,
    iterations: int = 20,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Measure the latency of ``module`` on one (1, 3, r, r) input, eager, ``torch.inference_mode``.

    On CUDA each iteration is synchronised. This is the profiling used by
    :func:`build_level_table`.

    Args:
        module: the network to time (already on ``device``, in eval mode).
        resolution: input height and width ``r``.
        warmup: untimed iterations first.
        iterations: timed iterations.
        device: where the random input is created.

    Returns:
        One latency in milliseconds per timed iteration.
    """
    dev = torch.device(device)
    x = torch.randn(1, 3, resolution, resolution, device=dev)
    times: list[float] = []
    with torch.inference_mode():
        for i in range(warmup + iterations):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            module(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return times


class _Measured(NamedTuple):
    """One architecture after calibration and profiling, before it is given a level number."""

    p50: float
    p95: float
    config: SubnetConfig
    macs_m: float
    bn: dict[str, torch.Tensor]


def _check_configs(supernet: Supernet, configs: Sequence[SubnetConfig]) -> None:
    if not configs:
        raise LevelTableError("build_level_table: give at least one architecture")
    space = supernet.search_space()
    for i, cfg in enumerate(configs):
        try:
            space.check(cfg)
        except ArchitectureError as exc:
            raise LevelTableError(f"configs[{i}]: {exc}") from exc


def _calibration_images(
    batches: Sequence[torch.Tensor] | None, name: str | None
) -> tuple[list[torch.Tensor], str]:
    """The uint8 RGB batches to calibrate on and their description (16 noise images by default)."""
    if batches is None:
        generator = torch.Generator().manual_seed(0)
        noise = [
            torch.randint(0, 256, (8, 224, 224, 3), dtype=torch.uint8, generator=generator) for _ in range(2)
        ]
        return noise, name or _SYNTHETIC_CALIBRATION
    return [torch.as_tensor(b) for b in batches], name or "given batches"


def _measure(
    supernet: Supernet,
    configs: Sequence[SubnetConfig],
    images: Sequence[torch.Tensor],
    *,
    warmup: int,
    iterations: int,
) -> tuple[list[_Measured], int]:
    """Extract, calibrate, profile and count every architecture; also the images used per level."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    from dynamic_ofa_ros.bn import bn_state, calibrate_bn, count_macs, extract_subnet
    from dynamic_ofa_ros.preprocess import to_input_batch
    from dynamic_ofa_ros.timing import summarize

    measured: list[_Measured] = []
    used = 0
    for cfg in tqdm(list(configs), desc="levels", unit="level", leave=False):
        sub = extract_subnet(supernet.net, cfg).to("cpu")
        used = calibrate_bn(sub, [to_input_batch(b, resolution=cfg.resolution) for b in images])
        stats = summarize(profile_module(sub, cfg.resolution, warmup=warmup, iterations=iterations))
        measured.append(
            _Measured(stats["p50"], stats["p95"], cfg, count_macs(sub, cfg.resolution), bn_state(sub))
        )
    return measured, used


def _number_levels(
    measured: Sequence[_Measured],
    accuracy: Mapping[str, float] | None,
    accuracy_dataset: str | None,
) -> tuple[list[Level], dict[int, dict[str, torch.Tensor]]]:
    """Levels numbered by measured p50 (fastest = 1) and their BN statistics by number."""
    levels: list[Level] = []
    bn: dict[int, dict[str, torch.Tensor]] = {}
    for number, row in enumerate(sorted(measured, key=lambda row: row.p50), start=1):
        acc = None if accuracy is None else accuracy.get(row.config.key())
        levels.append(
            Level(
                level=number,
                config=row.config,
                latency_ms=round(row.p50, 4),
                latency_p95_ms=round(max(row.p95, row.p50), 4),
                accuracy=acc,
                accuracy_dataset=accuracy_dataset if acc is not None else None,
                macs_m=round(row.macs_m, 3),
            )
        )
        bn[number] = row.bn
    for low, high in zip(levels, levels[1:], strict=False):
        if not high.latency_ms > low.latency_ms:
            raise LevelTableError(
                f"build_level_table: levels {low.level} and {high.level} measured the same latency "
                f"({low.latency_ms} ms); choose architectures further apart"
            )
    return levels, bn


def build_level_table(
    supernet: Supernet,
    configs: Sequence[SubnetConfig],
    *,
    calibration_batches: Sequence[torch.Tensor] | None = None,
    calibration_name: str | None = None,
    threads: int | None = None,
    warmup: int = 3,
    iterations: int = 10,
    accuracy: Mapping[str, float] | None = None,
    accuracy_dataset: str | None = None,
) -> LevelTable:
    """Build a real CPU level table for ``configs``: extracted, BN-calibrated, profiled, MACs counted.

    Levels are numbered by measured p50 latency (fastest = 1). BN statistics are calibrated
    per level on ``calibration_batches`` — uint8 RGB batches (N, H, W, 3), each preprocessed
    at the level's resolution with :func:`~dynamic_ofa_ros.preprocess.to_input_batch` — or,
    when none are given, on 16 synthetic noise images (only sensible for random weights,
    whose accuracy is meaningless anyway).

    Args:
        supernet: the super-network the architectures are extracted from.
        configs: the architectures, one per level (any order).
        calibration_batches: uint8 RGB batches for BN calibration (default: noise).
        calibration_name: the table's ``calibration.dataset`` (default: a description).
        threads: torch intra-op threads while profiling (default: leave as is).
        warmup: untimed iterations per level.
        iterations: timed iterations per level.
        accuracy: ``config.key()`` → measured top-1 % on ``accuracy_dataset``.
        accuracy_dataset: the name recorded beside each measured accuracy.

    Returns:
        The table, with BN statistics for every level, not yet saved.

    Raises:
        LevelTableError: no configs, a config outside the super-network's search space, or
            two levels that measured the same latency.
    """
    from dynamic_ofa_ros.timing import device_name

    _check_configs(supernet, configs)
    images, calibration = _calibration_images(calibration_batches, calibration_name)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        measured, used = _measure(supernet, configs, images, warmup=warmup, iterations=iterations)
    finally:
        torch.set_num_threads(previous_threads)
    levels, bn = _number_levels(measured, accuracy, accuracy_dataset)
    return LevelTable(
        device="cpu",
        device_name=device_name("cpu"),
        profiling={
            "mode": "eager",
            "threads": int(threads) if threads is not None else previous_threads,
            "dtype": "float32",
            "batch": 1,
            "warmup": warmup,
            "iterations": iterations,
            "torch": torch.__version__,
            "date": datetime.date.today().isoformat(),
        },
        supernet=supernet.identity(),
        calibration={"dataset": calibration, "images": used},
        levels=levels,
        bn=bn,
    )
