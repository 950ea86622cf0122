"""What an exported level is, without torch: tensor names, opset, format, the exporter's version.

:mod:`.export` (torch) writes the ONNX files; the compiled-level cache key
(:func:`~dynamic_ofa_ros.backends.build.level_cache_key`) names the exporter with
:func:`exporter_version`, which reads torch's version without importing torch, so a warm start
finds its artefacts in a process that never loads torch.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

__all__ = ["EXPORT_FORMAT", "INPUT_NAME", "OPSET", "OUTPUT_NAME", "exporter_version", "torch_version"]

INPUT_NAME = "input"
OUTPUT_NAME = "probs"
OPSET = 17
#: Bumped whenever the exported graph changes for the same module (part of the cache key).
EXPORT_FORMAT = 1
_VERSION_LINE = re.compile(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", re.MULTILINE)


def torch_version() -> str:
    """``torch.__version__`` (e.g. ``"2.14.1+cu130"``, local tag included) without importing torch.

    The installed package's ``torch/version.py`` is read when torch is not imported yet (the
    distribution's metadata lacks the local tag); ``"not installed"`` when there is no torch.
    """
    loaded = sys.modules.get("torch")
    if loaded is not None:
        return str(loaded.__version__)
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return "not installed"
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        text = ""
    match = _VERSION_LINE.search(text)
    if match is None:  # an unusual installation: ask torch itself
        import torch

        return str(torch.__version__)
    return match.group(1)


def exporter_version() -> str:
    """What produced the ONNX files (part of the cache key): torch, opset and our format."""
    return f"torch {torch_version()} opset {OPSET} format {EXPORT_FORMAT}"
