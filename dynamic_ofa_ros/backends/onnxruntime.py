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

from dynamic_ofa_ros.backends import CompiledLevelBase, CompileOptions, backend_version

__all__ = ["OnnxRuntimeLevel", "compile_level", "precision_problem", "session_options"]


def precision_problem(precision: str) -> str | None:
    """Why ONNX Runtime cannot run ``precision`` (its CPU provider computes f32 graphs in f32)."""
    if precision == "f32":
        return None
    return (
        f"ONNX Runtime's CPU execution provider has no {precision} inference for these models; "
        "use backend 'openvino' on a CPU with AVX-512 BF16 or AMX, or precision f32"
    )


def session_options(options: CompileOptions) -> Any:  # noqa: ANN401 - onnxruntime is untyped
    """The ``SessionOptions`` for ``options`` (also used by ``dofa-bench``'s stock run)."""
    import onnxruntime  # type: ignore[import-untyped]

    problem = precision_problem(options.precision)
    if problem is not None:
        raise ValueError(problem)
    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = int(options.threads)
    so.inter_op_num_threads = 1
    so.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16", "0")
    return so


class OnnxRuntimeLevel(CompiledLevelBase):
    """One level in an ONNX Runtime session (see the module docstring)."""

    backend = "onnxruntime"

    def __init__(self, model_path: str, options: CompileOptions) -> None:
        import onnxruntime

        self._session = onnxruntime.InferenceSession(
            model_path, session_options(options), providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._outputs = [self._session.get_outputs()[0].name]
        super().__init__(
            version=backend_version("onnxruntime"), precision=options.precision, threads=options.threads
        )

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
