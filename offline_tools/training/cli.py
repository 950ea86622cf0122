"""The training command line: ``train_supernet`` options -> :func:`~.pipeline.train_supernet`.

``offline_tools/train_supernet.py`` (``python -m offline_tools.train_supernet``) calls :func:`main`;
``dofa-levels train`` registers :func:`add_arguments` and :func:`run`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from offline_tools.training.config import TrainConfig, TrainSetupError, load_config
from offline_tools.training.context import Clock
from offline_tools.training.pipeline import train_supernet

__all__ = ["add_arguments", "config_from_args", "main", "run"]

PROG = "train_supernet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``train_supernet`` (see ``docs/training.md``)."""
    p = parser
    p.add_argument(
        "--data", type=Path, nargs="+", required=True, help="ImageFolder zips (train-128px-part*.zip)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (flat; created)")
    p.add_argument("--config", type=Path, default=None, help="JSON config (config/train_supernet.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--time-budget-min", type=float, default=None, help="wall-clock budget of the whole run")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--measure-subnets", type=int, default=None, help="random sub-networks to measure")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="resumable run: write a checkpoint here when training stops (step-based cosine over the "
        "planned epochs; the time budget only ends this call)",
    )
    p.add_argument(
        "--resume", type=Path, default=None, help="continue the run of this --checkpoint-dir (same config)"
    )
    p.add_argument(
        "--stop-after-steps",
        type=int,
        default=None,
        metavar="N",
        help="end this call's training after N steps (needs --checkpoint-dir; for splitting a run)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, ``--config``, ``--set`` and the shortcut options (``--epochs`` ...), in that order."""
    overrides = [str(item) for item in args.set]
    shortcuts = (
        ("time_budget_min", args.time_budget_min),
        ("epochs", args.epochs),
        ("measure_subnets", args.measure_subnets),
        ("seed", args.seed),
    )
    overrides += [f"{key}={json.dumps(value)}" for key, value in shortcuts if value is not None]
    config_file: Path | None = args.config
    return load_config(config_file, overrides)


def run(args: argparse.Namespace, *, command: Sequence[str] | None = None, clock: Clock | None = None) -> int:
    """Run the training the parsed options describe; the exit status (0 ok, 1 a stage failed).

    ``command`` is the command line to record (default: this process's); ``clock`` the time budget's
    start (default: now). A run that cannot start exits with ``train_supernet: <why>``.
    """
    cfg = config_from_args(args)
    try:
        result = train_supernet(
            cfg,
            data=[Path(p) for p in args.data],
            out_dir=Path(args.out),
            device=str(args.device),
            config_file=args.config,
            checkpoint_dir=args.checkpoint_dir,
            resume=args.resume,
            stop_after_steps=args.stop_after_steps,
            command=command,
            clock=clock,
        )
    except TrainSetupError as exc:
        raise SystemExit(f"{PROG}: {exc}") from exc
    return result.exit_code


def main(argv: Sequence[str] | None = None, *, started: float | None = None) -> int:
    """``train_supernet [options]``; the budget counts from ``started`` (a ``time.monotonic()``; or now)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train the embedded OFA MobileNetV3 super-network on Imagenette (see docs/training.md).",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.stop_after_steps is not None and (args.checkpoint_dir is None or args.stop_after_steps < 0):
        parser.error("--stop-after-steps needs --checkpoint-dir and N >= 0")
    clock = Clock() if started is None else Clock(start=started)
    return run(args, command=None if argv is None else [PROG, *argv], clock=clock)
