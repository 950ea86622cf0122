"""End-to-end measurement of sub-networks and validation of a latency table against it."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dynamic_ofa_ros.arch import SearchSpace, SubnetConfig
from dynamic_ofa_ros.bn import extract_subnet
from dynamic_ofa_ros.ofa_compat import build_ofa_mbv3
from dynamic_ofa_ros.timing import percentile
from offline_tools.errors import LatencyTableError
from offline_tools.latency.compiled import CompiledSettings
from offline_tools.latency.geometry import MobileNetV3Geometry, OperatorSpec
from offline_tools.latency.profile import (
    PROFILE_ITERATIONS,
    PROFILE_ROUNDS,
    ExecutionSetup,
    execution_setup,
)
from offline_tools.latency.runners import (
    Mode,
    ProgressBar,
    RunnerSettings,
    Timed,
    TimingRunner,
    check_counts,
    load_average,
    preempted_fraction,
    progress_bar,
    release_runners,
    round_robin,
    split_count,
    stabilize_cpu_allocator,
    tracks_preemption,
)
from offline_tools.latency.table import (
    TRIM_FRACTION,
    LatencyCorrection,
    LatencyTable,
    OperatorStats,
    fit_correction,
    summarize_samples,
)
from offline_tools.stats import spearman_rank_correlation

__all__ = [
    "VALIDATE_ITERATIONS",
    "VALIDATE_ROUNDS",
    "VALIDATE_WARMUP",
    "SubnetSamples",
    "error_summary",
    "measure_subnets",
    "validate_latency_table",
    "validation_summary",
]

VALIDATE_WARMUP = 5
VALIDATE_ITERATIONS = 40
VALIDATE_ROUNDS = 8


@dataclass
class SubnetSamples:
    """End-to-end timing samples of one sub-network (ms): wall clock and the run's CPU clock.

    ``cpu_ms`` holds the thread's (torch) or the process's (compiled backends) CPU time, as
    the run's clock says; on CUDA both lists hold the CUDA-event times.
    """

    config: SubnetConfig
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    n_preempted: int = 0
    """Samples during which the thread was involuntarily descheduled (CPU, Linux)."""

    def samples(self, clock: str) -> list[float]:
        """The samples of ``clock`` (``"wall"``; else the CPU clock or ``"cuda_events"``)."""
        return self.wall_ms if clock == "wall" else self.cpu_ms


def error_summary(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Percentage errors of ``predicted`` against ``measured`` and their rank correlation.

    ``mean_abs_pct_error``, ``max_abs_pct_error``, ``mean_signed_pct_error`` (bias; negative =
    optimistic prediction) and ``spearman`` (:func:`offline_tools.stats.spearman_rank_correlation`).
    """
    errors = [100.0 * (p - m) / m for p, m in zip(predicted, measured, strict=True)]
    return {
        "mean_abs_pct_error": statistics.fmean(abs(e) for e in errors),
        "max_abs_pct_error": max(abs(e) for e in errors),
        "mean_signed_pct_error": statistics.fmean(errors),
        "spearman": spearman_rank_correlation(predicted, measured),
    }


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def _interleaved(
    runners: Sequence[TimingRunner],
    *,
    n_subnets: int,
    subnet_calls: list[int],
    operator_calls: list[int],
    seed: int,
    bar: ProgressBar,
) -> list[Timed]:
    """Time sub-network runners (the first ``n_subnets``) and operator runners shuffled in passes."""
    order = list(range(len(runners)))
    random.Random(seed).shuffle(order)
    timed_shuffled = round_robin(
        [runners[i] for i in order],
        warm_each_pass=[i < n_subnets for i in order],
        calls=[subnet_calls if i < n_subnets else operator_calls for i in order],
        bar=bar,
        what="measure",
    )
    timed: list[Timed] = [([], [])] * len(runners)
    for position, i in enumerate(order):
        timed[i] = timed_shuffled[position]
    return timed


def _paired_table(
    op_specs: Mapping[tuple[int, str], OperatorSpec],
    timed: Sequence[Timed],
    *,
    clock: str,
    geometry: MobileNetV3Geometry,
    preempted: float | None,
    call: Timed | None,
) -> LatencyTable:
    """The same-session operator table from the operators' samples (in ``op_specs`` order).

    ``call``: the empty call's samples (compiled backends), subtracted as when profiling.
    """
    pick = 0 if clock == "wall" else 1
    overhead = 0.0 if call is None else summarize_samples(call[pick]).mean
    entries: dict[int, dict[str, OperatorStats]] = {}
    for (r, key), samples in zip(op_specs, timed, strict=True):
        stats = summarize_samples(samples[pick])
        entries.setdefault(r, {})[key] = OperatorStats(
            stats.count, max(0.0, stats.mean - overhead), stats.std
        )
    return LatencyTable(
        entries,
        metadata={
            "clock": clock,
            "width_mult": geometry.width_mult,
            "subset": True,
            "preempted_fraction": preempted,
        },
        geometry=geometry,
        name="paired operator table",
    )


def _runners(
    net: nn.Module,
    configs: Sequence[SubnetConfig],
    operators: Iterable[OperatorSpec],
    *,
    make: Callable[[OperatorSpec, MobileNetV3Geometry], TimingRunner],
    settings: object,
    geometry: MobileNetV3Geometry,
    bar: ProgressBar,
) -> list[TimingRunner]:
    """Runners of the sub-networks extracted from ``net`` (first, in order), then of ``operators``.

    Compiled backends (``settings`` a :class:`CompiledSettings`): each sub-network is exported
    as the runtime exports a level and compiled; with operators, an empty call comes last.
    """
    runners: list[TimingRunner] = []
    bar.set_description("measure: extract")
    for cfg in configs:
        module = extract_subnet(net, cfg)
        if isinstance(settings, CompiledSettings):
            runners.append(settings.network_runner(module, cfg.resolution))
        else:
            assert isinstance(settings, RunnerSettings)
            x = torch.randn(1, 3, cfg.resolution, cfg.resolution, device=settings.device)
            runners.append(settings.runner(module.to(settings.device), x))
        bar.update(1)
    specs = list(operators)
    for spec in specs:
        runners.append(make(spec, geometry))
        bar.update(1)
    if specs and isinstance(settings, CompiledSettings):
        runners.append(settings.call_runner())
    return runners


def measure_subnets(  # noqa: PLR0913 - every knob of a measuring run, all keyword-only
    configs: Sequence[SubnetConfig],
    *,
    supernet: nn.Module | None = None,
    device: str = "cpu",
    mode: Mode | str | None = None,
    threads: int | None = 1,
    warmup: int = VALIDATE_WARMUP,
    iterations: int = VALIDATE_ITERATIONS,
    rounds: int = VALIDATE_ROUNDS,
    width_mult: float = 1.2,
    cuda_replays: int = 10,
    seed: int = 0,
    paired_operators: bool = False,
    operator_calls_per_pass: int = PROFILE_ITERATIONS // PROFILE_ROUNDS,
    clock: str = "auto",
    backend: str = "torch",
    precision: str = "f32",
    operator_layout: str | None = None,
    progress: bool = True,
) -> tuple[list[SubnetSamples], LatencyTable | None]:
    """End-to-end latency samples of each sub-network, extracted and run in the execution backend.

    Sub-networks are extracted from ``supernet`` (default: a random-weight OFA MobileNetV3 from
    ``dynamic_ofa_ros.ofa_compat.build_ofa_mbv3``; the weights do not change latency) with
    ``dynamic_ofa_ros.bn.extract_subnet`` and measured round-robin in ``rounds`` passes; in each
    pass a sub-network gets one untimed run (the engine runs the same level frame after frame,
    so its steady state is warm) and then its share of ``iterations`` timed runs. Torch on a
    CPU: ``inference_mode``, ``threads`` threads; CUDA: a CUDA graph per sub-network in
    ``cuda_graph`` mode; a compiled backend (``backend`` ``openvino``/``onnxruntime``): the
    sub-network exported as the runtime exports a level (BN folded, softmax) and compiled with
    ``threads`` and ``precision``, the model alone timed (a preprocessed static input) with
    the profiling clock (:func:`~offline_tools.latency.runners.resolve_clock`).

    With ``paired_operators``, every operator of these sub-networks is also timed standalone in
    the same passes (interleaved with the sub-networks, ``operator_calls_per_pass`` consecutive
    calls per pass as when profiling, in the same backend and operator layout) and returned as
    a second table: its prediction error against these measurements is the predictor's own
    error, free of any change of machine load between profiling and validation.
    """
    setup = execution_setup(
        device=device,
        backend=backend,
        mode=mode,
        precision=precision,
        threads=threads,
        clock=clock,
        operator_layout=operator_layout,
    )
    check_counts(warmup, iterations, rounds)
    if not setup.device.startswith("cuda"):
        stabilize_cpu_allocator()
    torch.manual_seed(seed)
    geometry = MobileNetV3Geometry(width_mult=width_mult)
    net = supernet if supernet is not None else build_ofa_mbv3(width_mult=width_mult)
    op_specs: dict[tuple[int, str], OperatorSpec] = {}
    if paired_operators:
        for cfg in configs:
            for spec in geometry.operators(cfg):
                op_specs.setdefault((cfg.resolution, spec.key), spec)
    subnet_calls = split_count(iterations, rounds)
    n_runners = len(configs) + len(op_specs)
    n_timed = n_runners + (1 if op_specs and setup.compiled else 0)  # + the empty call (compiled)
    bar = progress_bar(n_runners + n_timed * len(subnet_calls), "measure", progress)
    with setup.runners(warmup=warmup, cuda_replays=cuda_replays) as (make, settings):
        runners = _runners(
            net, configs, op_specs.values(), make=make, settings=settings, geometry=geometry, bar=bar
        )
        timed = _interleaved(
            runners,
            n_subnets=len(configs),
            subnet_calls=subnet_calls,
            operator_calls=[max(1, operator_calls_per_pass)] * len(subnet_calls),
            seed=seed,
            bar=bar,
        )
        preempted = [runner.n_preempted for runner in runners]
        op_preempted = preempted_fraction(runners[len(configs) :])
        release_runners(runners, setup.device)
    bar.close()
    results = [
        SubnetSamples(cfg, wall, cpu, n)
        for cfg, (wall, cpu), n in zip(configs, timed, preempted, strict=False)
    ]
    if not paired_operators:
        return results, None
    n_ops = len(op_specs)
    paired = _paired_table(
        op_specs,
        timed[len(configs) : len(configs) + n_ops],
        clock=setup.clock,
        geometry=geometry,
        preempted=op_preempted,
        call=timed[-1] if len(timed) > len(configs) + n_ops else None,
    )
    return results, paired


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _calls_per_pass(metadata: Mapping[str, Any]) -> int:
    """Consecutive calls per operator and pass used when the table was profiled."""
    try:
        return max(1, int(metadata["iterations"]) // int(metadata["rounds"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return max(1, PROFILE_ITERATIONS // PROFILE_ROUNDS)


def _add_fit(
    report: dict[str, Any],
    raw: Sequence[float],
    measured: Sequence[float],
    configs: Sequence[SubnetConfig],
    *,
    seed: int,
    clock: str,
) -> None:
    """Fit a correction on all sub-networks and check it leave-one-out; record both in ``report``."""
    if len(raw) < 3:
        raise LatencyTableError(
            "fitting a correction with a leave-one-out check needs at least 3 sub-networks"
        )
    correction = fit_correction(raw, measured)
    loo: list[float] = []
    for i in range(len(raw)):
        others = [j for j in range(len(raw)) if j != i]
        c = fit_correction([raw[j] for j in others], [measured[j] for j in others])
        loo.append(c.apply(raw[i]))
    fitted = [correction.apply(v) for v in raw]
    fit_resolutions = sorted({c.resolution for c in configs})
    report["fitted_in_sample"] = error_summary(fitted, measured)
    report["fitted_loo"] = error_summary(loo, measured)
    details = {
        "fitted_on": f"{len(raw)} sub-networks, seed {seed}, resolutions {fit_resolutions}",
        "clock": clock,
        "date": report["date"],
        "raw_mean_abs_pct_error": report["raw"]["mean_abs_pct_error"],
        "loo_mean_abs_pct_error": report["fitted_loo"]["mean_abs_pct_error"],
    }
    report["fitted_correction"] = LatencyCorrection(
        scale=correction.scale, offset_ms=correction.offset_ms, n_subnets=len(raw), details=details
    ).to_dict()


def _validation_configs(
    table: LatencyTable,
    configs: Sequence[SubnetConfig] | None,
    n_subnets: int,
    space: SearchSpace | None,
    seed: int,
) -> Sequence[SubnetConfig]:
    """The given ``configs``, or ``n_subnets`` random sub-networks of ``space`` drawn with ``seed``."""
    if configs is not None:
        if len(configs) < 2:
            raise LatencyTableError("validation needs at least 2 sub-networks")
        return configs
    if n_subnets < 2:
        raise LatencyTableError(f"n_subnets={n_subnets}: validation needs at least 2 sub-networks")
    space = space or SearchSpace(resolutions=table.resolutions)
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n_subnets)]


def _subnet_rows(
    configs: Sequence[SubnetConfig],
    results: Sequence[SubnetSamples],
    *,
    clock: str,
    raw: Sequence[float],
    corrected: Sequence[float] | None,
    paired_raw: Sequence[float] | None,
) -> list[dict[str, Any]]:
    """One report row per sub-network: its predictions and its measurements."""
    rows = []
    for i, (cfg, result) in enumerate(zip(configs, results, strict=True)):
        samples = result.samples(clock)
        row: dict[str, Any] = {"arch": cfg.key(), "config": cfg.to_dict(), "predicted_raw_ms": raw[i]}
        if corrected is not None:
            row["predicted_corrected_ms"] = corrected[i]
        row["measured_ms"] = summarize_samples(samples).mean
        row["measured_median_ms"] = percentile(samples, 50)
        row["measured_wall_ms"] = summarize_samples(result.wall_ms).mean
        if paired_raw is not None:
            row["paired_predicted_ms"] = paired_raw[i]
        rows.append(row)
    return rows


def _preemption(report: dict[str, Any], results: Sequence[SubnetSamples], table: LatencyTable) -> None:
    """Record how many end-to-end CPU samples were preempted, beside the table's own fraction."""
    n_samples = sum(len(r.wall_ms) for r in results)
    if report["device"] == "cpu" and tracks_preemption() and n_samples:
        report["preempted_fraction"] = round(sum(r.n_preempted for r in results) / n_samples, 4)
        report["table_preempted_fraction"] = table.metadata.get("preempted_fraction")


def _compare(
    report: dict[str, Any],
    table: LatencyTable,
    configs: Sequence[SubnetConfig],
    results: Sequence[SubnetSamples],
    paired_table: LatencyTable | None,
    *,
    raw: Sequence[float],
    measured: Sequence[float],
    fit: bool,
    seed: int,
) -> None:
    """Add the error blocks (``raw_wall``, ``paired``, ``corrected``, fit) and ``subnets`` to ``report``."""
    clock = str(report["clock"])
    if clock in ("thread_cpu", "process_cpu"):
        report["raw_wall"] = error_summary(raw, [summarize_samples(r.wall_ms).mean for r in results])
    paired_raw: list[float] | None = None
    if paired_table is not None:
        paired_raw = [paired_table.predict_raw(cfg) for cfg in configs]
        report["paired"] = error_summary(paired_raw, measured)
        report["paired_preempted_fraction"] = paired_table.metadata.get("preempted_fraction")
    corrected: list[float] | None = None
    if table.correction is not None:
        corrected = [table.correction.apply(v) for v in raw]
        report["corrected"] = error_summary(corrected, measured)
        report["correction"] = table.correction.to_dict()
    if fit:
        try:
            _add_fit(report, raw, measured, configs, seed=seed, clock=clock)
        except LatencyTableError as exc:
            report["fit_error"] = str(exc)
    report["subnets"] = _subnet_rows(
        configs, results, clock=clock, raw=raw, corrected=corrected, paired_raw=paired_raw
    )


def validate_latency_table(  # noqa: PLR0913 - every knob of a validation run, all keyword-only
    table: LatencyTable,
    *,
    n_subnets: int = 30,
    device: str = "cpu",
    mode: Mode | str | None = None,
    threads: int | None = 1,
    seed: int = 0,
    warmup: int = VALIDATE_WARMUP,
    iterations: int = VALIDATE_ITERATIONS,
    rounds: int = VALIDATE_ROUNDS,
    space: SearchSpace | None = None,
    configs: Sequence[SubnetConfig] | None = None,
    supernet: nn.Module | None = None,
    fit: bool = False,
    paired: bool = False,
    cuda_replays: int = 10,
    clock: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure sub-networks end to end and compare them with the table's prediction.

    ``n_subnets`` random sub-networks of ``space`` (default: the full OFA space at the table's
    resolutions) drawn with ``seed``, or the given ``configs``, are measured with
    :func:`measure_subnets` in the table's execution backend (``backend``/``precision``,
    default the table's; another backend than the table's is refused with
    :class:`LatencyTableError`: it would compare two runtimes) and summarised with the same
    statistic (:func:`~offline_tools.latency.table.summarize_samples`) and clock (``clock``,
    default the table's ``metadata["clock"]``, else
    :func:`~offline_tools.latency.runners.resolve_clock`'s choice).

    Returns a JSON-ready dict: the environment (``device``, ``device_name``, ``mode``,
    ``threads``, versions; ``backend``, ``backend_version``, ``precision``, ``cpu_model``,
    ``isa`` on a CPU), ``clock``, ``n_subnets``, ``seconds``, ``raw`` (the plain operator
    sum), ``raw_wall`` (the same against wall-clock time, with a CPU clock), ``corrected`` when
    the table has a correction, and with ``fit=True`` a ``fitted_correction`` (weighted least
    squares on these measurements, see :func:`~offline_tools.latency.table.fit_correction`),
    ``fitted_in_sample`` and ``fitted_loo`` (leave-one-out: each sub-network predicted by a
    correction fitted on the others, an honest out-of-sample estimate). Each error block has
    ``mean_abs_pct_error``, ``max_abs_pct_error``, ``mean_signed_pct_error`` (bias; negative =
    the table is optimistic) and ``spearman`` (rank correlation); ``subnets`` lists every
    sub-network with its predictions and measurements. With ``paired``, the sub-networks'
    operators are also re-timed in the same passes (see :func:`measure_subnets`) and ``paired``
    holds the error of that same-session table: the predictor's modelling error without the
    drift of machine load between profiling and validation (large differences between ``raw``
    and ``paired`` mean the machine was busier or quieter while profiling).
    """
    backend = table.require_backend(backend, precision, consumer="validate-latency")
    setup = execution_setup(
        device=device,
        backend=backend,
        mode=mode,
        precision=str(table.metadata.get("precision", "f32")),
        threads=threads,
        clock=clock or str(table.metadata.get("clock", "auto")),
        operator_layout=table.metadata.get("operator_layout"),
    )
    configs = _validation_configs(table, configs, n_subnets, space, seed)
    raw = [table.predict_raw(cfg) for cfg in configs]  # fails early on a missing key or resolution
    started = time.perf_counter()
    load_before = load_average()
    results, paired_table = measure_subnets(
        configs,
        supernet=supernet,
        device=setup.device,
        mode=setup.mode,
        threads=threads,
        warmup=warmup,
        iterations=iterations,
        rounds=rounds,
        width_mult=table.geometry.width_mult,
        cuda_replays=cuda_replays,
        seed=seed,
        paired_operators=paired,
        operator_calls_per_pass=_calls_per_pass(table.metadata),
        clock=setup.clock,
        backend=setup.backend,
        precision=setup.precision,
        operator_layout=setup.operator_layout,
        progress=progress,
    )
    measured = [summarize_samples(r.samples(setup.clock)).mean for r in results]
    report: dict[str, Any] = setup.metadata()
    report.update(
        table=table.name,
        table_device=table.metadata.get("device_name"),
        allocator=stabilize_cpu_allocator() if not setup.device.startswith("cuda") else None,
        n_subnets=len(configs),
        seed=seed,
        warmup=warmup,
        iterations=iterations,
        rounds=rounds,
        statistic=f"mean of the fastest {100 - round(100 * TRIM_FRACTION)} % of the samples",
        timed=_timed_note(setup),
        seconds=round(time.perf_counter() - started, 2),
        load_average={"before": load_before, "after": load_average()},
        raw=error_summary(raw, measured),
    )
    _preemption(report, results, table)
    _compare(report, table, configs, results, paired_table, raw=raw, measured=measured, fit=fit, seed=seed)
    return report


def _timed_note(setup: ExecutionSetup) -> str:
    """What one end-to-end sample measures."""
    if setup.compiled:
        return (
            f"the sub-network exported as the runtime exports a level (BN folded, softmax), compiled by"
            f" {setup.backend} ({setup.precision}, {setup.threads} thread(s)); one call of the compiled"
            " model on a preprocessed (1, 3, r, r) input (model only)"
        )
    return "the extracted sub-network in the engine's torch mode; one forward pass (model only)"


_SUMMARY_KEYS = (
    "date", "backend", "backend_version", "precision", "cpu_model", "threads", "n_subnets", "seed",
    "clock", "load_average", "preempted_fraction", "raw", "raw_wall", "paired", "fitted_in_sample",
    "fitted_loo", "corrected", "fit_error",
)  # fmt: skip


def validation_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a validation report a table keeps in its metadata (``metadata["validation"]``)."""
    return {k: report[k] for k in _SUMMARY_KEYS if k in report}
