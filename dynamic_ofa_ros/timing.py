"""Small shared helpers: latency percentiles, device naming, atomic file writes, checksums.

Percentiles use linear interpolation between closest ranks (NumPy's default
``method="linear"``), so ``percentile([1, 2, 3, 4], 50) == 2.5``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:  # torch only where a device is named: the runtime path stays torch-free
    import torch

__all__ = [
    "Stopwatch",
    "atomic_write_bytes",
    "atomic_write_text",
    "cpu_name",
    "device_kind",
    "device_name",
    "finite_json",
    "json_default",
    "percentile",
    "sha256_bytes",
    "sha256_file",
    "summarize",
    "write_json",
]


def percentile(values: Sequence[float] | Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` with linear interpolation; NaN when empty."""
    data = sorted(float(v) for v in values)
    if not data:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} must be within 0..100")
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    frac = pos - lo
    return data[lo] + (data[hi] - data[lo]) * frac


def summarize(values: Sequence[float]) -> dict[str, float]:
    """``{"p50", "p95", "p99", "mean", "min", "max", "n"}`` of ``values`` (NaN entries when empty)."""
    data = [float(v) for v in values]
    if not data:
        nan = math.nan
        return {"p50": nan, "p95": nan, "p99": nan, "mean": nan, "min": nan, "max": nan, "n": 0.0}
    return {
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "mean": sum(data) / len(data),
        "min": min(data),
        "max": max(data),
        "n": float(len(data)),
    }


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.ms`` (wall time by ``time.perf_counter``)."""

    def __init__(self) -> None:
        self._start = 0.0
        self.ms = 0.0

    def __enter__(self) -> Self:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = (time.perf_counter() - self._start) * 1000.0


def cpu_name() -> str:
    """CPU model and the cores this process may use, e.g. ``"AMD EPYC 7B13 (2 cores)"``."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if not model:
        import platform

        model = platform.processor() or platform.machine() or "unknown CPU"
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return f"{model} ({cores} cores)"


def device_kind(device: str | torch.device) -> str:
    """``"cpu"`` or ``"cuda"`` for a device string such as ``"cuda:0"``."""
    return str(device).split(":", maxsplit=1)[0] if isinstance(device, str) else device.type


def device_name(device: str | torch.device) -> str:
    """Human-readable name of ``device``: the CPU model + cores, or the CUDA device name."""
    if device_kind(device) == "cpu":
        return cpu_name()
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA (not available)"
        return str(torch.cuda.get_device_name(dev))
    return cpu_name()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def json_default(obj: object) -> object:
    """``json.dumps(default=...)`` helper for NumPy scalars and paths.

    Raises:
        TypeError: ``obj`` is neither a scalar with ``.item()`` nor a path (as ``json`` expects).
    """
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def finite_json(obj: object) -> object:
    """``obj`` with NaN/infinite floats as ``None`` (JSON has no NaN), tuples as lists.

    NumPy scalars are unwrapped (and checked like floats).
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0:
        return finite_json(obj.item())
    return obj


#: A JSON list of numbers (and nulls) spread over several lines by ``json.dumps(indent=...)``.
_NUMBER_LIST = re.compile(r"\[\s+([-0-9.eE+,\snul]+?)\s+\]")


def write_json(
    path: str | os.PathLike[str], obj: object, *, indent: int = 1, one_line_numbers: bool = False
) -> str:
    """Write ``obj`` as JSON to ``path`` atomically; returns the text.

    Non-finite floats become ``null`` (:func:`finite_json`); NumPy scalars and paths are
    converted (:func:`json_default`). ``one_line_numbers`` puts every list of numbers on one
    line (long timelines stay small and readable).
    """
    text = json.dumps(finite_json(obj), indent=indent, allow_nan=False, default=json_default)
    if one_line_numbers:
        text = _NUMBER_LIST.sub(
            lambda m: "[" + ",".join(part.strip() for part in m.group(1).split(",")) + "]", text
        )
    atomic_write_text(path, text + "\n")
    return text + "\n"
