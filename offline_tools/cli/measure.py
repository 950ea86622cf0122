"""``dofa-levels measure``: measured top-1 (after BN calibration) of a list of sub-networks.

The architectures come from a JSON file (a list, a family/level table, a search report's Pareto
front, or records) or are ``--random N --seed S`` of the model's space; the records go to
``--out`` in the format ``fit-predictor`` reads, resumable (:mod:`offline_tools.measure`).
``--executor ray`` measures on Ray workers (:mod:`offline_tools.executors`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import torch

from dynamic_ofa_ros.arch import SubnetConfig
from offline_tools.accuracy import MLPAccuracyPredictor
from offline_tools.cli.common import UsageError, add_progress_flag, check_out, progress_of, say, write_json
from offline_tools.cli.executor import add_executor_args, executor_spec
from offline_tools.cli.options import (
    ImageOptions,
    ModelOptions,
    SpaceOptions,
    add_images_args,
    add_model_args,
    add_space_args,
)
from offline_tools.cli.sources import image_data, load_model
from offline_tools.executors import EvaluationSetup, ExecutorSpec
from offline_tools.measure import (
    MeasureSummary,
    measure_subnets_accuracy,
    plot_measured_vs_predicted,
    random_architectures,
    read_architectures,
)

__all__ = ["MeasureRequest", "register", "run_measure"]


@dataclass(frozen=True)
class MeasureRequest:
    """``dofa-levels measure``: measure ``archs`` (a file) or ``random`` architectures into ``out``."""

    out: str
    model: ModelOptions
    calibration: ImageOptions | None
    validation: ImageOptions | None
    archs: str | None = None
    random: int | None = None
    seed: int = 0
    space: SpaceOptions = SpaceOptions()
    predictor: str | None = None
    """A predictor whose top-1 is stored beside each measurement (for ``plot``)."""
    executor: ExecutorSpec = ExecutorSpec()
    plot: str | None = None
    summary: str | None = None
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MeasureRequest:
        """The request of a parsed ``measure`` command line."""
        return cls(
            out=args.out,
            model=ModelOptions.from_args(args),
            calibration=ImageOptions.from_args(args, "calib"),
            validation=ImageOptions.from_args(args, "val"),
            archs=args.archs,
            random=args.random,
            seed=args.seed,
            space=SpaceOptions.from_args(args),
            predictor=args.accuracy_predictor,
            executor=executor_spec(args),
            plot=args.plot,
            summary=args.summary,
            progress=progress_of(args),
        )


def _architectures(
    request: MeasureRequest, space_of_model: SpaceOptions, model_resolutions: tuple[int, ...]
) -> tuple[list[SubnetConfig], dict[str, float]]:
    """The architectures to measure and the predictions the input file carried."""
    if (request.archs is None) == (request.random is None):
        raise UsageError("give exactly one of --archs FILE or --random N")
    if request.archs is not None:
        listed = read_architectures(request.archs)
        return [c for c, _ in listed], {c.key(): p for c, p in listed if p is not None}
    assert request.random is not None
    space = space_of_model.space(space_of_model.resolutions or model_resolutions)
    return random_architectures(space, request.random, seed=request.seed), {}


def run_measure(request: MeasureRequest) -> MeasureSummary:
    """Measure, write the records (and ``plot``/``summary``); returns what was done."""
    check_out(request.out, ".json", "--out")
    check_out(request.plot, ".png", "--plot")
    check_out(request.summary, ".json", "--summary")
    model = load_model(request.model, device="cpu" if request.executor.parallel else None)
    if not model.meaningful_accuracy:
        raise UsageError("measuring accuracy needs real weights, not a random super-network")
    cfgs, predicted = _architectures(request, request.space, model.resolutions)
    if request.predictor:
        predictor = MLPAccuracyPredictor.load(request.predictor)
        predicted = dict(zip([c.key() for c in cfgs], predictor.predict(cfgs), strict=True))
    threads = request.model.compute_threads or request.model.threads
    if threads is not None and request.executor.kind == "local":
        torch.set_num_threads(threads)
    spec = request.executor
    setup = EvaluationSetup(
        supernet=model,
        calibration=image_data(request.calibration, flag="calib", spec=spec, progress=request.progress),
        validation=image_data(request.validation, flag="val", spec=spec, progress=request.progress),
        device=request.model.torch_device,
        batch_size=request.model.batch_size,
    )
    summary = measure_subnets_accuracy(
        cfgs, setup, request.out, executor=spec, predicted=predicted, progress=request.progress
    )
    say(summary.line())
    if request.plot:
        plot_measured_vs_predicted(summary.records, request.plot)
    if request.summary:
        write_json(
            request.summary,
            {
                "out": str(summary.out),
                "planned": summary.planned,
                "already": summary.already,
                "measured": summary.measured,
                "stats": None if summary.stats is None else summary.stats.to_dict(),
            },
        )
    print(
        json.dumps({"out": str(summary.out), "measured": summary.measured, "records": len(summary.records)})
    )
    return summary


def _measure_handler(args: argparse.Namespace) -> int:
    run_measure(MeasureRequest.from_args(args))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``measure`` to the ``dofa-levels`` subcommands."""
    m = sub.add_parser(
        "measure",
        help="measured top-1 after BN calibration of a list of sub-networks -> records (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument(
        "--out", required=True, help="records JSON (fit-predictor's format); extended if it exists"
    )
    m.add_argument("--archs", help="architectures: JSON list, family/level table, search report or records")
    m.add_argument("--random", type=int, help="instead: N distinct random architectures of the space")
    m.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    m.add_argument("--accuracy-predictor", help="store this predictor's top-1 beside each measurement")
    m.add_argument("--plot", help="write measured against predicted top-1 as PNG")
    m.add_argument("--summary", help="write the run's statistics (JSON) here")
    add_space_args(m)
    add_model_args(m, required=True)
    add_images_args(m, calib_default=2000)
    add_executor_args(m)
    add_progress_flag(m)
    m.set_defaults(handler=_measure_handler)
