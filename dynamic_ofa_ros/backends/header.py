"""What a level table records about how its latencies were measured, beyond the device kind.

The ``profiling`` header of a table profiled by a backend carries ``backend``,
``backend_version``, ``precision``, ``cpu_model`` and ``isa`` (the CPU features that change a
compiled model's speed: AVX2, AVX-512, VNNI, bf16, AMX). :func:`profiling_header` writes
them for this machine, :func:`check_profiling` validates them when a table is loaded, and
:func:`table_backend` reads the backend back (a table without one was profiled in PyTorch).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from dynamic_ofa_ros.backends import BACKENDS, PRECISIONS, backend_version

__all__ = [
    "ISA_FLAGS",
    "check_profiling",
    "cpu_isa",
    "cpu_model",
    "cpu_mismatch",
    "profiling_header",
    "table_backend",
]

#: /proc/cpuinfo flags that matter for compiled CNN inference, in the order they are reported.
ISA_FLAGS: tuple[str, ...] = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",  # aarch64 NEON
    "sve",
)


def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "model name" and not model:
                    model = value.strip()
                elif name in ("flags", "features") and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), e.g. ``"AMD EPYC 7B13"``; ``platform`` elsewhere."""
    model = _cpuinfo()[0]
    if not model:
        import platform

        model = platform.processor() or platform.machine() or "unknown CPU"
    return model


@functools.cache
def cpu_isa() -> tuple[str, ...]:
    """The :data:`ISA_FLAGS` this CPU has, e.g. ``("avx2", "fma", "avx512f", "avx512_bf16")``."""
    flags = _cpuinfo()[1]
    return tuple(flag for flag in ISA_FLAGS if flag in flags)


def profiling_header(backend: str, *, precision: str = "f32") -> dict[str, object]:
    """The backend fields of a table's ``profiling`` header, for this machine and runtime."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    return {
        "backend": backend,
        "backend_version": backend_version(backend),
        "precision": precision,
        "cpu_model": cpu_model(),
        "isa": list(cpu_isa()),
    }


def check_profiling(profiling: Mapping[str, object]) -> str | None:
    """``None`` when the backend fields of a ``profiling`` header are valid, else what is wrong.

    A header without ``backend`` is valid (an older table, profiled in PyTorch); with it,
    ``backend_version``, ``precision``, ``cpu_model`` (strings) and ``isa`` (a list of
    strings) must be there too.
    """
    if "backend" not in profiling:
        return None
    backend = profiling["backend"]
    if backend not in BACKENDS:
        return f"backend {backend!r} is not one of {', '.join(BACKENDS)}"
    if profiling.get("precision") not in PRECISIONS:
        return f"precision {profiling.get('precision')!r} is not one of {', '.join(PRECISIONS)}"
    for key in ("backend_version", "cpu_model"):
        value = profiling.get(key)
        if not isinstance(value, str) or not value:
            return f"{key} must be a non-empty string, got {value!r}"
    isa = profiling.get("isa")
    if not isinstance(isa, list) or not all(isinstance(flag, str) for flag in isa):
        return f"isa must be a list of CPU flag names, got {isa!r}"
    return None


def table_backend(profiling: Mapping[str, object]) -> str:
    """The backend a table was profiled in; ``"torch"`` for tables that do not say."""
    backend = profiling.get("backend")
    return backend if isinstance(backend, str) and backend in BACKENDS else "torch"


def cpu_mismatch(profiling: Mapping[str, object]) -> str | None:
    """How this CPU differs from the one a table was profiled on (``None``: same, or unknown)."""
    recorded = profiling.get("cpu_model")
    if not isinstance(recorded, str) or not recorded or recorded == cpu_model():
        return None
    text = f"profiled on {recorded!r}, running on {cpu_model()!r}"
    isa = profiling.get("isa")
    if isinstance(isa, list):
        here, there = set(cpu_isa()), {str(flag) for flag in isa}
        missing = [flag for flag in ISA_FLAGS if flag in there - here]
        extra = [flag for flag in ISA_FLAGS if flag in here - there]
        if missing:
            text += f"; this CPU lacks {', '.join(missing)}"
        if extra:
            text += f"; this CPU adds {', '.join(extra)}"
    return text
