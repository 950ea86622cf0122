"""Train the embedded OFA MobileNetV3 super-network on Imagenette (entry point; one GPU run, ~11 minutes).

``python offline_tools/train_supernet.py --help`` (or ``python -m offline_tools.train_supernet``);
the code is :mod:`offline_tools.training`, the recipe ``docs/training.md``. Run as a script, the
time budget counts from this file's first line, before torch is imported.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

_STARTED = time.monotonic()  # run as a script, the time budget counts from here (before importing torch)
_AS_SCRIPT = __name__ == "__main__"

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from offline_tools.training import cli  # noqa: E402 - after the clock started and the path is set

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``train_supernet [options]``; the budget counts from the script's start (in-process: this call)."""
    return cli.main(argv, started=_STARTED if _AS_SCRIPT else None)


if __name__ == "__main__":
    sys.exit(main())
