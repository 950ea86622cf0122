r"""``dofa-levels``: the design-time command line (the console script is ``offline_tools.cli:main``).

Subcommands (``dofa-levels <command> --help`` for all options)::

    dofa-levels profile --device cpu --threads 1 --resolutions 128 144 160 --out LUT_DIR [--validate 30]
    dofa-levels validate-latency --table LUT_DIR --n-subnets 30 [--fit-correction --write]
    dofa-levels search --latency-table LUT_DIR --accuracy-predictor acc_predictor.pth --out FAMILY.json
    dofa-levels search --latency-table LUT_DIR --accuracy-predictor FILE --score ARCHS.json
    dofa-levels fit-predictor --records subnet_accuracy.json --out predictor.safetensors
    dofa-levels calibrate --family FAMILY.json --model embedded --calib DATA --val DATA --out TABLE.json
    dofa-levels build --torch-device cpu --model embedded --latency-table LUT_DIR --accuracy-predictor FILE \
        --calib DATA --val DATA            # writes config/levels/cpu.json + cpu.bn.safetensors
    dofa-levels reprofile --table cpu-torch.json --model embedded --backend openvino --val DATA \
        --out config/levels/cpu.json     # latency + top-1 of every level, compiled by the backend
    dofa-levels plot --search-report REPORT.json --out fig3.png
    dofa-levels plot --table A.json --compare B.json --out fig4.png
    dofa-levels experiments --table config/levels/cpu.json --out results/   # Figs. 6-8
    dofa-levels train --data train-128px-part*.zip --out OUT   # the embedded super-network

Each subcommand's module adds its parser and converts the parsed options into a typed request
for a typed function (``run_profile(ProfileRequest)``, ``run_search(SearchRequest)``, ...), which
other code may call directly: :mod:`~offline_tools.cli.latency` (profile, validate-latency),
:mod:`~offline_tools.cli.levels` (search, fit-predictor, calibrate),
:mod:`~offline_tools.cli.build`, :mod:`~offline_tools.cli.plot`; ``experiments`` and ``train`` are
declared by :mod:`offline_tools.experiments.cli` and :mod:`offline_tools.training.cli`
(``add_arguments(parser)`` + ``run(args)``).

Every failure prints one line ``error: ...`` on stderr and exits with status 2 (1 for an internal
error, 130 when interrupted); no output file is left half-written (all writes are atomic, and
nothing is written before the computation it records has succeeded).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from dynamic_ofa_ros.errors import DofaError
from offline_tools.cli import build, latency, levels, measure, plot, reprofile
from offline_tools.cli.common import add_progress_flag, say
from offline_tools.errors import SearchError
from offline_tools.experiments import cli as experiments_cli
from offline_tools.training import cli as training_cli

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The ``dofa-levels`` argument parser; each subcommand sets ``handler`` (:data:`Handler`)."""
    parser = argparse.ArgumentParser(
        prog="dofa-levels",
        description="Build Dynamic-OFA level tables: profile a device, search Pareto-optimal sub-networks, "
        "calibrate BN per level, plot; run the paper's experiments; train the super-network.",
    )
    add_progress_flag(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    latency.register(sub)
    levels.register(sub)
    measure.register(sub)
    build.register(sub)
    reprofile.register(sub)
    plot.register(sub)
    experiments = sub.add_parser(
        "experiments",
        help="the paper's runtime experiments (Figs. 6, 7, 8) on this device",
        description=experiments_cli.DESCRIPTION,
    )
    experiments_cli.add_arguments(experiments)
    experiments.set_defaults(handler=experiments_cli.run)
    train = sub.add_parser("train", help="train the embedded super-network (docs/training.md)")
    training_cli.add_arguments(train)
    train.set_defaults(handler=training_cli.run)
    return parser


def _run(handler: Handler, args: argparse.Namespace) -> int:
    """Run ``handler``; every failure becomes one ``error:`` line and an exit status."""
    try:
        return handler(args)
    except KeyboardInterrupt:
        say("error: interrupted")
        return 130
    except SearchError as exc:
        say(f"error: search failed: {exc}")
        return 2
    except (DofaError, OSError) as exc:
        say(f"error: {exc}")
        return 2
    except Exception as exc:  # the CLI promises one line, no traceback
        if os.environ.get("DOFA_DEBUG"):
            raise
        say(f"error: internal error ({type(exc).__name__}: {exc}); rerun with DOFA_DEBUG=1 for a traceback")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dofa-levels``; returns the exit status (0 ok, 2 error, 1 internal error)."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return _run(handler, args)


if __name__ == "__main__":
    sys.exit(main())
