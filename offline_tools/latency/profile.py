"""Profiling: measure every operator of the search space standalone and return a latency table."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from dynamic_ofa_ros.arch import SearchSpace, SubnetConfig
from dynamic_ofa_ros.backends.export import OPSET
from dynamic_ofa_ros.backends.header import profiling_header
from dynamic_ofa_ros.errors import DofaError
from offline_tools.errors import LatencyTableError
from offline_tools.latency.compiled import (
    CompiledSettings,
    check_compiled_backend,
    compiled_workdir,
    default_operator_layout,
)
from offline_tools.latency.geometry import MobileNetV3Geometry, OperatorSpec
from offline_tools.latency.runners import (
    Mode,
    ProgressBar,
    RunnerSettings,
    Timed,
    TimingRunner,
    check_backend_mode,
    check_counts,
    check_device_mode,
    clock_note,
    environment,
    load_average,
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

__all__ = [
    "PROFILE_ITERATIONS",
    "PROFILE_ROUNDS",
    "PROFILE_WARMUP",
    "ExecutionSetup",
    "execution_setup",
    "profile_latency_table",
]

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


@dataclass(frozen=True)
class ExecutionSetup:
    """How operators and networks run for timing: backend, mode, clock, threads, layout.

    Built by :func:`execution_setup` (all checks done) and shared by profiling and validation.
    """

    device: str
    backend: str
    mode: str
    precision: str
    threads: int | None
    clock: str
    operator_layout: str | None
    """Compiled backends: how operators are fed and read (:mod:`offline_tools.latency.compiled`)."""

    @property
    def compiled(self) -> bool:
        """Whether a compiled backend (OpenVINO, ONNX Runtime) runs the work."""
        return self.backend != "torch"

    @contextmanager
    def runners(
        self, *, warmup: int, cuda_replays: int
    ) -> Iterator[tuple[Callable[[OperatorSpec, MobileNetV3Geometry], TimingRunner], object]]:
        """``(operator runner factory, settings)`` for this setup, valid inside the block.

        ``settings`` is a :class:`~offline_tools.latency.compiled.CompiledSettings` (its ONNX
        files live in a temporary folder removed afterwards) or a
        :class:`~offline_tools.latency.runners.RunnerSettings` (torch, under ``threads``).
        """
        if self.compiled:
            assert self.operator_layout is not None and self.threads is not None  # execution_setup
            with compiled_workdir() as workdir:
                compiled = CompiledSettings(
                    backend=self.backend,
                    precision=self.precision,
                    threads=self.threads,
                    warmup=warmup,
                    clock=self.clock,
                    layout=self.operator_layout,
                    workdir=workdir,
                )
                yield compiled.operator_runner, compiled
            return
        settings = RunnerSettings.create(
            device=self.device, mode=self.mode, warmup=warmup, cuda_replays=cuda_replays, clock=self.clock
        )
        with torch_threads(self.threads):
            yield settings.operator_runner, settings

    def metadata(self) -> dict[str, Any]:
        """The environment and backend fields a table or report records.

        On a CPU the backend fields of a level table's ``profiling`` header
        (:func:`~dynamic_ofa_ros.backends.header.profiling_header`: ``backend``,
        ``backend_version``, ``precision``, ``cpu_model``, ``isa``) -- for torch too.
        """
        out: dict[str, Any] = environment(self.device, self.mode, self.threads)
        if self.device == "cpu":
            out.update(profiling_header(self.backend, precision=self.precision))
        if self.compiled:
            out.update(operator_layout=self.operator_layout)
        out.update(clock=self.clock, clock_note=clock_note(self.clock))
        return out


def execution_setup(
    *,
    device: str,
    backend: str = "torch",
    mode: str | None = None,
    precision: str = "f32",
    threads: int | None = 1,
    clock: str = "auto",
    operator_layout: str | None = None,
) -> ExecutionSetup:
    """Check and complete the execution options (``mode`` ``None``: the backend's on ``device``)."""
    device = str(device)
    backend = str(backend)
    mode = None if mode is None else str(mode)
    if mode is None:
        mode = "compiled" if backend != "torch" else ("cuda_graph" if device.startswith("cuda") else "eager")
    check_device_mode(device, mode)
    check_backend_mode(backend, mode)
    layout: str | None = None
    if backend != "torch":
        check_compiled_backend(backend, device, precision)
        if threads is None or threads < 1:
            raise LatencyTableError(f"threads={threads}: a compiled backend needs an explicit count >= 1")
        layout = operator_layout or default_operator_layout(backend)
    elif precision != "f32":
        raise LatencyTableError(f"the torch backend profiles f32 only, not {precision!r}")
    used_clock = resolve_clock(device, threads, clock, backend=backend)
    return ExecutionSetup(device, backend, mode, precision, threads, used_clock, layout)


def _time_operators(
    plan: dict[int, list[OperatorSpec]],
    geometry: MobileNetV3Geometry,
    setup: ExecutionSetup,
    *,
    warmup: int,
    cuda_replays: int,
    calls: list[int],
    bar: ProgressBar,
) -> tuple[dict[tuple[int, str], Timed], Timed | None, float | None]:
    """Samples of every operator by ``(resolution, key)``, an empty call's, the preempted fraction.

    The empty call (compiled backends only) is timed in the same passes as the operators.
    """
    keys: list[tuple[int, str]] = []
    runners: list[TimingRunner] = []
    with setup.runners(warmup=warmup, cuda_replays=cuda_replays) as (make, settings):
        bar.set_description("profile: build" if not setup.compiled else f"profile: compile ({setup.backend})")
        for r, ops in plan.items():
            for op in ops:
                runners.append(make(op, geometry))
                keys.append((r, op.key))
                bar.update(1)
        if isinstance(settings, CompiledSettings):
            runners.append(settings.call_runner())
        timed = round_robin(
            runners,
            warm_each_pass=[False] * len(runners),
            calls=[calls] * len(runners),
            bar=bar,
            what="profile",
        )
        preempted = preempted_fraction(runners)
        release_runners(runners, setup.device)
    call = timed[len(keys)] if len(timed) > len(keys) else None
    return dict(zip(keys, timed[: len(keys)], strict=True)), call, preempted


def profile_latency_table(  # noqa: PLR0913 - every knob of a profiling run, all keyword-only
    *,
    device: str = "cpu",
    resolutions: Iterable[int],
    mode: Mode | str | None = None,
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
    backend: str = "torch",
    precision: str = "f32",
    operator_layout: str | None = None,
    progress: bool = True,
) -> LatencyTable:
    """Measure every operator of the space standalone on ``device`` and return the table.

    Each operator is built from OFA's layer classes exactly as ``get_active_subnet`` builds it
    in an extracted sub-network (``ConvLayer``, ``ResidualBlock(MBConvLayer, IdentityLayer)``,
    ``MyGlobalAvgPool2d``, ``LinearLayer``), random weights, eval mode, batch 1, float32, and
    timed in the execution backend that will run the levels:

    * ``backend="torch"`` (default): the engine's torch mode (see
      :class:`~offline_tools.latency.runners.Runner`): CPU eager with ``threads`` intra-op
      threads (``mode`` ``eager``), or CUDA graphs / eager on a GPU.
    * ``backend="openvino"`` / ``"onnxruntime"`` (``mode`` ``compiled``, CPU): each operator is
      exported to ONNX with a static input shape and compiled by that backend with ``threads``
      and the explicit ``precision``, as the runtime compiles a level; the time of an empty
      call, measured in the same passes, is subtracted from every operator
      (:mod:`offline_tools.latency.compiled`; ``operator_layout``: default per backend).

    The ``iterations`` samples of each operator are taken in ``rounds`` passes over all the
    operators of all resolutions, in network order, a few consecutive calls per pass. Each
    operator therefore runs after other operators have evicted its weights from the per-core
    cache, as inside a network, and load from other processes (or a drifting clock) spreads
    over all operators and resolutions instead of biasing some. ``count``/``mean``/``std`` are
    of the fastest ``1 - TRIM_FRACTION`` of the samples (:func:`summarize_samples`).

    ``clock`` (see :func:`~offline_tools.latency.runners.resolve_clock`): by default with one
    thread the thread's (torch) or the process's (compiled backends) CPU time, else the wall
    clock; CUDA events on a GPU. ``space`` restricts the kernel/expand/depth choices (default:
    the full OFA space); ``configs``, when given, profiles only the operators those
    sub-networks use (small tables for tests and quick checks).
    """
    wanted = _check_resolutions(resolutions)
    check_counts(warmup, iterations, rounds)
    setup = execution_setup(
        device=device,
        backend=backend,
        mode=mode,
        precision=precision,
        threads=threads,
        clock=clock,
        operator_layout=operator_layout,
    )
    pick = 0 if setup.clock == "wall" else 1
    allocator = stabilize_cpu_allocator() if not setup.device.startswith("cuda") else None
    geometry = MobileNetV3Geometry(width_mult=width_mult)
    plan = _profile_plan(wanted, geometry, space, configs)

    calls = split_count(iterations, rounds)
    n_ops = sum(len(ops) for ops in plan.values())
    n_timed = n_ops + (1 if setup.compiled else 0)  # a compiled backend's empty call is timed too
    bar = progress_bar(n_ops + n_timed * len(calls), "profile", progress)
    started = time.perf_counter()
    torch.manual_seed(seed)
    metadata = setup.metadata()
    load_before = load_average()
    timed, call, preempted = _time_operators(
        plan, geometry, setup, warmup=warmup, cuda_replays=cuda_replays, calls=calls, bar=bar
    )
    overhead = 0.0 if call is None else summarize_samples(call[pick]).mean
    entries: dict[int, dict[str, OperatorStats]] = {r: {} for r in plan}
    for (r, key), samples in timed.items():
        stats = summarize_samples(samples[pick])
        entries[r][key] = OperatorStats(stats.count, max(0.0, stats.mean - overhead), stats.std)
    bar.close()
    metadata.update(
        width_mult=width_mult,
        warmup=warmup,
        iterations=iterations,
        rounds=len(calls),
        cuda_replays=cuda_replays if setup.device.startswith("cuda") else None,
        allocator=allocator,
        preempted_fraction=preempted,
        statistic=f"mean and std of the fastest {100 - round(100 * TRIM_FRACTION)} % of the samples",
        operators=_operators_note(setup),
        subset=configs is not None,
        profile_seconds=round(time.perf_counter() - started, 2),
        load_average={"before": load_before, "after": load_average()},
        seed=seed,
    )
    if call is not None:
        metadata["call_overhead_ms"] = round(overhead, 5)
    name = f"profiled {setup.device}/{setup.backend if setup.compiled else setup.mode} table"
    return LatencyTable(entries, metadata=metadata, geometry=geometry, name=name)


def _operators_note(setup: ExecutionSetup) -> str:
    """What one table entry measures."""
    if not setup.compiled:
        return "standalone OFA layer modules (ofa.utils.layers), random weights, eval mode"
    layout = (
        "channels-last input (the stem: NCHW), spatial output averaged"
        if setup.operator_layout == "channels_last"
        else "NCHW input and output"
    )
    return (
        f"standalone OFA layer modules exported to ONNX (opset {OPSET}, static shape, {layout}) and"
        f" compiled by {setup.backend} ({setup.precision}, {setup.threads} thread(s)); random weights;"
        " the time of an empty call (call_overhead_ms) subtracted"
    )
