"""Command line of the experiments: ``python -m offline_tools.experiments`` and ``dofa-levels experiments``.

:func:`add_arguments` declares the options on any parser; :func:`run` turns the parsed namespace
into typed values (:class:`Inputs`, :class:`Settings`) and calls :func:`run_experiments`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from dynamic_ofa_ros.paths import resolve_device
from offline_tools.datasets import pack_images
from offline_tools.experiments.settings import EXPERIMENTS, Inputs, Settings
from offline_tools.experiments.suite import run_experiments

__all__ = ["add_arguments", "main", "parse_args", "run", "settings_from_args"]

DESCRIPTION = "Runtime experiments of the Dynamic-OFA paper (Figs. 6, 7 and 8) on one device, GPU or CPU."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the experiments' options on ``parser``."""
    p = parser
    p.add_argument("--device", default="auto", help="cpu | cuda[:N] | auto (default: cuda when available)")
    p.add_argument("--table", help="level table JSON (its BN file beside it); required unless --pack-images")
    p.add_argument("--model", default="embedded", help="embedded | ofa_zoo | random[:seed] | checkpoint path")
    p.add_argument("--allow-random", action="store_true", help="allow --model random (latency only)")
    p.add_argument("--out", help="folder for fig*-<tag>.json/.png; required unless --pack-images")
    p.add_argument(
        "--pack-images",
        nargs=2,
        metavar=("SRC", "DST_ZIP"),
        help="only copy --n-images photos from SRC (folder or zip) into DST_ZIP, then exit",
    )
    p.add_argument("--n-images", type=int, default=None, help="images cycled through by the camera (32)")
    p.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    p.add_argument("--quick", action="store_true", help="half-length phases")
    p.add_argument(
        "--images", default=None, help="folder or zip of JPEG/PNG images (default: Imagenette in shared/)"
    )
    p.add_argument("--fps", type=float, default=None, help="camera rate of figs. 6/7 (0 = back-to-back)")
    p.add_argument(
        "--fig8-fps", type=float, default=None, help="rate of each fig. 8 classifier (0 = back-to-back)"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU inference threads")
    p.add_argument("--window", type=int, default=None, help="manager window (default: ManagerConfig's)")
    p.add_argument("--margin", type=float, default=None, help="fig. 6 budget margin over p95 (default 1.1)")
    p.add_argument(
        "--load-margin", type=float, default=None, help="figs. 7/8 budget margin over p95 under load (1.25)"
    )
    p.add_argument("--lut-source", choices=("measured", "table"), default="measured")
    p.add_argument(
        "--statistic",
        choices=("p95", "mean"),
        default="p95",
        help="window statistic the manager compares with the budget (default p95)",
    )
    p.add_argument("--tag", default=None, help="file-name tag (default: GPU model, e.g. h100, or cpu)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """:meth:`Settings.for_device` with the options given on the command line."""
    settings = Settings.for_device(resolve_device(str(args.device)), quick=bool(args.quick))
    given = {
        "fps": args.fps,
        "fig8_fps": args.fig8_fps,
        "threads": args.threads,
        "window_size": args.window,
        "margin": args.margin,
        "load_margin": args.load_margin,
        "n_images": args.n_images,
    }
    # argparse already gave these their types (float / int)
    overrides = {name: value for name, value in given.items() if value is not None}
    return replace(settings, lut_source=str(args.lut_source), statistic=str(args.statistic), **overrides)


def run(args: argparse.Namespace) -> int:
    """Run the experiments of a parsed command line.

    Returns:
        0 when every experiment ran (whatever its numbers), 1 when one failed, 2 for a usage error.
    """
    if args.pack_images:
        src, dst = (str(v) for v in args.pack_images)
        count = pack_images(src, dst, int(args.n_images) if args.n_images else Settings().n_images)
        print(f"{count} images -> {dst}")
        return 0
    if not args.table or not args.out:
        print("--table and --out are required", file=sys.stderr)
        return 2
    os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm: keep the output short
    settings = settings_from_args(args)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    inputs = Inputs(
        table=Path(args.table),
        out=Path(args.out),
        model=str(args.model),
        allow_random=bool(args.allow_random),
        images=None if args.images is None else str(args.images),
        tag=None if args.tag is None else str(args.tag),
    )
    t0 = time.monotonic()
    _, failures = run_experiments(inputs, settings, [str(name) for name in args.only])
    print(f"total {time.monotonic() - t0:.1f} s; {failures} experiment(s) failed", flush=True)
    return 1 if failures else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m offline_tools.experiments``."""
    parser = argparse.ArgumentParser(prog="python -m offline_tools.experiments", description=DESCRIPTION)
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m offline_tools.experiments``; see :func:`run` for the exit status."""
    return run(parse_args(argv))
