"""ONNX Runtime backend: a level's ONNX file in a CPU execution-provider session.

``intra_op_num_threads`` = the engine's thread count, one inter-op thread, sequential
execution, all graph optimisations (constant folding, fusions, layout transforms for this
CPU). The CPU provider computes a float32 graph in float32 (no implicit reduced precision;
the arm64 bf16 fast-math option is set off explicitly). ``InferenceSession.run`` is
thread-safe.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dynamic_ofa_ros.backends import CompileOptions, backend_version

__all__ = ["OnnxRuntimeLevel", "compile_level", "session_options"]


def session_options(options: CompileOptions) -> Any:  # noqa: ANN401 - onnxruntime is untyped
    """The ``SessionOptions`` for ``options`` (also used by ``dofa-bench``'s stock run)."""
    import onnxruntime  # type: ignore[import-untyped]

    if options.precision != "f32":
        raise ValueError(f"onnxruntime runs f32 only, not {options.precision!r}")
    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = int(options.threads)
    so.inter_op_num_threads = 1
    so.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16", "0")
    return so


class OnnxRuntimeLevel:
    """One level in an ONNX Runtime session (see the module docstring)."""

    backend = "onnxruntime"

    def __init__(self, model_path: str, options: CompileOptions) -> None:
        import onnxruntime

        self._session = onnxruntime.InferenceSession(
            model_path, session_options(options), providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._outputs = [self._session.get_outputs()[0].name]
        self._threads = int(options.threads)
        self._precision: str = options.precision
        self._version = backend_version("onnxruntime")

    @property
    def version(self) -> str:
        """ONNX Runtime's version."""
        return self._version

    @property
    def precision(self) -> str:
        """The inference precision (f32)."""
        return self._precision

    @property
    def threads(self) -> int:
        """Intra-op threads."""
        return self._threads

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(n_classes,)`` for one (1, 3, r, r) float32 input."""
        probs = self._session.run(self._outputs, {self._input: x})[0]
        return np.asarray(probs[0], dtype=np.float32)


def compile_level(model_path: str, options: CompileOptions) -> OnnxRuntimeLevel:
    """A session for ``model_path`` (ONNX) with ``options``."""
    return OnnxRuntimeLevel(model_path, options)


def version() -> str:
    """ONNX Runtime's version."""
    return backend_version("onnxruntime")
