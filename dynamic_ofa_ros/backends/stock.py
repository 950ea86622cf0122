"""The stock runtimes on a level's ONNX file, without our wrapper: the benchmark's reference.

``dofa-bench`` times these next to the engine to show what the wrapper costs: a plain
ONNX Runtime session (``intra_op_num_threads`` set, everything else default) and a plain
OpenVINO compiled model called as ``compiled(x)`` -- once with the same properties as the
engine (latency hint, threads, f32) and once with the plugin's default precision (bf16 on
CPUs with AMX or avx512_bf16; reported as the plugin states it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynamic_ofa_ros.backends import backend_version, installed

__all__ = ["StockRunner", "stock_runners"]


@dataclass(frozen=True)
class StockRunner:
    """One stock runtime ready to run: ``run(x)`` on a (1, 3, r, r) float32 input."""

    name: str  # "onnxruntime", "openvino" (f32) or "openvino_default" (the plugin's precision)
    version: str
    precision: str
    run: Callable[[np.ndarray], object]


def _onnxruntime(model: Path, threads: int) -> StockRunner:
    import onnxruntime  # type: ignore[import-untyped]

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> object:
        return session.run(None, {name: x})

    return StockRunner("onnxruntime", backend_version("onnxruntime"), "f32", run)


def _openvino(model: Path, threads: int, *, f32: bool) -> StockRunner:
    import openvino  # type: ignore[import-untyped]

    properties: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if f32:
        properties["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = openvino.Core().compile_model(str(model), "CPU", properties)
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())

    def run(x: np.ndarray) -> object:
        return compiled(x)

    name = "openvino" if f32 else "openvino_default"
    return StockRunner(name, backend_version("openvino"), precision, run)


def stock_runners(model: Path, threads: int) -> list[StockRunner]:
    """The installed stock runtimes compiled for ``model`` (ONNX) with ``threads`` threads."""
    runners: list[StockRunner] = []
    if installed("onnxruntime"):
        runners.append(_onnxruntime(model, threads))
    if installed("openvino"):
        runners.append(_openvino(model, threads, f32=True))
        runners.append(_openvino(model, threads, f32=False))
    return runners
