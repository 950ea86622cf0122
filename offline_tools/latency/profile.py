"""Profiling: measure every operator of the search space standalone and return a latency table."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import torch

from dynamic_ofa_ros.arch import SearchSpace, SubnetConfig
from dynamic_ofa_ros.errors import DofaError
from offline_tools.errors import LatencyTableError
from offline_tools.latency.geometry import MobileNetV3Geometry, OperatorSpec
from offline_tools.latency.runners import (
    Mode,
    ProgressBar,
    Runner,
    RunnerSettings,
    Timed,
    check_counts,
    check_device_mode,
    environment,
    preempted_fraction,
    progress_bar,
    release_runners,
    resolve_clock,
    round_robin,
    split_count,
    stabilize_cpu_allocator,
    torch_threads,
)
from offline_tools.latency.table import TRIM_FRACTION, LatencyTable, OperatorStats, summarize_samples

__all__ = ["PROFILE_ITERATIONS", "PROFILE_ROUNDS", "PROFILE_WARMUP", "profile_latency_table"]

PROFILE_WARMUP = 10
PROFILE_ITERATIONS = 50
PROFILE_ROUNDS = 25


def _check_resolutions(resolutions: Iterable[int]) -> list[int]:
    wanted = sorted({int(r) for r in resolutions})
    if not wanted:
        raise LatencyTableError("no resolutions to profile; pass at least one (e.g. --resolutions 128 160)")
    for r in wanted:
        try:
            SubnetConfig(resolution=r, ks=(3,) * 20, e=(3,) * 20, d=(2,) * 5)
        except DofaError as exc:
            raise LatencyTableError(f"cannot profile resolution {r}: {exc}") from exc
    return wanted


def _profile_plan(
    resolutions: Sequence[int],
    geometry: MobileNetV3Geometry,
    space: SearchSpace | None,
    configs: Sequence[SubnetConfig] | None,
) -> dict[int, list[OperatorSpec]]:
    """The operators to time per resolution: the whole space's, or only those ``configs`` use."""
    plan: dict[int, list[OperatorSpec]] = {}
    for r in resolutions:
        if configs is None:
            plan[r] = geometry.space_operators(r, space)
            continue
        needed: dict[str, OperatorSpec] = {}
        for cfg in configs:
            if cfg.resolution == r:
                for spec in geometry.operators(cfg):
                    needed.setdefault(spec.key, spec)
        if needed:
            plan[r] = list(needed.values())
    if not plan:
        raise LatencyTableError(
            "no operators to profile: no given sub-network uses the requested resolutions"
        )
    return plan


def _time_operators(
    plan: dict[int, list[OperatorSpec]],
    geometry: MobileNetV3Geometry,
    settings: RunnerSettings,
    *,
    calls: list[int],
    bar: ProgressBar,
) -> tuple[dict[tuple[int, str], Timed], float | None]:
    """Samples of every planned operator by ``(resolution, key)``, and the preempted fraction."""
    keys: list[tuple[int, str]] = []
    runners: list[Runner] = []
    bar.set_description("profile: build")
    for r, ops in plan.items():
        for op in ops:
            runners.append(settings.operator_runner(op, geometry))
            keys.append((r, op.key))
            bar.update(1)
    timed = round_robin(
        runners, warm_each_pass=[False] * len(runners), calls=[calls] * len(runners), bar=bar, what="profile"
    )
    preempted = preempted_fraction(runners)
    release_runners(runners, settings.device)
    return dict(zip(keys, timed, strict=True)), preempted


def profile_latency_table(  # noqa: PLR0913 - every knob of a profiling run, all keyword-only
    *,
    device: str = "cpu",
    resolutions: Iterable[int],
    mode: Mode | str = "eager",
    threads: int | None = 1,
    warmup: int = PROFILE_WARMUP,
    iterations: int = PROFILE_ITERATIONS,
    rounds: int = PROFILE_ROUNDS,
    width_mult: float = 1.2,
    space: SearchSpace | None = None,
    configs: Sequence[SubnetConfig] | None = None,
    cuda_replays: int = 10,
    clock: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> LatencyTable:
    """Measure every operator of the space standalone on ``device`` and return the table.

    Each operator is built from OFA's layer classes exactly as ``get_active_subnet`` builds it
    in an extracted sub-network (``ConvLayer``, ``ResidualBlock(MBConvLayer, IdentityLayer)``,
    ``MyGlobalAvgPool2d``, ``LinearLayer``), random weights, eval mode, batch 1, float32, and
    timed in the engine's execution mode (see :class:`~offline_tools.latency.runners.Runner`): CPU
    eager with ``threads`` intra-op threads, or CUDA graphs / eager on a GPU.

    The ``iterations`` samples of each operator are taken in ``rounds`` passes over all the
    operators of all resolutions, in network order, a few consecutive calls per pass. Each
    operator therefore runs after other operators have evicted its weights from the per-core
    cache, as inside a network, and load from other processes (or a drifting clock) spreads
    over all operators and resolutions instead of biasing some. ``count``/``mean``/``std`` are
    of the fastest ``1 - TRIM_FRACTION`` of the samples (:func:`summarize_samples`).

    ``clock`` (see :func:`~offline_tools.latency.runners.resolve_clock`): by default the thread's
    CPU time on a CPU with one thread, CUDA events on a GPU. ``space`` restricts the
    kernel/expand/depth choices (default: the full OFA space); ``configs``, when given, profiles
    only the operators those sub-networks use (small tables for tests and quick checks).
    """
    wanted = _check_resolutions(resolutions)
    check_counts(warmup, iterations, rounds)
    device = str(device)
    check_device_mode(device, str(mode))
    used_clock = resolve_clock(device, threads, clock)
    pick = 0 if used_clock == "wall" else 1
    allocator = stabilize_cpu_allocator() if not device.startswith("cuda") else None
    geometry = MobileNetV3Geometry(width_mult=width_mult)
    plan = _profile_plan(wanted, geometry, space, configs)

    calls = split_count(iterations, rounds)
    n_ops = sum(len(ops) for ops in plan.values())
    bar = progress_bar(n_ops * (1 + len(calls)), "profile", progress)
    started = time.perf_counter()
    torch.manual_seed(seed)
    settings = RunnerSettings.create(device=device, mode=str(mode), warmup=warmup, cuda_replays=cuda_replays)
    with torch_threads(threads):
        timed, preempted = _time_operators(plan, geometry, settings, calls=calls, bar=bar)
    entries: dict[int, dict[str, OperatorStats]] = {r: {} for r in plan}
    for (r, key), samples in timed.items():
        entries[r][key] = summarize_samples(samples[pick])
    bar.close()
    metadata = environment(device, str(mode), threads)
    metadata.update(
        width_mult=width_mult,
        warmup=warmup,
        iterations=iterations,
        rounds=len(calls),
        cuda_replays=cuda_replays if device.startswith("cuda") else None,
        clock=used_clock,
        allocator=allocator,
        preempted_fraction=preempted,
        statistic=f"mean and std of the fastest {100 - round(100 * TRIM_FRACTION)} % of the samples",
        operators="standalone OFA layer modules (ofa.utils.layers), random weights, eval mode",
        subset=configs is not None,
        profile_seconds=round(time.perf_counter() - started, 2),
        seed=seed,
    )
    return LatencyTable(entries, metadata=metadata, geometry=geometry, name=f"profiled {device}/{mode} table")
