"""``dofa-levels build``: profile (or reuse a latency table) → search → calibrate → a level table.

The one command that turns a device and a model into ``config/levels/<device>.json`` (+ the BN
file beside it), with the intermediate family, search report and Fig. 3 kept on request. One
execution backend runs through it all: the latency table's (``--backend`` profiles in it with
``--profile-out``, and must match a reused ``--latency-table``), and the levels' latency is
measured in it through the engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamic_ofa_ros.levels import save_level_table
from dynamic_ofa_ros.supernet import Supernet
from offline_tools.cli.common import UsageError, add_progress_flag, check_out, progress_of, say, write_json
from offline_tools.cli.executor import add_executor_args, executor_spec
from offline_tools.cli.latency import ProfileRequest, TimingOptions, run_profile
from offline_tools.cli.levels import add_calibration_args, calibrate_family, opened_accuracy, search
from offline_tools.cli.options import (
    AccuracyOptions,
    CalibrationOptions,
    ImageOptions,
    ModelOptions,
    SearchOptions,
    SpaceOptions,
    add_latency_args,
    add_search_args,
    add_space_args,
)
from offline_tools.cli.reports import family_table, print_levels, search_report
from offline_tools.cli.sources import load_latency_table, load_model
from offline_tools.executors import ExecutorSpec
from offline_tools.latency.table import LatencyTable
from offline_tools.plot import plot_search

__all__ = ["BuildRequest", "register", "run_build"]


@dataclass(frozen=True)
class BuildRequest:
    """``dofa-levels build``: everything from a latency table (or profiling) to a level table."""

    model: ModelOptions
    accuracy: AccuracyOptions
    """The search's accuracy: ``--accuracy-predictor``, or top-1 measured on ``--search-val``."""
    calibration: CalibrationOptions
    latency_table: str | None = None
    profile_out: str | None = None
    """Profile this device into this directory instead of reusing ``latency_table``."""
    profile_validate: int = 0
    device_label: str | None = None
    out: str | None = None
    """Level table path (default ``config/levels/<device label>.json``)."""
    family_out: str | None = None
    report: str | None = None
    plot: str | None = None
    summary: str | None = None
    space: SpaceOptions = field(default_factory=SpaceOptions)
    search: SearchOptions = field(default_factory=SearchOptions)
    progress: bool = True
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    """Where the measured search's candidates and the levels' calibration run (``--executor``)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BuildRequest:
        """The request of a parsed ``build`` command line."""
        search_val = None
        if args.search_val:
            # the --val* companions apply to --search-val unless it has its own
            search_val = ImageOptions(
                paths=tuple(args.search_val),
                files=args.search_val_files if args.search_val_files is not None else args.val_files,
                exclude=args.val_exclude,
                limit=args.search_val_images if args.search_val_images is not None else args.val_images,
                sample=args.val_sample,
                label_map=args.label_map,
                seed=args.data_seed,
            )
        return cls(
            model=ModelOptions.from_args(args),
            accuracy=AccuracyOptions(
                predictor=args.accuracy_predictor,
                cache=args.accuracy_cache,
                validation=search_val,
                calibration=ImageOptions.from_args(args, "calib"),
            ),
            calibration=CalibrationOptions.from_args(args, min_step=args.calib_min_step),
            latency_table=args.latency_table,
            profile_out=args.profile_out,
            profile_validate=args.profile_validate,
            device_label=args.device_label,
            out=args.out,
            family_out=args.family_out,
            report=args.report,
            plot=args.plot,
            summary=args.summary,
            space=SpaceOptions.from_args(args),
            search=SearchOptions.from_args(args),
            progress=progress_of(args),
            executor=executor_spec(args),
        )


def _check(request: BuildRequest) -> None:
    """Refuse inconsistent options before any work is done."""
    if bool(request.latency_table) == bool(request.profile_out):
        raise UsageError("give one of --latency-table DIR (reuse) or --profile-out DIR (profile now)")
    if not request.accuracy.predictor and request.accuracy.validation is None:
        raise UsageError(
            "give --accuracy-predictor FILE or --search-val PATH (measured accuracy) for the search"
        )
    for value, suffix, what in (
        (request.out, ".json", "--out"),
        (request.family_out, ".json", "--family-out"),
        (request.report, ".json", "--report"),
        (request.summary, ".json", "--summary"),
        (request.plot, ".png", "--plot"),
    ):
        check_out(value, suffix, what)
    if request.calibration.calibration is None:
        raise UsageError("give --calib PATH (BN calibration images)")


def _latency_table(
    request: BuildRequest, model: Supernet, stages: dict[str, float]
) -> tuple[LatencyTable, str]:
    """The latency table and its directory: profiled now (``profile_out``) or ``latency_table``.

    ``--backend`` profiles in that backend, and a reused table must have been profiled in it
    (:meth:`~offline_tools.latency.table.LatencyTable.require_backend`).
    """
    backend = request.calibration.backend
    if request.profile_out:
        device = request.model.torch_device
        profile = ProfileRequest(
            out=Path(request.profile_out),
            resolutions=request.space.resolutions or tuple(model.resolutions),
            timing=TimingOptions(
                device=device,
                threads=request.model.threads if request.model.threads is not None else 1,
                progress=request.progress,
                backend=backend,
                precision=request.calibration.precision,
            ),
            validate=request.profile_validate,
        )
        t0 = time.perf_counter()
        run_profile(profile)
        stages["profile"] = time.perf_counter() - t0
        table_dir = request.profile_out
    else:
        table_dir = str(request.latency_table)
    table = load_latency_table(table_dir)
    table.require_backend(backend, request.calibration.precision if backend else None, consumer="build")
    return table, table_dir


def run_build(request: BuildRequest) -> dict[str, Any]:
    """Profile or load the latency table, search, calibrate, write; returns the run summary."""
    _check(request)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_model(request.model)
    stages["load_model"] = time.perf_counter() - t0
    table, table_dir = _latency_table(request, model, stages)
    device = request.device_label or ("cuda" if request.model.torch_device.startswith("cuda") else "cpu")
    out = request.out or str(Path("config") / "levels" / f"{device}.json")
    t0 = time.perf_counter()
    with opened_accuracy(request, model) as accuracy:
        result = search(request, table=table, accuracy=accuracy, model=model, device=device)
    stages["search"] = time.perf_counter() - t0
    family = family_table(result, table=table, accuracy=accuracy, model=model, device=device)
    report = search_report(result, device=device, accuracy=accuracy)
    t0 = time.perf_counter()
    calibrated = calibrate_family(
        model,
        family,
        model_options=request.model,
        options=dataclasses.replace(request.calibration, backend=table.backend),
        latency_from=None,
        device_label=device,
        progress=request.progress,
        executor=request.executor,
    )
    stages["calibrate"] = time.perf_counter() - t0
    calibrated.table.extra["search"] = family.extra["search"]
    calibrated.table.extra["latency_table"] = table_dir
    if request.family_out:
        save_level_table(family, request.family_out)
    if request.report:
        write_json(request.report, report)
    if request.plot:
        plot_search(report, request.plot)
    save_level_table(calibrated.table, out, supernet=model)
    summary = {
        "out": out,
        "device": device,
        "stages_seconds": {k: round(v, 2) for k, v in stages.items()},
        "candidates_evaluated": len(result.candidates),
        "accuracy_evaluations": result.accuracy_evaluations,
        "pareto_points": len(result.front),
        "search_notes": result.notes,
        "calibration": calibrated.summary(),
    }
    if request.summary:
        write_json(request.summary, summary)
    for line in calibrated.dropped:
        say(f"dropped: {line}")
    print(json.dumps({k: summary[k] for k in ("stages_seconds", "candidates_evaluated", "pareto_points")}))
    print(f"wrote {out}:")
    print_levels(calibrated.table.levels)
    return summary


def _build_handler(args: argparse.Namespace) -> int:
    run_build(BuildRequest.from_args(args))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``build`` to the ``dofa-levels`` subcommands."""
    b = sub.add_parser(
        "build", help="profile (or reuse a table) → search → calibrate → config/levels/<device>"
    )
    add_latency_args(b)
    b.add_argument(
        "--profile-out", help="profile this device into this directory (instead of --latency-table)"
    )
    b.add_argument(
        "--profile-validate",
        type=int,
        default=0,
        metavar="N",
        help="with --profile-out: validate on N networks",
    )
    b.add_argument("--accuracy-predictor", help="search with this predictor")
    b.add_argument("--search-val", nargs="+", metavar="PATH", help="search on measured top-1 of these images")
    b.add_argument("--search-val-files", help="members of --search-val (e.g. split.json:holdout)")
    b.add_argument("--search-val-images", type=int, help="first N images of --search-val")
    b.add_argument("--accuracy-cache", help="JSON cache of measured accuracies")
    b.add_argument("--out", help="level table path (default config/levels/<device-label>.json)")
    b.add_argument("--family-out", help="also keep the searched family here")
    b.add_argument("--report", help="write the search report here")
    b.add_argument("--plot", help="write Fig. 3 here")
    b.add_argument("--summary", help="write the run summary JSON here")
    add_space_args(b)
    add_search_args(b)
    add_calibration_args(b, min_step_flag="--calib-min-step")
    add_executor_args(b)
    add_progress_flag(b)
    b.set_defaults(handler=_build_handler)
