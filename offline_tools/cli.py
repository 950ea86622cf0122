"""``dofa-levels``: build a device's level table (profile → search → calibrate), fit predictors, plot.

Subcommands (``dofa-levels <command> --help`` for all options)::

    dofa-levels profile --device cpu --threads 1 --resolutions 128 144 160 --out LUT_DIR [--validate 30]
    dofa-levels search --latency-table LUT_DIR --accuracy-predictor acc_predictor.pth --out FAMILY.json
    dofa-levels search --latency-table LUT_DIR --accuracy-predictor FILE --score ARCHS.json
    dofa-levels fit-predictor --records subnet_accuracy.json --out predictor.safetensors
    dofa-levels calibrate --family FAMILY.json --model embedded --calib DATA --val DATA --out TABLE.json
    dofa-levels build --device cpu --model embedded --latency-table LUT_DIR --accuracy-predictor FILE \\
        --calib DATA --val DATA            # writes config/levels/cpu.json + cpu.bn.safetensors
    dofa-levels plot --search-report REPORT.json --out fig3.png
    dofa-levels plot --table A.json --compare B.json --out fig4.png

Every failure prints one line ``error: ...`` on stderr and exits with status 2 (1 for an internal
error, 130 when interrupted); no output file is left half-written (all writes are atomic, and
nothing is written before the computation it records has succeeded).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dynamic_ofa_ros.arch import SUPERNET_NAME, SearchSpace, SubnetConfig
from dynamic_ofa_ros.errors import ArchitectureError, DofaError
from dynamic_ofa_ros.timing import atomic_write_text
from offline_tools.errors import SearchError

__all__ = ["build_parser", "main"]

_ZERO_SHA = "0" * 64


class UsageError(DofaError):
    """Inconsistent command-line options."""


# --------------------------------------------------------------------------------------------
# Argument groups
# --------------------------------------------------------------------------------------------


def _add_space_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search space")
    g.add_argument(
        "--resolutions",
        type=int,
        nargs="+",
        help="input sizes to search (default: the latency table's, restricted to those the accuracy "
        "source distinguishes and the model was trained at)",
    )
    g.add_argument("--ks", type=int, nargs="+", default=[3, 5, 7], help="kernel sizes (default 3 5 7)")
    g.add_argument("--e", type=int, nargs="+", default=[3, 4, 6], help="expand ratios (default 3 4 6)")
    g.add_argument("--d", type=int, nargs="+", default=[2, 3, 4], help="stage depths (default 2 3 4)")


def _add_search_args(p: argparse.ArgumentParser) -> None:
    from offline_tools.search import SearchSettings

    d = SearchSettings()
    g = p.add_argument_group("search (Algorithm 1 + regularised evolution)")
    g.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    g.add_argument(
        "--levels", type=int, default=None, help="number of levels to choose (default 7 on CPU, 6 otherwise)"
    )
    g.add_argument(
        "--min-step", type=float, default=1.0, help="minimum accuracy step between levels (points)"
    )
    g.add_argument("--min-accuracy", type=float, help="ignore architectures below this accuracy (percent)")
    g.add_argument("--acc-max", type=float, help="one target: upper accuracy bound (default: sweep targets)")
    g.add_argument("--acc-r", type=float, default=d.acc_r, help=f"accuracy range (default {d.acc_r})")
    g.add_argument("--lat-init", type=float, help="initial latency constraint, ms (default: fastest network)")
    g.add_argument(
        "--lat-add",
        type=float,
        help="constraint increment, ms (default: reach the target latency at itr-max)",
    )
    g.add_argument(
        "--lat-max", type=float, help="latency cap, ms (default: 1.05 x the most accurate network's)"
    )
    g.add_argument("--itr-n", type=int, default=d.itr_n, help=f"iterations per increment (default {d.itr_n})")
    g.add_argument(
        "--itr-max", type=int, default=d.itr_max, help=f"max random iterations (default {d.itr_max})"
    )
    g.add_argument("--population", type=int, default=d.population, help=f"default {d.population}")
    g.add_argument("--generations", type=int, default=d.generations, help=f"default {d.generations}")
    g.add_argument("--mutation-prob", type=float, default=d.mutation_prob, help=f"default {d.mutation_prob}")
    g.add_argument("--parent-ratio", type=float, default=d.parent_ratio, help=f"default {d.parent_ratio}")
    g.add_argument(
        "--mutation-ratio", type=float, default=d.mutation_ratio, help=f"default {d.mutation_ratio}"
    )
    g.add_argument("--targets", type=int, default=d.targets, help=f"sweep points (default {d.targets})")


def _add_images_args(
    p: argparse.ArgumentParser, *, calib_default: int | None = 2000, val: bool = True
) -> None:
    g = p.add_argument_group("images")
    g.add_argument(
        "--calib",
        nargs="+",
        metavar="PATH",
        help="BN calibration images: ImageFolder dir, zip(s) of one, or a rosbag (with --calib-topic)",
    )
    g.add_argument("--calib-topic", help="image topic when --calib is a rosbag")
    g.add_argument(
        "--calib-files", help="only these members (text list, JSON list, or split.json:calibration)"
    )
    g.add_argument("--calib-exclude", help="drop these members (same formats)")
    g.add_argument(
        "--calib-images",
        type=int,
        default=calib_default,
        help=f"use the first N calibration images (default {calib_default})",
    )
    g.add_argument("--calib-sample", type=int, help="use a seeded random sample of N images instead")
    if val:
        g.add_argument("--val", nargs="+", metavar="PATH", help="labelled validation images for top-1")
        g.add_argument("--val-files", help="only these members (e.g. split.json:holdout)")
        g.add_argument("--val-exclude", help="drop these members")
        g.add_argument("--val-images", type=int, help="use the first N validation images (default all)")
        g.add_argument("--val-sample", type=int, help="use a seeded random sample of N images instead")
    g.add_argument("--label-map", help="JSON {class folder: ImageNet index} (default: Imagenette wnids)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of --*-sample (default 0)")


def _add_model_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("model and device")
    g.add_argument(
        "--model",
        required=required,
        help="super-network: embedded, ofa_zoo, random[:seed] (with --allow-random) or a checkpoint path",
    )
    g.add_argument("--allow-random", action="store_true", help="accept random weights (latency-only work)")
    g.add_argument("--torch-device", default="cpu", help="where to run the model: cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, help="CPU threads of the engine / latency (default: torch's)")
    g.add_argument(
        "--compute-threads",
        type=int,
        help="CPU threads of BN calibration and evaluation (default: --threads)",
    )
    g.add_argument("--batch-size", type=int, default=64, help="batch size of calibration/evaluation")


def _add_latency_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency-table", help="latency look-up table directory (OFA YAML or JSON tables)")
    p.add_argument(
        "--device-label", help="the table's device name, e.g. cpu or cuda (default: from the table)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``dofa-levels`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dofa-levels",
        description="Build Dynamic-OFA level tables: profile a device, search Pareto-optimal sub-networks, "
        "calibrate BN per level, plot.",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "profile",
        help="per-operator latency table of this device (see `dofa-levels profile --help`)",
        add_help=False,
    )
    sub.add_parser(
        "validate-latency",
        help="measure random sub-networks against a latency table (`--help` for options)",
        add_help=False,
    )

    s = sub.add_parser("search", help="accuracy-constrained search: family of Pareto-optimal levels")
    _add_latency_args(s)
    s.add_argument("--accuracy-predictor", help="OFA acc_predictor.pth or a fitted .safetensors predictor")
    s.add_argument("--out", help="write the family (level-table JSON, bn_file null) here")
    s.add_argument("--score", help="instead of searching: print accuracy + latency of these architectures")
    s.add_argument("--report", help="write the search report (candidates, front, levels) for plotting")
    s.add_argument("--plot", help="write Fig. 3 (candidates, Pareto front, levels) as PNG")
    s.add_argument("--accuracy-cache", help="JSON cache of measured accuracies (measured search)")
    _add_space_args(s)
    _add_search_args(s)
    _add_model_args(s, required=False)
    _add_images_args(s, calib_default=2000)

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

    c = sub.add_parser("calibrate", help="BN calibration + top-1 + latency per level → level table")
    c.add_argument("--family", required=True, help="family JSON from `dofa-levels search` (or a level table)")
    c.add_argument("--out", required=True, help="output level table .json (+ .bn.safetensors beside)")
    c.add_argument("--latency-from", help="copy latencies of the same architectures from this level table")
    c.add_argument("--device-label", help="device name in the table (default: cpu or cuda)")
    c.add_argument("--warmup", type=int, default=10)
    c.add_argument("--iterations", type=int, default=50, help="timed frames per level")
    c.add_argument("--no-cuda-graphs", action="store_true", help="CUDA: run eagerly")
    c.add_argument("--summary", help="write the run summary JSON here")
    c.add_argument(
        "--min-step",
        type=float,
        default=0.0,
        help="drop levels less than this many measured points above the previous (default 0)",
    )
    _add_model_args(c, required=True)
    _add_images_args(c, calib_default=2000)

    b = sub.add_parser(
        "build", help="profile (or reuse a table) → search → calibrate → config/levels/<device>"
    )
    _add_latency_args(b)
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
    b.add_argument(
        "--calib-min-step",
        type=float,
        default=0.0,
        help="after calibration drop levels less than this many measured points above the previous",
    )
    b.add_argument("--warmup", type=int, default=10)
    b.add_argument("--iterations", type=int, default=50, help="timed frames per level")
    b.add_argument("--no-cuda-graphs", action="store_true", help="CUDA: run eagerly")
    _add_space_args(b)
    _add_search_args(b)
    _add_model_args(b, required=True)
    _add_images_args(b, calib_default=2000)

    pl = sub.add_parser("plot", help="Fig. 3 from a search report, or Fig. 4 from level tables")
    pl.add_argument("--search-report", help="search report JSON (Fig. 3)")
    pl.add_argument("--table", nargs="+", help="level table(s) to draw (Fig. 4)")
    pl.add_argument("--compare", nargs="*", default=[], help="more tables to compare against (Fig. 4)")
    pl.add_argument("--labels", nargs="*", help="legend labels of --table/--compare, in order")
    pl.add_argument("--log-latency", action="store_true", help="Fig. 4: logarithmic latency axis")
    pl.add_argument("--title")
    pl.add_argument("--out", required=True, help="output .png")
    return parser


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_json(path: str | os.PathLike[str], data: Any) -> None:
    from dynamic_ofa_ros.timing import json_default

    atomic_write_text(path, json.dumps(data, indent=1, default=json_default, allow_nan=False) + "\n")


def _read_json(path: str | os.PathLike[str], what: str) -> Any:
    file = Path(path)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what} {file} does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {file}: not valid JSON ({exc})") from exc


def _check_out(path: str | None, suffix: str, what: str) -> None:
    if path is not None and Path(path).suffix.lower() != suffix:
        raise UsageError(f"{what} {path} must end in {suffix}")


def _space(args: argparse.Namespace, resolutions: Sequence[int]) -> SearchSpace:
    if not resolutions:
        raise UsageError("no resolution is left to search (check --resolutions, the table and the predictor)")
    try:
        return SearchSpace(
            ks_choices=tuple(args.ks),
            e_choices=tuple(args.e),
            d_choices=tuple(args.d),
            resolutions=tuple(resolutions),
        )
    except ArchitectureError as exc:
        raise UsageError(str(exc)) from exc


def _load_latency_table(path: str | None, resolutions: Sequence[int] | None = None) -> Any:
    from offline_tools.latency_table import LatencyTable

    if not path:
        raise UsageError("give --latency-table DIR (or --profile-out DIR with build)")
    return LatencyTable.load(path, resolutions=resolutions)


def _device_label(args: argparse.Namespace, table: Any) -> str:
    if getattr(args, "device_label", None):
        return str(args.device_label)
    meta = table.metadata
    for key in ("device_label", "device"):
        if isinstance(meta.get(key), str) and meta[key]:
            return str(meta[key]).split(":")[0]
    return Path(str(table.name)).name or "device"


def _default_levels(args: argparse.Namespace, device: str) -> int:
    if args.levels is not None:
        return int(args.levels)
    return 7 if "cpu" in device.lower() else 6


def _image_set(
    args: argparse.Namespace,
    prefix: str,
    *,
    paths: Sequence[str] | None = None,
    files: str | None = None,
    limit: int | None = None,
    required: bool,
) -> Any:
    from offline_tools.datasets import ImageSet, open_image_source, read_label_map

    paths = paths if paths is not None else getattr(args, prefix, None)
    if not paths:
        if required:
            raise UsageError(
                f"give --{prefix} PATH (images for {'calibration' if prefix == 'calib' else 'top-1'})"
            )
        return None
    label_map: Any = read_label_map(args.label_map) if getattr(args, "label_map", None) else "auto"
    source = open_image_source(
        paths,
        topic=getattr(args, f"{prefix}_topic", None),
        label_map=label_map,
        files=files if files is not None else getattr(args, f"{prefix}_files", None),
        exclude=getattr(args, f"{prefix}_exclude", None),
        sample=getattr(args, f"{prefix}_sample", None),
        limit=limit if limit is not None else getattr(args, f"{prefix}_images", None),
        seed=args.data_seed,
    )
    return ImageSet.load(source, progress=not args.no_progress, desc=f"decode {prefix}")


def _load_model(args: argparse.Namespace) -> Any:
    from dynamic_ofa_ros.supernet import load_supernet

    if not args.model:
        raise UsageError("give --model (embedded, ofa_zoo, a checkpoint path, or random with --allow-random)")
    return load_supernet(args.model, device=args.torch_device, allow_random=args.allow_random)


def _accuracy_source(
    args: argparse.Namespace,
    model: Any,
    *,
    val_paths: Any = None,
    val_files: Any = None,
    val_limit: int | None = None,
) -> Any:
    """The predictor (``--accuracy-predictor``) or measured top-1 (model + images), cached if asked."""
    from offline_tools.accuracy import CachedAccuracy, MeasuredAccuracy, MLPAccuracyPredictor

    if args.accuracy_predictor:
        return MLPAccuracyPredictor.load(args.accuracy_predictor)
    if model is None:
        raise UsageError(
            "give --accuracy-predictor FILE, or --model with validation images for measured accuracy"
        )
    if not model.meaningful_accuracy:
        raise UsageError("a measured-accuracy search needs real weights, not a random super-network")
    validation = _image_set(args, "val", paths=val_paths, files=val_files, limit=val_limit, required=True)
    calibration = _image_set(args, "calib", required=True)
    source: Any = MeasuredAccuracy(
        model,
        validation=validation,
        calibration=calibration,
        device=args.torch_device,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    if args.accuracy_cache:
        source = CachedAccuracy(
            source,
            args.accuracy_cache,
            supernet_sha256=model.sha256,
            dataset=f"{validation.name} | calib {calibration.name}",
        )
    return source


def _search_resolutions(args: argparse.Namespace, table: Any, accuracy: Any, model: Any) -> list[int]:
    if args.resolutions:
        wanted = sorted(set(args.resolutions))
        missing = [r for r in wanted if r not in table.resolutions]
        if missing:
            raise UsageError(
                f"the latency table has no resolution {missing} "
                f"(it has {list(table.resolutions)}); profile them"
            )
        return wanted
    resolutions = list(table.resolutions)
    supported = getattr(accuracy, "supported_resolutions", None)
    if callable(supported):
        resolutions = list(supported(resolutions))
    if model is not None:
        resolutions = [r for r in resolutions if r in model.resolutions]
    return resolutions


def _settings(args: argparse.Namespace) -> Any:
    from offline_tools.search import SearchSettings

    return SearchSettings(
        acc_max=args.acc_max,
        acc_r=args.acc_r,
        lat_init=args.lat_init,
        lat_add=args.lat_add,
        lat_max=args.lat_max,
        itr_n=args.itr_n,
        itr_max=args.itr_max,
        population=args.population,
        generations=args.generations,
        mutation_prob=args.mutation_prob,
        parent_ratio=args.parent_ratio,
        mutation_ratio=args.mutation_ratio,
        targets=args.targets,
        seed=args.seed,
    )


def _identity(model: Any) -> dict[str, Any]:
    if model is not None:
        return dict(model.identity())
    return {
        "name": SUPERNET_NAME,
        "source": "unspecified (searched with an accuracy predictor and a latency table; "
        "pass --model to record it)",
        "sha256": _ZERO_SHA,
    }


def _profiling_of(table: Any) -> dict[str, Any]:
    meta = {k: v for k, v in table.metadata.items() if isinstance(v, str | int | float | bool) or v is None}
    meta["latency_source"] = f"look-up table {table.name}"
    if table.correction is not None:
        meta["correction"] = table.correction.to_dict()
    return meta


def _level_rows(cands: Sequence[Any], accuracy: Any, macs: Mapping[str, float] | None = None) -> list[Any]:
    from dynamic_ofa_ros.levels import Level

    rows = []
    for n, cand in enumerate(cands, start=1):
        acc = round(float(cand.accuracy), 3)
        rows.append(
            Level(
                level=n,
                config=cand.config,
                latency_ms=round(float(cand.latency_ms), 4),
                latency_p95_ms=None,
                accuracy=acc if accuracy.measured else None,
                predicted_accuracy=None if accuracy.measured else acc,
                accuracy_dataset=accuracy.dataset if accuracy.measured else None,
                macs_m=None if macs is None else round(macs[cand.config.key()], 3),
            )
        )
    return rows


def _macs_of(model: Any, cfgs: Sequence[SubnetConfig]) -> dict[str, float] | None:
    if model is None:
        return None
    from dynamic_ofa_ros import bn

    return {c.key(): float(bn.count_macs(bn.extract_subnet(model.net, c), c.resolution)) for c in cfgs}


def _describe_accuracy(accuracy: Any) -> dict[str, Any]:
    describe = getattr(accuracy, "describe", None)
    if callable(describe):
        return dict(describe())
    return {"kind": "measured" if accuracy.measured else "predicted", "dataset": accuracy.dataset}


def _search_report(result: Any, *, device: str, accuracy: Any) -> dict[str, Any]:
    return {
        "format": "dynamic_ofa_ros.search_report",
        "version": 1,
        "meta": {
            "device": device,
            "predicted": not accuracy.measured,
            "accuracy_source": _describe_accuracy(accuracy),
        },
        "summary": result.summary(),
        "candidates": [[round(c.latency_ms, 4), round(c.accuracy, 4)] for c in result.candidates],
        "front": [c.to_dict() for c in result.front],
        "levels": [c.to_dict() for c in result.levels],
    }


def _print_levels(levels: Sequence[Any]) -> None:
    for lv in levels:
        acc = lv.accuracy if lv.accuracy is not None else lv.predicted_accuracy
        kind = "measured" if lv.accuracy is not None else "predicted"
        acc_text = "n/a" if acc is None else f"{acc:6.2f} % ({kind})"
        p95 = f" p95 {lv.latency_p95_ms:9.3f}" if lv.latency_p95_ms is not None else ""
        macs = f" {lv.macs_m:7.1f} MMACs" if lv.macs_m is not None else ""
        print(f"  level {lv.level}: {lv.latency_ms:9.3f} ms{p95}  {acc_text}{macs}  {lv.config.summary()}")


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _run_search(args: argparse.Namespace, *, table: Any, accuracy: Any, model: Any, device: str) -> Any:
    from offline_tools.search import search_family

    space = _space(args, _search_resolutions(args, table, accuracy, model))
    table.check_space(space)
    return search_family(
        space,
        accuracy,
        table,
        _settings(args),
        n_levels=_default_levels(args, device),
        min_step=args.min_step,
        min_accuracy=args.min_accuracy,
        progress=not args.no_progress,
    )


def _family_table(result: Any, *, table: Any, accuracy: Any, model: Any, device: str) -> Any:
    from dynamic_ofa_ros.levels import LevelTable

    levels = _level_rows(result.levels, accuracy, _macs_of(model, [c.config for c in result.levels]))
    device_name = str(table.metadata.get("device_name") or Path(str(table.name)).name)
    summary = result.summary()
    summary.pop("targets", None)
    return LevelTable(
        device=device,
        device_name=device_name,
        profiling=_profiling_of(table),
        supernet=_identity(model),
        calibration={},
        levels=levels,
        bn=None,
        extra={"search": {"accuracy_source": _describe_accuracy(accuracy), **summary}},
    )


def _cmd_search(args: argparse.Namespace) -> int:
    from dynamic_ofa_ros.levels import save_level_table

    if bool(args.out) == bool(args.score):
        raise UsageError("give exactly one of --out FAMILY.json (search) or --score ARCHS.json (evaluate)")
    _check_out(args.out, ".json", "--out")
    _check_out(args.report, ".json", "--report")
    _check_out(args.plot, ".png", "--plot")
    table = _load_latency_table(args.latency_table)
    model = _load_model(args) if args.model else None
    accuracy = _accuracy_source(args, model)
    device = _device_label(args, table)
    if args.score:
        return _score(args, table=table, accuracy=accuracy, model=model)
    result = _run_search(args, table=table, accuracy=accuracy, model=model, device=device)
    family = _family_table(result, table=table, accuracy=accuracy, model=model, device=device)
    report = _search_report(result, device=device, accuracy=accuracy)
    if args.plot:
        from offline_tools.plot import plot_search

        plot_search(report, args.plot)
    if args.report:
        _write_json(args.report, report)
    save_level_table(family, args.out)
    _say(
        f"search: {len(result.candidates)} candidates, {len(result.front)} on the Pareto front, "
        f"{len(result.levels)} levels in {result.seconds:.1f} s"
    )
    for note in result.notes:
        _say(f"note: {note}")
    print(f"wrote {args.out} ({device}):")
    _print_levels(family.levels)
    return 0


def _archs_from(data: Any, where: str) -> list[SubnetConfig]:
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


def _score(args: argparse.Namespace, *, table: Any, accuracy: Any, model: Any) -> int:
    from offline_tools.search import Evaluator

    cfgs = _archs_from(_read_json(args.score, "architectures file"), str(args.score))
    ev = Evaluator(accuracy, table)
    cands = ev.evaluate(cfgs)
    macs = _macs_of(model, cfgs)
    rows = [{**lv.to_dict(), "key": lv.config.key()} for lv in _level_rows(cands, accuracy, macs)]
    print(json.dumps(rows, indent=1))
    return 0


def _auto_encoding(cfgs: Sequence[SubnetConfig], args: argparse.Namespace) -> tuple[int, int, int]:
    resolutions = sorted({c.resolution for c in cfgs})
    base = args.base_resolution if args.base_resolution is not None else resolutions[0]
    if args.step is not None:
        step = args.step
    else:
        gaps = [b - a for a, b in zip(resolutions, resolutions[1:], strict=False)]
        step = math.gcd(*gaps) if gaps else 16
    slots = args.slots if args.slots is not None else (resolutions[-1] - base) // step + 1
    return base, step, slots


def _cmd_fit_predictor(args: argparse.Namespace) -> int:
    from offline_tools.accuracy import fit_mlp_predictor, load_accuracy_records

    _check_out(args.out, ".safetensors", "--out")
    records = load_accuracy_records(args.records, target_key=args.target_key)
    if not records:
        raise UsageError(f"{args.records}: no records")
    base, step, slots = _auto_encoding([c for c, _ in records], args)
    dataset = args.dataset
    if dataset is None:
        header = _read_json(args.records, "records")
        dataset = (
            f"{header.get('metric', args.target_key)} ({Path(args.records).name})"
            if isinstance(header, Mapping)
            else f"{args.target_key} ({Path(args.records).name})"
        )
    predictor = fit_mlp_predictor(
        records,
        base_resolution=base,
        step=step,
        n_slots=slots,
        seed=args.seed,
        epochs=args.epochs,
        hidden=args.hidden,
        holdout_fraction=args.holdout_fraction,
        name=args.name,
        dataset=dataset,
        clip_to_records=not args.no_clip,
        progress=not args.no_progress,
    )
    predictor.save(args.out)
    rep = predictor.fit_report or {}
    print(json.dumps({"out": args.out, "encoding": predictor.encoding.to_dict(), "fit": rep}, indent=1))
    _say(
        f"fitted on {rep.get('n_train')} architectures: held-out RMSE "
        f"{rep.get('holdout_rmse', math.nan):.2f} points, rank correlation "
        f"{rep.get('holdout_rank_correlation', math.nan):.3f} ({rep.get('n_holdout')} held out)"
    )
    return 0


def _calibrate(
    args: argparse.Namespace, model: Any, family: Any, *, latency_from: Any, device_label: str | None
) -> Any:
    from offline_tools.calibrate import calibrate_levels

    calibration = _image_set(args, "calib", required=True)
    validation = _image_set(args, "val", required=False)
    return calibrate_levels(
        model,
        family,
        calibration=calibration,
        validation=validation,
        device=args.torch_device,
        threads=args.threads,
        compute_threads=args.compute_threads,
        cuda_graphs=not args.no_cuda_graphs,
        batch_size=args.batch_size,
        warmup=args.warmup,
        iterations=args.iterations,
        latency_from=latency_from,
        device_label=device_label,
        min_step=getattr(args, "calib_min_step", getattr(args, "min_step", 0.0)),
        progress=not args.no_progress,
    )


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from dynamic_ofa_ros.levels import load_level_table, save_level_table

    _check_out(args.out, ".json", "--out")
    _check_out(args.summary, ".json", "--summary")
    family = load_level_table(args.family, require_bn=False)
    latency_from = load_level_table(args.latency_from, require_bn=False) if args.latency_from else None
    model = _load_model(args)
    result = _calibrate(args, model, family, latency_from=latency_from, device_label=args.device_label)
    save_level_table(result.table, args.out, supernet=model)
    if args.summary:
        _write_json(args.summary, result.summary())
    for line in result.dropped:
        _say(f"dropped: {line}")
    for note in result.notes:
        _say(f"note: {note}")
    print(f"wrote {args.out} ({result.table.device}, {result.seconds['total']:.1f} s):")
    _print_levels(result.table.levels)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from dynamic_ofa_ros.levels import save_level_table

    stages: dict[str, float] = {}
    if bool(args.latency_table) == bool(args.profile_out):
        raise UsageError("give one of --latency-table DIR (reuse) or --profile-out DIR (profile now)")
    if not args.accuracy_predictor and not args.search_val:
        raise UsageError(
            "give --accuracy-predictor FILE or --search-val PATH (measured accuracy) for the search"
        )
    for value, suffix, what in (
        (args.out, ".json", "--out"),
        (args.family_out, ".json", "--family-out"),
        (args.report, ".json", "--report"),
        (args.summary, ".json", "--summary"),
        (args.plot, ".png", "--plot"),
    ):
        _check_out(value, suffix, what)
    if not args.calib:
        raise UsageError("give --calib PATH (BN calibration images)")
    t0 = time.perf_counter()
    model = _load_model(args)
    stages["load_model"] = time.perf_counter() - t0
    if args.profile_out:
        from offline_tools import latency_table

        resolutions = args.resolutions or list(model.resolutions)
        argv = [
            "profile",
            "--device",
            args.torch_device,
            "--resolutions",
            *map(str, resolutions),
            "--out",
            args.profile_out,
        ]
        if args.threads is not None:
            argv += ["--threads", str(args.threads)]
        if args.profile_validate:
            argv += ["--validate", str(args.profile_validate)]
        if args.no_progress:
            argv.append("--no-progress")
        t0 = time.perf_counter()
        status = latency_table.main(argv)
        stages["profile"] = time.perf_counter() - t0
        if status != 0:
            return status
        table_dir = args.profile_out
    else:
        table_dir = args.latency_table
    table = _load_latency_table(table_dir)
    device = args.device_label or ("cuda" if args.torch_device.startswith("cuda") else "cpu")
    out = args.out or str(Path("config") / "levels" / f"{device}.json")
    t0 = time.perf_counter()
    accuracy = _accuracy_source(
        args,
        model,
        val_paths=args.search_val,
        val_files=args.search_val_files,
        val_limit=args.search_val_images,
    )
    result = _run_search(args, table=table, accuracy=accuracy, model=model, device=device)
    stages["search"] = time.perf_counter() - t0
    family = _family_table(result, table=table, accuracy=accuracy, model=model, device=device)
    report = _search_report(result, device=device, accuracy=accuracy)
    t0 = time.perf_counter()
    calibrated = _calibrate(args, model, family, latency_from=None, device_label=device)
    stages["calibrate"] = time.perf_counter() - t0
    calibrated.table.extra["search"] = family.extra["search"]
    calibrated.table.extra["latency_table"] = str(table_dir)
    if args.family_out:
        save_level_table(family, args.family_out)
    if args.report:
        _write_json(args.report, report)
    if args.plot:
        from offline_tools.plot import plot_search

        plot_search(report, args.plot)
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
    if args.summary:
        _write_json(args.summary, summary)
    for line in calibrated.dropped:
        _say(f"dropped: {line}")
    print(json.dumps({k: summary[k] for k in ("stages_seconds", "candidates_evaluated", "pareto_points")}))
    print(f"wrote {out}:")
    _print_levels(calibrated.table.levels)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from dynamic_ofa_ros.levels import load_level_table
    from offline_tools.plot import load_search_report, plot_search, plot_tables

    _check_out(args.out, ".png", "--out")
    if bool(args.search_report) == bool(args.table):
        raise UsageError("give --search-report (Fig. 3) or --table (Fig. 4)")
    if args.search_report:
        plot_search(load_search_report(args.search_report), args.out, title=args.title)
    else:
        paths = list(args.table) + list(args.compare)
        labels = list(args.labels or [])
        if labels and len(labels) != len(paths):
            raise UsageError(f"--labels has {len(labels)} entries for {len(paths)} tables")
        tables = [
            (labels[i] if labels else Path(p).stem, load_level_table(p, require_bn=False))
            for i, p in enumerate(paths)
        ]
        plot_tables(tables, args.out, title=args.title, log_latency=args.log_latency)
    print(f"wrote {args.out}")
    return 0


_COMMANDS = {
    "search": _cmd_search,
    "fit-predictor": _cmd_fit_predictor,
    "calibrate": _cmd_calibrate,
    "build": _cmd_build,
    "plot": _cmd_plot,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dofa-levels``; returns the exit status (0 ok, 2 error, 1 internal error)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    rest = [a for a in args_list if a != "--no-progress"]
    if rest and rest[0] in ("profile", "validate-latency"):
        from offline_tools import latency_table

        sub = "profile" if rest[0] == "profile" else "validate"
        extra = ["--no-progress"] if "--no-progress" in args_list else []
        return latency_table.main([sub, *rest[1:], *extra])
    args = build_parser().parse_args(rest)  # --no-progress is accepted anywhere on the line
    args.no_progress = len(rest) != len(args_list)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _say("error: interrupted")
        return 130
    except SearchError as exc:
        _say(f"error: search failed: {exc}")
        return 2
    except DofaError as exc:
        _say(f"error: {exc}")
        return 2
    except OSError as exc:
        _say(f"error: {exc}")
        return 2
    except Exception as exc:  # the CLI promises one line, no traceback
        if os.environ.get("DOFA_DEBUG"):
            raise
        _say(f"error: internal error ({type(exc).__name__}: {exc}); rerun with DOFA_DEBUG=1 for a traceback")
        return 1


if __name__ == "__main__":
    sys.exit(main())
