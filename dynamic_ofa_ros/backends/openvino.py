"""OpenVINO backend: a level's ONNX file compiled for the CPU plugin.

Compiled with ``PERFORMANCE_HINT=LATENCY`` (one stream), ``INFERENCE_NUM_THREADS`` = the
engine's thread count and ``INFERENCE_PRECISION_HINT=f32``: the plugin's default precision is
bf16 on CPUs with AMX/avx512_bf16, which would make the same table run at another precision
on another machine. One infer request per level, guarded by a lock (a request is not
re-entrant); the input array is shared with the request, not copied.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np

from dynamic_ofa_ros.backends import CompileOptions, backend_version

__all__ = ["OpenVINOLevel", "compile_level", "compile_properties"]

_PRECISIONS = {"f32": "f32"}


@functools.cache
def _core() -> Any:  # noqa: ANN401 - openvino.Core has no type information
    import openvino  # type: ignore[import-untyped]

    return openvino.Core()


def compile_properties(options: CompileOptions) -> dict[str, object]:
    """The CPU plugin properties for ``options`` (also used by ``dofa-bench``'s stock run)."""
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": int(options.threads),
        "INFERENCE_PRECISION_HINT": _PRECISIONS[options.precision],
    }


class OpenVINOLevel:
    """One compiled level (see the module docstring)."""

    backend = "openvino"

    def __init__(self, model_path: str, options: CompileOptions) -> None:
        import openvino

        self._tensor = openvino.Tensor
        self._compiled = _core().compile_model(model_path, "CPU", compile_properties(options))
        actual = self._compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
        if actual != getattr(openvino.Type, _PRECISIONS[options.precision]):
            raise RuntimeError(f"OpenVINO compiled {model_path} in {actual}, not {options.precision}")
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()
        self._threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        self._precision: str = options.precision
        self._version = backend_version("openvino")

    @property
    def version(self) -> str:
        """OpenVINO's version."""
        return self._version

    @property
    def precision(self) -> str:
        """The inference precision it was compiled for."""
        return self._precision

    @property
    def threads(self) -> int:
        """Inference threads, as the plugin reports them."""
        return self._threads

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(n_classes,)`` for one (1, 3, r, r) float32 input."""
        x = np.ascontiguousarray(x, dtype=np.float32)  # shared with the request: must be C-contiguous
        with self._lock:
            self._request.set_input_tensor(self._tensor(x, shared_memory=True))
            self._request.infer()
            return np.array(self._request.get_output_tensor().data[0], dtype=np.float32)


def compile_level(model_path: str, options: CompileOptions) -> OpenVINOLevel:
    """Compile ``model_path`` (ONNX) for the CPU plugin with ``options``."""
    return OpenVINOLevel(model_path, options)


def version() -> str:
    """OpenVINO's version."""
    return backend_version("openvino")
