"""Execution backends: how a level's sub-network runs once the engine has materialised it.

``torch`` runs the extracted module eagerly on the CPU (or as CUDA graphs on a GPU, the
engine's own path). ``openvino`` and ``onnxruntime`` run the same sub-network, with its
calibrated BN statistics, exported once to ONNX (:mod:`.export`) and compiled at start-up
with static shapes, a latency hint, the table's thread count and an explicit precision
(``f32``; never the runtime's default, which changes with the CPU: OpenVINO picks bf16 on
CPUs with AMX). The ONNX files are cached on disk (:mod:`.cache`), so a warm start compiles
without PyTorch touching the model.

A backend is a module with two functions (see :data:`REGISTRY`):

* ``compile_level(onnx_path, options) -> CompiledLevel``;
* ``version() -> str``;
* ``precision_problem(precision) -> str | None``: why this machine cannot run ``precision``
  (``None`` when it can; e.g. bf16 needs a CPU with AVX-512 BF16 or AMX).

A new runtime (e.g. TensorRT for ``cuda``) is one more module and one :class:`BackendSpec`;
the engine, the manager and the node do not change. Switching levels stays a reference swap:
everything is compiled before the first frame.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, cast, get_args

import numpy as np

from dynamic_ofa_ros.errors import ModelSourceError

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "REGISTRY",
    "Backend",
    "BackendFallbackWarning",
    "BackendSpec",
    "CompileOptions",
    "CompiledLevel",
    "CompiledLevelBase",
    "Precision",
    "backend_version",
    "check_precision",
    "choose_backend",
    "compiled_backend",
    "installed",
    "resolve_backend",
]

#: What a user may ask for: ``auto`` = the table's backend (see :func:`resolve_backend`).
Backend = Literal["auto", "openvino", "onnxruntime", "torch"]
#: Concrete backends, in the order ``auto`` prefers them when the table names none.
BACKENDS: tuple[str, ...] = ("openvino", "onnxruntime", "torch")
#: Inference precisions a compiled level can be built in (explicit, never a runtime default):
#: ``bf16`` only where the backend and the CPU support it (:func:`check_precision`).
Precision = Literal["f32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


class BackendFallbackWarning(RuntimeWarning):
    """``auto`` could not run the table's backend (not installed) and runs another one."""


@dataclass(frozen=True, kw_only=True)
class CompileOptions:
    """How a compiled level is built: threads (intra-op, 1 = sequential) and precision."""

    threads: int
    precision: Precision = "f32"


class CompiledLevel(Protocol):
    """One level compiled by a backend: a (1, 3, r, r) float32 input -> class probabilities.

    Implementations are thread-safe (concurrent calls serialise or run independently) and
    allocate nothing per call beyond the returned array.
    """

    @property
    def backend(self) -> str:
        """The backend's name (``"openvino"``, ``"onnxruntime"``, ...)."""

    @property
    def version(self) -> str:
        """The runtime's version."""

    @property
    def precision(self) -> str:
        """The inference precision it was compiled for."""

    @property
    def threads(self) -> int:
        """Intra-op threads."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Probabilities, shape ``(n_classes,)`` float32, for one C-contiguous (1, 3, r, r) input."""


class CompiledLevelBase:
    """The bookkeeping every :class:`CompiledLevel` shares: backend, version, precision, threads."""

    backend: str = ""

    def __init__(self, *, version: str, precision: str, threads: int) -> None:
        self._version = version
        self._precision = precision
        self._threads = int(threads)

    @property
    def version(self) -> str:
        """The runtime's version."""
        return self._version

    @property
    def precision(self) -> str:
        """The inference precision it was compiled for."""
        return self._precision

    @property
    def threads(self) -> int:
        """Intra-op threads (as the runtime reports them where it does)."""
        return self._threads


@dataclass(frozen=True)
class BackendSpec:
    """A backend: where its code is, which Python module and distribution it needs, where it runs."""

    name: str
    module: str  # the dynamic_ofa_ros module with compile_level(), version(), precision_problem()
    runtime_module: str  # the third-party module it imports
    distribution: str  # the pip distribution (for messages and versions)
    devices: tuple[str, ...]


REGISTRY: dict[str, BackendSpec] = {
    "openvino": BackendSpec(
        name="openvino",
        module="dynamic_ofa_ros.backends.openvino",
        runtime_module="openvino",
        distribution="openvino",
        devices=("cpu",),
    ),
    "onnxruntime": BackendSpec(
        name="onnxruntime",
        module="dynamic_ofa_ros.backends.onnxruntime",
        runtime_module="onnxruntime",
        distribution="onnxruntime",
        devices=("cpu",),
    ),
}


def installed(backend: str) -> bool:
    """Whether ``backend``'s runtime can be imported here (``torch`` always can)."""
    if backend == "torch":
        return True
    spec = REGISTRY.get(backend)
    return spec is not None and importlib.util.find_spec(spec.runtime_module) is not None


def backend_version(backend: str) -> str:
    """The installed runtime's version, e.g. ``"2026.4.1"`` (``torch``: torch's)."""
    distribution = "torch" if backend == "torch" else REGISTRY[backend].distribution
    return importlib.metadata.version(distribution)


def compiled_backend(backend: str) -> Callable[[str, CompileOptions], CompiledLevel]:
    """``compile_level(onnx_path, options)`` of a compiled backend (imports its runtime)."""
    spec = REGISTRY.get(backend)
    if spec is None:
        raise ModelSourceError(
            f"backend {backend!r} is not a compiled backend; use one of {sorted(REGISTRY)}"
        )
    module = importlib.import_module(spec.module)
    return cast(Callable[[str, CompileOptions], CompiledLevel], module.compile_level)


def check_precision(backend: str, precision: str) -> None:
    """Raise :class:`ModelSourceError` unless ``backend`` can run ``precision`` on this machine.

    ``f32`` runs everywhere. ``bf16`` needs a backend that computes in it (OpenVINO's CPU
    plugin) on a CPU that has it (AVX-512 BF16 or AMX, which the plugin reports as ``BF16``);
    elsewhere the message names the fix instead of silently running f32.
    """
    if precision not in PRECISIONS:
        raise ModelSourceError(f"precision {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    if precision == "f32":
        return
    if backend not in REGISTRY:
        raise ModelSourceError(
            f"backend {backend!r} runs f32 only, not {precision}; use backend 'openvino' on a CPU "
            "with AVX-512 BF16 or AMX, or precision f32"
        )
    module = importlib.import_module(REGISTRY[backend].module)
    problem = cast(Callable[[str], "str | None"], module.precision_problem)(precision)
    if problem is not None:
        raise ModelSourceError(f"backend {backend!r} cannot run {precision} here: {problem}")


def _check_name(backend: str) -> None:
    if backend not in ("auto", *BACKENDS):
        raise ModelSourceError(f"backend {backend!r} is unknown; use one of auto, {', '.join(BACKENDS)}")


def _not_installed(backend: str) -> str:
    return f"backend {backend!r} is not installed (pip install {REGISTRY[backend].distribution})"


def choose_backend(
    requested: str, *, table_backend: str | None = None, device: str = "cpu"
) -> tuple[str, str]:
    """:func:`resolve_backend` without the warning: ``(backend, why it falls back or "")``."""
    _check_name(requested)
    kind = device.split(":", 1)[0]
    if requested == "auto":
        if kind != "cpu":
            return "torch", ""
        wanted = table_backend if table_backend in BACKENDS else None
        if wanted is not None and installed(wanted):
            return wanted, ""
        fallback = next(b for b in BACKENDS if installed(b))
        if wanted is None:
            return fallback, ""
        return fallback, (
            f"the level table was profiled with backend {wanted!r}, which is not installed here "
            f"(pip install {REGISTRY[wanted].distribution}); running {fallback!r} instead: its "
            "latencies differ from the table's, so let the manager measure them (mode reactive)"
        )
    if requested != "torch":
        if kind not in REGISTRY[requested].devices:
            raise ModelSourceError(
                f"backend {requested!r} runs on {', '.join(REGISTRY[requested].devices)}, not on "
                f"{device!r}; use backend 'torch' (CUDA graphs) or 'auto' there"
            )
        if not installed(requested):
            raise ModelSourceError(_not_installed(requested) + "; or use backend 'auto'")
    return requested, ""


def resolve_backend(requested: str, *, table_backend: str | None = None, device: str = "cpu") -> str:
    """The concrete backend to run, for a request and the backend a level table was profiled in.

    * ``auto`` on the CPU: ``table_backend`` when given, else the first installed of
      :data:`BACKENDS` (openvino, onnxruntime, torch). When that backend is not installed,
      the next installed one runs and a :class:`BackendFallbackWarning` says so.
    * a concrete name: that backend; :class:`ModelSourceError` when it is not installed
      (naming the pip package) or cannot run on ``device``.
    * on CUDA, ``auto`` is ``torch`` (CUDA graphs); no compiled backend runs there yet.

    Whether ``requested`` may differ from ``table_backend`` is the caller's decision (the
    engine refuses it unless asked not to check).
    """
    backend, fallback = choose_backend(requested, table_backend=table_backend, device=device)
    if fallback:
        warnings.warn(fallback, BackendFallbackWarning, stacklevel=2)
    return backend
