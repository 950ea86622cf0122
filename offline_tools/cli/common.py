"""What every ``dofa-levels`` subcommand shares: the usage error, output helpers, the progress flag."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dynamic_ofa_ros.errors import DofaError
from dynamic_ofa_ros.timing import atomic_write_text, json_default

__all__ = ["UsageError", "add_progress_flag", "check_out", "progress_of", "read_json", "say", "write_json"]


class UsageError(DofaError):
    """Inconsistent command-line options."""


def say(message: str) -> None:
    """Print a progress or diagnostic line on stderr (stdout carries the results)."""
    print(message, file=sys.stderr, flush=True)


def write_json(path: str | os.PathLike[str], data: object) -> None:
    """Write ``data`` as indented JSON atomically; NaN/infinity are refused, not written."""
    atomic_write_text(path, json.dumps(data, indent=1, default=json_default, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str) -> object:
    """The parsed JSON file ``path``; :class:`UsageError` naming ``what`` when missing or invalid."""
    file = Path(path)
    try:
        data: object = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what} {file} does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {file}: not valid JSON ({exc})") from exc
    return data


def check_out(path: str | None, suffix: str, what: str) -> None:
    """Refuse an output path (option ``what``) that does not end in ``suffix``."""
    if path is not None and Path(path).suffix.lower() != suffix:
        raise UsageError(f"{what} {path} must end in {suffix}")


def add_progress_flag(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """``--no-progress``, accepted before the subcommand (``top_level``) and after it.

    A subcommand's copy has no default, so it never overwrites the value given before the
    subcommand; the top-level copy's default (False) is the value when the flag is absent.
    """
    parser.add_argument(
        "--no-progress",
        action="store_true",
        default=False if top_level else argparse.SUPPRESS,
        help="no progress bars",
    )


def progress_of(args: argparse.Namespace) -> bool:
    """Whether progress bars are wanted (no ``--no-progress`` anywhere on the line)."""
    return not bool(getattr(args, "no_progress", False))
