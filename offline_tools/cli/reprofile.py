"""``dofa-levels reprofile``: measure a calibrated level table again in an execution backend.

    dofa-levels reprofile --table config/levels/cpu-torch.json --model embedded --backend openvino \
        --val ../shared/datasets/imagenette/val-224px.zip --threads 1 --out config/levels/cpu.json

Every level is compiled by the backend (with the table's BN statistics), timed through the engine
and its top-1 measured on the validation photos; see :mod:`offline_tools.reprofile`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from dynamic_ofa_ros.backends import BACKENDS, PRECISIONS
from dynamic_ofa_ros.levels import LevelTable, load_level_table, save_level_table
from offline_tools.cli.common import UsageError, add_progress_flag, check_out, progress_of, say, write_json
from offline_tools.cli.options import ImageOptions, ModelOptions
from offline_tools.cli.sources import image_set, load_model
from offline_tools.reprofile import ReprofileResult, reprofile_table

__all__ = ["ReprofileRequest", "register", "run_reprofile"]


@dataclass(frozen=True)
class ReprofileRequest:
    """``dofa-levels reprofile``: ``table`` measured in ``backend``, written to ``out``."""

    table: str
    out: str
    model: ModelOptions
    validation: ImageOptions | None
    backend: str = "openvino"
    precision: str = "f32"
    threads: int = 1
    warmup: int = 20
    iterations: int = 200
    rounds: int = 10
    cache_dir: str | None = None
    report: str | None = None
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReprofileRequest:
        """The request of a parsed ``reprofile`` command line."""
        return cls(
            table=args.table,
            out=args.out,
            model=ModelOptions(model=args.model, allow_random=args.allow_random, threads=args.threads),
            validation=ImageOptions.from_args(args, "val"),
            backend=args.backend,
            precision=args.precision,
            threads=args.threads,
            warmup=args.warmup,
            iterations=args.iterations,
            rounds=args.rounds,
            cache_dir=args.cache_dir,
            report=args.report,
            progress=progress_of(args),
        )


def _print(result: ReprofileResult) -> None:
    say(f"{'src':>3} {'px':>4} {'old ms':>8} {'new ms':>8} {'p95':>8} {'old top-1':>9} {'new top-1':>9}")
    for row in result.summary()["levels"]:
        old_acc, new_acc = (
            "n/a" if value is None else f"{value:.3f}" for value in (row["source_accuracy"], row["accuracy"])
        )
        say(
            f"{row['source_level']:>3} {row['resolution']:>4} {row['source_latency_ms']:>8.3f} "
            f"{row['latency_ms']:>8.3f} {row['latency_p95_ms']:>8.3f} {old_acc:>9} {new_acc:>9}"
        )
    for line in result.dropped:
        say(f"dropped {line}")


def run_reprofile(request: ReprofileRequest) -> LevelTable:
    """Measure ``request.table`` in ``request.backend``, write the new table (+ BN file), return it."""
    check_out(request.out, ".json", "--out")
    if Path(request.out).resolve() == Path(request.table).resolve():
        raise UsageError("--out must differ from --table (copy the source table first)")
    if request.validation is None:
        raise UsageError("give --val PATH (labelled photos: top-1 and the photo that is timed)")
    model = load_model(request.model, device="cpu")
    source = load_level_table(request.table, supernet=model, expected_device="cpu")
    photos = image_set(request.validation, flag="val", progress=request.progress)
    result = reprofile_table(
        model,
        source,
        photos,
        backend=request.backend,
        precision=request.precision,
        threads=request.threads,
        warmup=request.warmup,
        iterations=request.iterations,
        rounds=request.rounds,
        cache_dir=request.cache_dir,
        progress=request.progress,
    )
    _print(result)
    path = save_level_table(result.table, request.out, supernet=model)
    if request.report:
        write_json(request.report, result.summary())
    say(f"wrote {path} ({len(result.table.levels)} levels, {request.backend} {request.precision})")
    return result.table


def _handler(args: argparse.Namespace) -> int:
    run_reprofile(ReprofileRequest.from_args(args))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``reprofile`` to the ``dofa-levels`` subcommands."""
    p = sub.add_parser(
        "reprofile",
        help="measure a calibrated level table again in a backend (latency + top-1 per level)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--table", required=True, help="calibrated level table (with its BN file)")
    p.add_argument("--out", required=True, help="the new level table (.json; its BN file goes beside it)")
    p.add_argument("--model", required=True, help="the table's super-network: embedded, a checkpoint, random")
    p.add_argument("--allow-random", action="store_true", help="accept random weights (latency only)")
    p.add_argument("--backend", choices=BACKENDS, default="openvino", help="default openvino")
    p.add_argument("--precision", choices=PRECISIONS, default="f32")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--warmup", type=int, default=20, help="untimed frames per level (default 20)")
    p.add_argument("--iterations", type=int, default=200, help="timed frames per level (default 200)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved passes over the levels (default 10)")
    p.add_argument("--cache-dir", help="compiled-artefact cache (default: the platform's cache folder)")
    p.add_argument("--report", help="also write the per-level old/new numbers as JSON here")
    p.add_argument("--val", nargs="+", required=True, metavar="PATH", help="labelled validation photos")
    p.add_argument("--val-files", help="only these members (e.g. split.json:holdout)")
    p.add_argument("--val-images", type=int, help="use the first N validation photos (default all)")
    p.add_argument("--label-map", help="JSON {class folder: ImageNet index} (default: Imagenette wnids)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of a sample (default 0)")
    add_progress_flag(p)
    p.set_defaults(handler=_handler)
