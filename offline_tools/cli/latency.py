"""``dofa-levels profile`` and ``dofa-levels validate-latency``: a device's per-operator latency table.

``profile`` times every operator of the search space on this device, in an execution backend
(``--backend torch``: eager torch or CUDA graphs, as today; ``openvino``/``onnxruntime``: each
operator compiled by that runtime, as the engine compiles a level), and writes the table
(optionally validating it on random sub-networks and storing a fitted correction);
``validate-latency`` measures random sub-networks end to end, in the table's backend, against an
existing table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamic_ofa_ros.backends import BACKENDS, PRECISIONS
from dynamic_ofa_ros.timing import atomic_write_text
from offline_tools.cli.common import add_progress_flag, progress_of
from offline_tools.cli.executor import add_executor_args
from offline_tools.errors import LatencyTableError
from offline_tools.executors import refuse_parallel
from offline_tools.latency.compiled import OPERATOR_LAYOUTS
from offline_tools.latency.profile import (
    PROFILE_ITERATIONS,
    PROFILE_ROUNDS,
    PROFILE_WARMUP,
    profile_latency_table,
)
from offline_tools.latency.runners import CLOCKS, MODES
from offline_tools.latency.table import METADATA_FILE, LatencyCorrection, LatencyTable, holds_table
from offline_tools.latency.validate import (
    VALIDATE_ITERATIONS,
    VALIDATE_ROUNDS,
    VALIDATE_WARMUP,
    validate_latency_table,
    validation_summary,
)

__all__ = [
    "ProfileRequest",
    "TimingOptions",
    "ValidateRequest",
    "default_mode",
    "register",
    "run_profile",
    "run_validate",
]


def default_mode(device: str, mode: str | None = None) -> str:
    """``mode`` if given, else the engine's mode on ``device``: ``cuda_graph`` on CUDA, ``eager`` on a CPU."""
    if mode is not None:
        return mode
    return "cuda_graph" if device.startswith("cuda") else "eager"


@dataclass(frozen=True)
class TimingOptions:
    """Where and how to time: shared by profiling and validation."""

    device: str = "cpu"
    mode: str | None = None
    """``None``: the backend's mode on the device (eager / cuda_graph for torch, compiled)."""
    threads: int | None = 1
    cuda_replays: int = 10
    seed: int = 0
    clock: str | None = None
    """``None``: ``auto`` when profiling, the table's clock when validating."""
    progress: bool = True
    backend: str | None = None
    """``None``: ``torch`` when profiling, the table's backend when validating."""
    precision: str | None = None
    """``None``: ``f32`` when profiling, the table's precision when validating."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TimingOptions:
        """The options of :func:`_add_timing_args`."""
        return cls(
            device=args.device,
            mode=args.mode,
            threads=args.threads,
            cuda_replays=args.cuda_replays,
            seed=args.seed,
            clock=args.clock,
            progress=progress_of(args),
            backend=args.backend,
            precision=args.precision,
        )


@dataclass(frozen=True)
class ProfileRequest:
    """``dofa-levels profile``: profile ``resolutions`` into the directory ``out``."""

    out: Path
    resolutions: tuple[int, ...]
    timing: TimingOptions = TimingOptions()
    force: bool = False
    warmup: int = PROFILE_WARMUP
    iterations: int = PROFILE_ITERATIONS
    rounds: int = PROFILE_ROUNDS
    width_mult: float = 1.2
    validate: int = 0
    """Then measure this many random sub-networks, fit and store a correction (0: no validation)."""
    paired: bool = False
    report: Path | None = None
    """Validation report path (default ``<out>/validation.json``)."""
    executor: str = "local"
    """Only ``local``: a parallel executor is refused (:func:`~offline_tools.executors.refuse_parallel`)."""
    operator_layout: str | None = None
    """Compiled backends: how operators are fed and read (``None``: the backend's default)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ProfileRequest:
        """The request of a parsed ``profile`` command line."""
        return cls(
            out=Path(args.out),
            resolutions=tuple(args.resolutions),
            timing=TimingOptions.from_args(args),
            force=args.force,
            warmup=args.warmup,
            iterations=args.iterations,
            rounds=args.rounds,
            width_mult=args.width_mult,
            validate=args.validate,
            paired=args.paired,
            report=Path(args.report) if args.report else None,
            executor=args.executor,
            operator_layout=args.operator_layout,
        )


@dataclass(frozen=True)
class ValidateRequest:
    """``dofa-levels validate-latency``: measure sub-networks against the table in ``table``."""

    table: Path
    timing: TimingOptions = TimingOptions()
    n_subnets: int = 30
    warmup: int = VALIDATE_WARMUP
    iterations: int = VALIDATE_ITERATIONS
    rounds: int = VALIDATE_ROUNDS
    resolutions: tuple[int, ...] | None = None
    fit_correction: bool = False
    paired: bool = False
    write: bool = False
    """Store the fitted correction in the table's metadata (needs ``fit_correction``)."""
    report: Path | None = None
    executor: str = "local"
    """Only ``local`` (as for :class:`ProfileRequest`)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ValidateRequest:
        """The request of a parsed ``validate-latency`` command line."""
        return cls(
            table=Path(args.table),
            timing=TimingOptions.from_args(args),
            n_subnets=args.n_subnets,
            warmup=args.warmup,
            iterations=args.iterations,
            rounds=args.rounds,
            resolutions=tuple(args.resolutions) if args.resolutions else None,
            fit_correction=args.fit_correction,
            paired=args.paired,
            write=args.write,
            report=Path(args.report) if args.report else None,
            executor=args.executor,
        )


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _error_line(name: str, s: Mapping[str, float]) -> str:
    return (
        f"  {name:<22} mean |err| {s['mean_abs_pct_error']:5.1f} %"
        f"  max |err| {s['max_abs_pct_error']:5.1f} %  bias {s['mean_signed_pct_error']:+5.1f} %"
        f"  spearman {s['spearman']:.3f}"
    )


def print_validation(report: Mapping[str, Any]) -> None:
    """Print the error blocks of a validation report (one line each) on stdout."""
    backend = report.get("backend", "torch")
    print(
        f"validation on {report['device_name']} ({backend} {report['mode']}, threads={report['threads']}),"
        f" {report['n_subnets']} sub-networks, {report['seconds']} s:"
    )
    load = report.get("load_average") or {}
    print(f"  clock: {report['clock']}; load average before {load.get('before')}, after {load.get('after')}")
    if report.get("preempted_fraction") is not None:
        table_part = (
            f", {100 * report['table_preempted_fraction']:.0f} % of the table's operator runs"
            if report.get("table_preempted_fraction") is not None
            else ""
        )
        print(
            f"  samples preempted by other processes: {100 * report['preempted_fraction']:.0f} % of the"
            f" end-to-end runs{table_part}"
        )
    for key, name in (
        ("raw", "raw operator sum"),
        ("raw_wall", "raw vs wall clock"),
        ("paired", "paired (same session)"),
        ("corrected", "stored correction"),
    ):
        if key in report:
            print(_error_line(name, report[key]))
    if "fit_error" in report:
        print(f"  no correction fitted: {report['fit_error']}")
    if "fitted_loo" in report:
        c = report["fitted_correction"]
        print(f"  fitted correction: {c['scale']:.4f} x sum + {c['offset_ms']:.3f} ms")
        print(_error_line("fitted (in sample)", report["fitted_in_sample"]))
        print(_error_line("fitted (leave-one-out)", report["fitted_loo"]))


def _write_report(report: Mapping[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def _fitted(table: LatencyTable, report: Mapping[str, Any]) -> LatencyTable:
    """``table`` with the report's fitted correction (if any) and validation summary in its metadata."""
    if "fitted_correction" in report:
        table = table.with_correction(LatencyCorrection.from_dict(report["fitted_correction"], where="fit"))
    table.metadata["validation"] = validation_summary(report)
    return table


def run_profile(request: ProfileRequest) -> Path:
    """Profile, optionally validate (storing the fitted correction), save; returns the table directory.

    Nothing is written unless profiling (and validation) succeeded; an existing table in
    ``request.out`` is an error unless ``request.force``.
    """
    refuse_parallel(request.executor, "dofa-levels profile")
    timing = request.timing
    if holds_table(request.out) and not request.force:
        raise LatencyTableError(
            f"{request.out} already holds a latency table; choose another --out or pass --force"
        )
    table = profile_latency_table(
        device=timing.device,
        resolutions=request.resolutions,
        mode=timing.mode,
        threads=timing.threads,
        warmup=request.warmup,
        iterations=request.iterations,
        rounds=request.rounds,
        width_mult=request.width_mult,
        cuda_replays=timing.cuda_replays,
        clock=timing.clock or "auto",
        seed=timing.seed,
        backend=timing.backend or "torch",
        precision=timing.precision or "f32",
        operator_layout=request.operator_layout,
        progress=timing.progress,
    )
    meta = table.metadata
    print(
        f"profiled {sum(len(table.keys(r)) for r in table.resolutions)} operators at resolutions"
        f" {list(table.resolutions)} in {meta['profile_seconds']} s on {meta['device_name']}"
        f" ({table.backend} {meta['mode']}, clock {meta['clock']}, load average"
        f" {meta['load_average']['before']} -> {meta['load_average']['after']})"
    )
    report: dict[str, Any] | None = None
    if request.validate:
        report = validate_latency_table(
            table,
            n_subnets=request.validate,
            device=timing.device,
            mode=timing.mode,
            threads=timing.threads,
            seed=timing.seed,
            fit=True,
            paired=request.paired,
            clock=timing.clock,
            cuda_replays=timing.cuda_replays,
            progress=timing.progress,
        )  # in the table's backend
        print_validation(report)
        table = _fitted(table, report)
    table.save(request.out, overwrite=request.force)
    if report is not None:
        _write_report(report, request.report or request.out / "validation.json")
    print(f"wrote {request.out}")
    return request.out


def run_validate(request: ValidateRequest) -> dict[str, Any]:
    """Validate the table against end-to-end measurements; returns the report (also printed).

    With ``request.write`` the fitted correction and the validation summary are stored in the
    table's metadata (all its resolutions kept).
    """
    refuse_parallel(request.executor, "dofa-levels validate-latency")
    timing = request.timing
    if request.write and not request.fit_correction:
        raise LatencyTableError("--write stores a fitted correction; add --fit-correction")
    table = LatencyTable.load(request.table, resolutions=request.resolutions)
    report = validate_latency_table(
        table,
        n_subnets=request.n_subnets,
        device=timing.device,
        mode=timing.mode,
        threads=timing.threads,
        seed=timing.seed,
        warmup=request.warmup,
        iterations=request.iterations,
        rounds=request.rounds,
        fit=request.fit_correction,
        paired=request.paired,
        cuda_replays=timing.cuda_replays,
        clock=timing.clock,
        backend=timing.backend,
        precision=timing.precision,
        progress=timing.progress,
    )
    print_validation(report)
    if request.report is not None:
        _write_report(report, request.report)
    if request.write:
        if "fitted_correction" not in report:
            raise LatencyTableError(f"no correction to store: {report.get('fit_error')}")
        _fitted(LatencyTable.load(request.table), report).save(request.table, overwrite=True)
        print(f"stored the correction in {request.table / METADATA_FILE}")
    return report


# --------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------


def _add_timing_args(p: argparse.ArgumentParser, *, validating: bool) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="execution backend: torch (eager on a CPU, CUDA graphs on a GPU), or openvino / onnxruntime"
        " (CPU: every operator compiled by that runtime, as the engine compiles a level); default "
        + ("the table's" if validating else "torch"),
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="inference precision of a compiled backend (explicit, never the runtime's default); default "
        + ("the table's" if validating else "f32"),
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="default: eager (torch, CPU), cuda_graph (torch, CUDA), compiled (openvino, onnxruntime)",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default 1, the engine's)")
    p.add_argument(
        "--cuda-replays",
        type=int,
        default=10,
        help="CUDA: calls per timed sample, captured into one graph (default 10)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clock",
        choices=("auto", *CLOCKS),
        default=None,
        help="CPU timing clock (default auto: with 1 thread the thread's CPU time for torch and the"
        " process's for a compiled backend, which may run work on threads of its own; else wall)",
    )
    add_progress_flag(p)
    add_executor_args(p, latency=True)


def _add_profile_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("profile", help="per-operator latency table of this device")
    _add_timing_args(p, validating=False)
    p.add_argument(
        "--operator-layout",
        choices=OPERATOR_LAYOUTS,
        default=None,
        help="compiled backends: operator input/output layout (default: channels_last for openvino,"
        " nchw for onnxruntime; see docs/latency_tables.md)",
    )
    p.add_argument("--resolutions", type=int, nargs="+", required=True, help="e.g. 96 112 128 144 160")
    p.add_argument("--out", required=True, help="output directory (<r>_lookup_table.json + metadata.json)")
    p.add_argument("--force", action="store_true", help="overwrite an existing table in --out")
    p.add_argument("--warmup", type=int, default=PROFILE_WARMUP)
    p.add_argument("--iterations", type=int, default=PROFILE_ITERATIONS, help="timing samples per operator")
    p.add_argument("--rounds", type=int, default=PROFILE_ROUNDS, help="passes over all operators")
    p.add_argument("--width-mult", type=float, default=1.2)
    p.add_argument(
        "--validate",
        type=int,
        default=0,
        metavar="N",
        help="then measure N random sub-networks end to end, fit and store a correction, report errors",
    )
    p.add_argument("--paired", action="store_true", help="with --validate: also a same-session paired check")
    p.add_argument("--report", help="write the validation report JSON here (default <out>/validation.json)")
    p.set_defaults(handler=_profile_handler)


def _add_validate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("validate-latency", help="measure random sub-networks against a latency table")
    _add_timing_args(p, validating=True)
    p.add_argument("--table", required=True, help="latency table directory")
    p.add_argument("--n-subnets", type=int, default=30)
    p.add_argument("--warmup", type=int, default=VALIDATE_WARMUP)
    p.add_argument("--iterations", type=int, default=VALIDATE_ITERATIONS, help="timed runs per sub-network")
    p.add_argument("--rounds", type=int, default=VALIDATE_ROUNDS, help="passes over the sub-networks")
    p.add_argument("--resolutions", type=int, nargs="+", help="sample only these resolutions")
    p.add_argument("--fit-correction", action="store_true", help="fit a correction on these measurements")
    p.add_argument(
        "--paired", action="store_true", help="also re-time the sub-networks' operators in the same passes"
    )
    p.add_argument(
        "--write", action="store_true", help="with --fit-correction: store it in the table's metadata"
    )
    p.add_argument("--report", help="write the full report JSON here (default: only print the summary)")
    p.set_defaults(handler=_validate_handler)


def _profile_handler(args: argparse.Namespace) -> int:
    run_profile(ProfileRequest.from_args(args))
    return 0


def _validate_handler(args: argparse.Namespace) -> int:
    run_validate(ValidateRequest.from_args(args))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``profile`` and ``validate-latency`` to the ``dofa-levels`` subcommands."""
    _add_profile_parser(sub)
    _add_validate_parser(sub)
