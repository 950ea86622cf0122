"""Timing in a compiled backend (OpenVINO, ONNX Runtime): operators and networks as the runtime runs them.

The runtime runs a level as one ONNX graph compiled by :mod:`dynamic_ofa_ros.backends`
(:func:`~dynamic_ofa_ros.backends.compiled_backend` with
:class:`~dynamic_ofa_ros.backends.CompileOptions`: the table's threads, explicit precision).
Profiling in that backend compiles every *operator* the same way -- its module exported to
ONNX with a static input shape, compiled with the same options -- and validation compiles
whole *sub-networks* with :func:`~dynamic_ofa_ros.backends.export.export_onnx`, the runtime's
own export of a level. Both are timed by :class:`CompiledRunner` (batch 1, a static random
input, one call of the compiled model per sample).

**Operator boundaries.** Inside a compiled network the activations stay in the runtime's
internal layout from one operator to the next. A standalone operator with a plain NCHW input
and output pays two layout conversions that the network does not: OpenVINO 2026.4 on a 2-core
AMD EPYC (AVX2) ran a stage-1 block at 128 px in 0.145 ms of convolutions plus 0.16 + 0.44 ms
of reorders (NCHW <-> NHWC; planes of 64 x 64 floats alias in the cache), and the same block
costs 0.05-0.14 ms inside a chain of five. The ``channels_last`` operator layout therefore feeds
every operator but the stem (whose input is the network's NCHW image) a channels-last input
(OpenVINO folds the transpose into its input reorder: no copy) and averages a spatial output
over H x W (a reduction that reads the activation in the runtime's layout, instead of
converting it back). ONNX Runtime predicts whole networks better with plain NCHW operators
(its blocked-layout conversions at a graph's edges are cheap), so the layout is chosen per
backend (:func:`default_operator_layout`) and recorded in the table.

**Call overhead.** Every compiled call costs a constant (request dispatch, the wrapper's input
copy, the output copy): 0.03-0.06 ms here, paid once by a network but once per operator by the
sum. An empty graph is timed in the same passes (:meth:`CompiledSettings.call_runner`) and its
time subtracted from every operator.
"""

from __future__ import annotations

import io
import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import cast

import numpy as np
import torch
from torch import nn

from dynamic_ofa_ros.backends import (
    PRECISIONS,
    REGISTRY,
    CompiledLevel,
    CompileOptions,
    Precision,
    choose_backend,
    compiled_backend,
)
from dynamic_ofa_ros.backends.export import INPUT_NAME, OPSET, export_onnx
from dynamic_ofa_ros.errors import ModelSourceError
from offline_tools.errors import LatencyTableError
from offline_tools.latency.geometry import MobileNetV3Geometry, OperatorSpec
from offline_tools.latency.runners import Timed, build_operator, timed_calls

__all__ = [
    "OPERATOR_LAYOUTS",
    "CompiledRunner",
    "CompiledSettings",
    "check_compiled_backend",
    "compiled_workdir",
    "default_operator_layout",
    "export_operator",
]

OPERATOR_LAYOUTS: tuple[str, ...] = ("nchw", "channels_last")
_DEFAULT_LAYOUT = {"openvino": "channels_last", "onnxruntime": "nchw"}
_OUTPUT_NAME = "output"


def default_operator_layout(backend: str) -> str:
    """How ``backend``'s operators are fed and read when profiled (see the module docstring)."""
    return _DEFAULT_LAYOUT.get(backend, "nchw")


def check_compiled_backend(backend: str, device: str, precision: str) -> None:
    """Raise :class:`LatencyTableError` unless ``backend`` is a compiled backend that runs here."""
    if backend not in REGISTRY:
        raise LatencyTableError(
            f"backend {backend!r} is not a compiled backend ({', '.join(sorted(REGISTRY))})"
        )
    if precision not in PRECISIONS:
        raise LatencyTableError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    try:
        choose_backend(backend, device=device)
    except ModelSourceError as exc:
        raise LatencyTableError(str(exc)) from exc


class _OperatorGraph(nn.Module):
    """An operator with a channels-last input (but the stem's) and a spatially averaged output."""

    def __init__(self, operator: nn.Module, *, nchw_input: bool, pool_output: bool) -> None:
        super().__init__()
        self.operator = operator
        self.nchw_input = nchw_input
        self.pool_output = pool_output  # static: decided from the operator's shapes, not traced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.operator(x if self.nchw_input else x.permute(0, 3, 1, 2))
        return y.mean(dim=(2, 3)) if self.pool_output else y.flatten(1)


class _EmptyCall(nn.Module):
    """The cheapest graph a backend still has to run: what one call costs beyond its work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


def _onnx_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    """``module`` (eval, CPU) exported with the runtime's opset for the static input ``example``."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter announces its deprecation on every call
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category=category)
        with torch.no_grad():
            torch.onnx.export(
                module.to("cpu").eval(),
                (example,),
                buffer,  # type: ignore[arg-type]  # torch accepts a binary file object
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[_OUTPUT_NAME],
                do_constant_folding=True,
            )
    return buffer.getvalue()


def export_operator(
    spec: OperatorSpec, geometry: MobileNetV3Geometry, layout: str
) -> tuple[bytes, np.ndarray]:
    """The ONNX bytes of operator ``spec`` (random weights) in ``layout``, and a random input for it."""
    if layout not in OPERATOR_LAYOUTS:
        raise LatencyTableError(f"operator layout {layout!r} is not one of {', '.join(OPERATOR_LAYOUTS)}")
    module = build_operator(spec, geometry).eval()
    h, w, c = spec.input_shape
    if layout == "nchw":
        example = torch.randn(1, c, h, w)
        return _onnx_bytes(module, example), example.numpy().copy()
    stem = spec.kind == "Conv"
    spatial = len(spec.output_shape) == 3 and spec.output_shape[0] * spec.output_shape[1] > 1
    example = torch.randn(1, c, h, w) if stem else torch.randn(1, h, w, c)
    graph = _OperatorGraph(module, nchw_input=stem, pool_output=spatial)
    return _onnx_bytes(graph, example), example.numpy().copy()


class CompiledRunner:
    """One compiled graph with a static input, timed one call per sample.

    A sample is one call of the compiled model (:class:`~dynamic_ofa_ros.backends.CompiledLevel`),
    timed with ``perf_counter_ns`` (wall) and ``clock``'s CPU clock (``process_cpu``: every
    thread of the process, so work the runtime hands to a worker thread of its own is
    counted). ``n_preempted`` counts samples during which the calling thread was descheduled.
    """

    def __init__(self, compiled: CompiledLevel, x: np.ndarray, *, warmup: int, clock: str) -> None:
        self.compiled: CompiledLevel | None = compiled
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.clock = clock
        self.n_samples = 0
        self.n_preempted = 0
        self.warm(warmup)

    def _model(self) -> CompiledLevel:
        if self.compiled is None:
            raise RuntimeError("the runner was closed")
        return self.compiled

    def warm(self, n: int) -> None:
        """``n`` untimed calls."""
        model = self._model()
        for _ in range(max(0, n)):
            model(self.x)

    def sample(self, n: int) -> Timed:
        """``n`` timed calls in ms: ``(wall, cpu)``."""
        timed, preempted = timed_calls(self._model(), self.x, n, clock=self.clock)
        self.n_preempted += preempted
        self.n_samples += n
        return timed

    def close(self) -> None:
        """Drop the compiled model."""
        self.compiled = None


@contextmanager
def compiled_workdir() -> Iterator[Path]:
    """A temporary folder for the ONNX files (and compiled blobs) of one run, removed afterwards."""
    with TemporaryDirectory(prefix="dofa-latency-") as folder:
        yield Path(folder)


@dataclass
class CompiledSettings:
    """What every compiled runner of one profiling or measuring run shares."""

    backend: str
    precision: str
    threads: int
    warmup: int
    clock: str
    layout: str
    workdir: Path
    _ids: Iterator[int] = field(default_factory=itertools.count, repr=False)

    @property
    def options(self) -> CompileOptions:
        """The runtime's compile options: threads and explicit precision."""
        return CompileOptions(threads=self.threads, precision=cast(Precision, self.precision))

    def compile(self, onnx: bytes) -> CompiledLevel:
        """``onnx`` compiled by the backend, from a folder of its own.

        One folder per graph: a backend may keep artefacts beside the file (OpenVINO's compiled
        blob is named after the folder and the options, not after the model).
        """
        folder = self.workdir / f"{next(self._ids):05d}"
        folder.mkdir()
        path = folder / "model.onnx"
        path.write_bytes(onnx)
        return compiled_backend(self.backend)(str(path), self.options)

    def runner(self, onnx: bytes, x: np.ndarray) -> CompiledRunner:
        """A runner of the graph ``onnx`` on the input ``x``."""
        return CompiledRunner(self.compile(onnx), x, warmup=self.warmup, clock=self.clock)

    def operator_runner(self, spec: OperatorSpec, geometry: MobileNetV3Geometry) -> CompiledRunner:
        """A runner of operator ``spec`` standalone (random weights) in this run's layout."""
        onnx, x = export_operator(spec, geometry, self.layout)
        return self.runner(onnx, x)

    def network_runner(self, module: nn.Module, resolution: int) -> CompiledRunner:
        """A runner of a whole sub-network, exported as the runtime exports a level (+ softmax)."""
        x = torch.randn(1, 3, resolution, resolution).numpy()
        return self.runner(export_onnx(module.to("cpu").eval(), resolution), x)

    def call_runner(self) -> CompiledRunner:
        """A runner of an empty graph: the cost of one call (see the module docstring)."""
        example = torch.randn(1, 8)
        return self.runner(_onnx_bytes(_EmptyCall(), example), example.numpy().copy())
