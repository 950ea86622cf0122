"""``dofa-levels search``, ``calibrate`` and ``fit-predictor``: from a latency table to a level table.

``search`` chooses a family of Pareto-optimal sub-networks (or scores given ones), ``calibrate``
turns a family into a level table (BN statistics, top-1 and latency per level), ``fit-predictor``
fits an MLP accuracy predictor on measured records. ``build`` (:mod:`offline_tools.cli.build`)
chains profile, search and calibrate.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.errors import ArchitectureError
from dynamic_ofa_ros.levels import Level, LevelTable, load_level_table, save_level_table
from dynamic_ofa_ros.supernet import Supernet
from offline_tools.accuracy import AccuracySource
from offline_tools.calibrate import CalibrationResult, calibrate_levels
from offline_tools.cli.common import (
    UsageError,
    add_progress_flag,
    check_out,
    progress_of,
    read_json,
    say,
    write_json,
)
from offline_tools.cli.executor import add_executor_args, executor_spec
from offline_tools.cli.options import (
    AccuracyOptions,
    CalibrationOptions,
    ImageOptions,
    ModelOptions,
    SearchOptions,
    SpaceOptions,
    add_backend_args,
    add_images_args,
    add_latency_args,
    add_model_args,
    add_search_args,
    add_space_args,
)
from offline_tools.cli.reports import family_table, level_rows, macs_of, print_levels, search_report
from offline_tools.cli.sources import (
    accuracy_source,
    device_label,
    image_set,
    load_latency_table,
    load_model,
    search_resolutions,
)
from offline_tools.executors import ExecutorSpec
from offline_tools.latency.table import LatencyTable
from offline_tools.plot import plot_search
from offline_tools.predictor_fit import fit_mlp_predictor, load_accuracy_records
from offline_tools.search import Evaluator, SearchResult, search_family

__all__ = [
    "CalibrateRequest",
    "FitPredictorRequest",
    "SearchRequest",
    "SearchInputs",
    "add_calibration_args",
    "calibrate_family",
    "opened_accuracy",
    "register",
    "run_calibrate",
    "run_fit_predictor",
    "run_search",
    "search",
]


# --------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchRequest:
    """``dofa-levels search``: write a family to ``out``, or score the architectures in ``score``."""

    latency_table: str | None
    accuracy: AccuracyOptions
    out: str | None = None
    score: str | None = None
    report: str | None = None
    plot: str | None = None
    device_label: str | None = None
    space: SpaceOptions = SpaceOptions()
    search: SearchOptions = SearchOptions()
    model: ModelOptions = ModelOptions()
    progress: bool = True
    executor: ExecutorSpec = ExecutorSpec()
    """Where measured candidates run (``--executor``; unused with a predictor)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SearchRequest:
        """The request of a parsed ``search`` command line."""
        return cls(
            latency_table=args.latency_table,
            accuracy=AccuracyOptions(
                predictor=args.accuracy_predictor,
                cache=args.accuracy_cache,
                validation=ImageOptions.from_args(args, "val"),
                calibration=ImageOptions.from_args(args, "calib"),
            ),
            out=args.out,
            score=args.score,
            report=args.report,
            plot=args.plot,
            device_label=args.device_label,
            space=SpaceOptions.from_args(args),
            search=SearchOptions.from_args(args),
            model=ModelOptions.from_args(args),
            progress=progress_of(args),
            executor=executor_spec(args),
        )


class SearchInputs(Protocol):
    """What a search takes from its request (:class:`SearchRequest`, ``build``'s ``BuildRequest``)."""

    @property
    def accuracy(self) -> AccuracyOptions:
        """Where the search's accuracy comes from."""

    @property
    def model(self) -> ModelOptions:
        """The super-network (a measured accuracy runs it)."""

    @property
    def space(self) -> SpaceOptions:
        """The search space's choices."""

    @property
    def search(self) -> SearchOptions:
        """Algorithm 1 + evolution settings and the number of levels."""

    @property
    def progress(self) -> bool:
        """Whether progress bars are shown."""

    @property
    def executor(self) -> ExecutorSpec:
        """Where measured candidates run."""


@contextlib.contextmanager
def opened_accuracy(request: SearchInputs, model: Supernet | None) -> Iterator[AccuracySource]:
    """The request's accuracy source, closed afterwards when it has workers to stop (an executor)."""
    accuracy = accuracy_source(
        request.accuracy,
        model,
        model_options=request.model,
        progress=request.progress,
        executor=request.executor,
    )
    try:
        yield accuracy
    finally:
        close = getattr(accuracy, "close", None)
        if callable(close):
            close()


def search(
    request: SearchInputs,
    *,
    table: LatencyTable,
    accuracy: AccuracySource,
    model: Supernet | None,
    device: str,
) -> SearchResult:
    """Algorithm 1 + evolution over the space the table, the accuracy source and the model all cover."""
    space, options = request.space, request.search
    searched = space.space(search_resolutions(space, table, accuracy, model))
    table.check_space(searched)
    return search_family(
        searched,
        accuracy,
        table,
        options.settings,
        n_levels=options.n_levels(device),
        min_step=options.min_step,
        min_accuracy=options.min_accuracy,
        progress=request.progress,
    )


def _archs_from(data: object, where: str) -> list[SubnetConfig]:
    """Architectures from a JSON list, or an object with ``levels``/``subnets``/``records``/..."""
    if isinstance(data, Mapping):
        for key in ("levels", "subnets", "records", "architectures"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            data = [data]
    if not isinstance(data, list) or not data:
        raise UsageError(f"{where}: expected a non-empty list of architectures (or an object with 'levels')")
    try:
        return [SubnetConfig.from_dict(item, where=f"{where}[{i}]") for i, item in enumerate(data)]
    except ArchitectureError as exc:
        raise UsageError(str(exc)) from exc


def _score(path: str, *, table: LatencyTable, accuracy: AccuracySource, model: Supernet | None) -> None:
    """Print the level fields (accuracy, latency, MACs) of the architectures in ``path`` as JSON."""
    cfgs = _archs_from(read_json(path, "architectures file"), path)
    cands = Evaluator(accuracy, table).evaluate(cfgs)
    rows = [
        {**lv.to_dict(), "key": lv.config.key()} for lv in level_rows(cands, accuracy, macs_of(model, cfgs))
    ]
    print(json.dumps(rows, indent=1))


def run_search(request: SearchRequest) -> LevelTable | None:
    """Search and write the family (``out``, plus ``report``/``plot``), or score (``score``, None).

    Returns the family written.
    """
    if bool(request.out) == bool(request.score):
        raise UsageError("give exactly one of --out FAMILY.json (search) or --score ARCHS.json (evaluate)")
    check_out(request.out, ".json", "--out")
    check_out(request.report, ".json", "--report")
    check_out(request.plot, ".png", "--plot")
    table = load_latency_table(request.latency_table)
    on_driver = "cpu" if request.executor.parallel else None
    model = load_model(request.model, device=on_driver) if request.model.model else None
    device = device_label(request.device_label, table)
    with opened_accuracy(request, model) as accuracy:
        if request.score:
            _score(request.score, table=table, accuracy=accuracy, model=model)
            return None
        result = search(request, table=table, accuracy=accuracy, model=model, device=device)
    family = family_table(result, table=table, accuracy=accuracy, model=model, device=device)
    report = search_report(result, device=device, accuracy=accuracy)
    if request.plot:
        plot_search(report, request.plot)
    if request.report:
        write_json(request.report, report)
    assert request.out is not None  # checked above: exactly one of out / score
    save_level_table(family, request.out)
    say(
        f"search: {len(result.candidates)} candidates, {len(result.front)} on the Pareto front, "
        f"{len(result.levels)} levels in {result.seconds:.1f} s"
    )
    for note in result.notes:
        say(f"note: {note}")
    print(f"wrote {request.out} ({device}):")
    print_levels(family.levels)
    return family


# --------------------------------------------------------------------------------------------
# fit-predictor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitPredictorRequest:
    """``dofa-levels fit-predictor``: fit an MLP on the records in ``records``, write ``out``."""

    records: str
    out: str
    target_key: str = "holdout_top1"
    base_resolution: int | None = None
    step: int | None = None
    slots: int | None = None
    seed: int = 0
    epochs: int = 300
    holdout_fraction: float = 0.2
    hidden: int = 400
    name: str = "fitted"
    dataset: str | None = None
    clip: bool = True
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FitPredictorRequest:
        """The request of a parsed ``fit-predictor`` command line."""
        return cls(
            records=args.records,
            out=args.out,
            target_key=args.target_key,
            base_resolution=args.base_resolution,
            step=args.step,
            slots=args.slots,
            seed=args.seed,
            epochs=args.epochs,
            holdout_fraction=args.holdout_fraction,
            hidden=args.hidden,
            name=args.name,
            dataset=args.dataset,
            clip=not args.no_clip,
            progress=progress_of(args),
        )


def _encoding(cfgs: Sequence[SubnetConfig], request: FitPredictorRequest) -> tuple[int, int, int]:
    """``(base_resolution, step, slots)``: given, else covering the records' resolutions."""
    resolutions = sorted({c.resolution for c in cfgs})
    base = request.base_resolution if request.base_resolution is not None else resolutions[0]
    if request.step is not None:
        step = request.step
    else:
        gaps = [b - a for a, b in zip(resolutions, resolutions[1:], strict=False)]
        step = math.gcd(*gaps) if gaps else 16
    slots = request.slots if request.slots is not None else (resolutions[-1] - base) // step + 1
    return base, step, slots


def _records_dataset(request: FitPredictorRequest) -> str:
    """What the accuracies refer to: ``--dataset``, else the records' metric and file name."""
    if request.dataset is not None:
        return request.dataset
    header = read_json(request.records, "records")
    metric = header.get("metric", request.target_key) if isinstance(header, Mapping) else request.target_key
    return f"{metric} ({Path(request.records).name})"


def run_fit_predictor(request: FitPredictorRequest) -> None:
    """Fit, save, and print the encoding and fit report (JSON on stdout, a summary line on stderr)."""
    check_out(request.out, ".safetensors", "--out")
    records = load_accuracy_records(request.records, target_key=request.target_key)
    if not records:
        raise UsageError(f"{request.records}: no records")
    base, step, slots = _encoding([c for c, _ in records], request)
    predictor = fit_mlp_predictor(
        records,
        base_resolution=base,
        step=step,
        n_slots=slots,
        seed=request.seed,
        epochs=request.epochs,
        hidden=request.hidden,
        holdout_fraction=request.holdout_fraction,
        name=request.name,
        dataset=_records_dataset(request),
        clip_to_records=request.clip,
        progress=request.progress,
    )
    predictor.save(request.out)
    rep = predictor.fit_report or {}
    print(json.dumps({"out": request.out, "encoding": predictor.encoding.to_dict(), "fit": rep}, indent=1))
    say(
        f"fitted on {rep.get('n_train')} architectures: held-out RMSE "
        f"{rep.get('holdout_rmse', math.nan):.2f} points, rank correlation "
        f"{rep.get('holdout_rank_correlation', math.nan):.3f} ({rep.get('n_holdout')} held out)"
    )


# --------------------------------------------------------------------------------------------
# calibrate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrateRequest:
    """``dofa-levels calibrate``: the level table ``out`` from the family (or families) ``family``."""

    family: str | tuple[str, ...]
    out: str
    model: ModelOptions
    calibration: CalibrationOptions
    latency_from: str | None = None
    device_label: str | None = None
    summary: str | None = None
    progress: bool = True
    executor: ExecutorSpec = ExecutorSpec()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CalibrateRequest:
        """The request of a parsed ``calibrate`` command line."""
        return cls(
            family=tuple(args.family),
            out=args.out,
            model=ModelOptions.from_args(args),
            calibration=CalibrationOptions.from_args(args, min_step=args.min_step),
            latency_from=args.latency_from,
            device_label=args.device_label,
            summary=args.summary,
            progress=progress_of(args),
            executor=executor_spec(args),
        )


def calibrate_family(
    model: Supernet,
    family: LevelTable,
    *,
    model_options: ModelOptions,
    options: CalibrationOptions,
    latency_from: LevelTable | None,
    device_label: str | None,
    progress: bool,
    executor: ExecutorSpec | None = None,
) -> CalibrationResult:
    """BN calibration, top-1 (when validation images are given) and latency of every level."""
    calibration = image_set(options.calibration, flag="calib", progress=progress)
    validation = (
        image_set(options.validation, flag="val", progress=progress)
        if options.validation is not None
        else None
    )
    return calibrate_levels(
        model,
        family,
        calibration=calibration,
        validation=validation,
        device=model_options.torch_device,
        threads=model_options.threads,
        compute_threads=model_options.compute_threads,
        cuda_graphs=options.cuda_graphs,
        batch_size=model_options.batch_size,
        warmup=options.warmup,
        iterations=options.iterations,
        latency_from=latency_from,
        device_label=device_label,
        min_step=options.min_step,
        progress=progress,
        executor=executor,
        backend=options.backend,
        precision=options.precision,
        cache_dir=options.cache_dir,
    )


def merge_families(paths: Sequence[str]) -> LevelTable:
    """One family holding the architectures of every family in ``paths`` (duplicates once).

    The header (device, profiling -- so the default backend --, search provenance) is the first
    family's; ``extra["merged_from"]`` names every file and how many architectures each gave.
    Levels are renumbered in the order read: calibration measures them all and orders them by
    measured latency, so families searched on different latency tables may be combined.
    """
    families = [load_level_table(path, require_bn=False) for path in paths]
    first = families[0]
    if len(families) == 1:
        return first
    seen: set[str] = set()
    levels: list[Level] = []
    sources: list[dict[str, object]] = []
    for path, family in zip(paths, families, strict=True):
        added = 0
        for level in family.levels:
            if level.config.key() not in seen:
                seen.add(level.config.key())
                levels.append(dataclasses.replace(level, level=len(levels) + 1))
                added += 1
        sources.append({"family": str(path), "architectures": len(family.levels), "added": added})
    return dataclasses.replace(
        first, levels=levels, bn=None, path=None, extra={**first.extra, "merged_from": sources}
    )


def run_calibrate(request: CalibrateRequest) -> LevelTable:
    """Calibrate the family, write the level table (+ BN file) and the summary; returns the table."""
    check_out(request.out, ".json", "--out")
    check_out(request.summary, ".json", "--summary")
    paths = (request.family,) if isinstance(request.family, str) else request.family
    family = merge_families(paths)
    latency_from = load_level_table(request.latency_from, require_bn=False) if request.latency_from else None
    model = load_model(request.model)
    result = calibrate_family(
        model,
        family,
        model_options=request.model,
        options=request.calibration,
        latency_from=latency_from,
        device_label=request.device_label,
        progress=request.progress,
        executor=request.executor,
    )
    save_level_table(result.table, request.out, supernet=model)
    if request.summary:
        write_json(request.summary, result.summary())
    for line in result.dropped:
        say(f"dropped: {line}")
    for note in result.notes:
        say(f"note: {note}")
    print(f"wrote {request.out} ({result.table.device}, {result.seconds['total']:.1f} s):")
    print_levels(result.table.levels)
    return result.table


# --------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------


def _search_handler(args: argparse.Namespace) -> int:
    run_search(SearchRequest.from_args(args))
    return 0


def _fit_predictor_handler(args: argparse.Namespace) -> int:
    run_fit_predictor(FitPredictorRequest.from_args(args))
    return 0


def _calibrate_handler(args: argparse.Namespace) -> int:
    run_calibrate(CalibrateRequest.from_args(args))
    return 0


def _add_search_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("search", help="accuracy-constrained search: family of Pareto-optimal levels")
    add_latency_args(s)
    s.add_argument("--accuracy-predictor", help="OFA acc_predictor.pth or a fitted .safetensors predictor")
    s.add_argument("--out", help="write the family (level-table JSON, bn_file null) here")
    s.add_argument("--score", help="instead of searching: print accuracy + latency of these architectures")
    s.add_argument("--report", help="write the search report (candidates, front, levels) for plotting")
    s.add_argument("--plot", help="write Fig. 3 (candidates, Pareto front, levels) as PNG")
    s.add_argument("--accuracy-cache", help="JSON cache of measured accuracies (measured search)")
    add_space_args(s)
    add_search_args(s)
    add_model_args(s, required=False)
    add_images_args(s, calib_default=2000)
    add_executor_args(s)
    add_progress_flag(s)
    s.set_defaults(handler=_search_handler)


def _add_fit_predictor_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    f = sub.add_parser("fit-predictor", help="fit an MLP accuracy predictor on measured records")
    f.add_argument("--records", required=True, help="JSON list (or {'subnets': [...]}) of measured records")
    f.add_argument("--out", required=True, help="output .safetensors")
    f.add_argument(
        "--target-key", default="holdout_top1", help="accuracy field (percent; default holdout_top1)"
    )
    f.add_argument("--base-resolution", type=int, help="first resolution slot (default: smallest in records)")
    f.add_argument(
        "--step", type=int, help="resolution slot width (default: gcd of record resolutions' gaps)"
    )
    f.add_argument("--slots", type=int, help="number of resolution slots (default: to cover the records)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--epochs", type=int, default=300)
    f.add_argument("--holdout-fraction", type=float, default=0.2)
    f.add_argument("--hidden", type=int, default=400)
    f.add_argument("--name", default="fitted", help="predictor name stored in its metadata")
    f.add_argument("--dataset", help="what the accuracy refers to (default: from the records file)")
    f.add_argument(
        "--no-clip", action="store_true", help="do not clamp predictions to the measured accuracy range"
    )
    add_progress_flag(f)
    f.set_defaults(handler=_fit_predictor_handler)


def add_calibration_args(p: argparse.ArgumentParser, *, min_step_flag: str = "--min-step") -> None:
    """The flags of :class:`CalibrationOptions` (``calibrate``, ``build``) and of the model it runs.

    ``min_step_flag`` (the minimum step between calibrated levels: ``build``'s ``--min-step`` is
    the search's), ``--warmup --iterations --no-cuda-graphs``, the model (required), backend and
    image groups.
    """
    p.add_argument(
        min_step_flag,
        type=float,
        default=0.0,
        help="after calibration, drop levels less than this many measured points above the previous"
        " (default 0)",
    )
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iterations", type=int, default=50, help="timed frames per level")
    p.add_argument("--no-cuda-graphs", action="store_true", help="CUDA: run eagerly")
    add_model_args(p, required=True)
    add_backend_args(p)
    add_images_args(p, calib_default=2000)


def _add_calibrate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("calibrate", help="BN calibration + top-1 + latency per level → level table")
    c.add_argument(
        "--family",
        required=True,
        nargs="+",
        help="family JSON from `dofa-levels search` (or a level table); several: their architectures "
        "are calibrated together and the measured Pareto levels kept (header from the first)",
    )
    c.add_argument("--out", required=True, help="output level table .json (+ .bn.safetensors beside)")
    c.add_argument("--latency-from", help="copy latencies of the same architectures from this level table")
    c.add_argument("--device-label", help="device name in the table (default: cpu or cuda)")
    c.add_argument("--summary", help="write the run summary JSON here")
    add_calibration_args(c)
    add_executor_args(c)
    add_progress_flag(c)
    c.set_defaults(handler=_calibrate_handler)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``search``, ``fit-predictor`` and ``calibrate`` to the ``dofa-levels`` subcommands."""
    _add_search_parser(sub)
    _add_fit_predictor_parser(sub)
    _add_calibrate_parser(sub)
