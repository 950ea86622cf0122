"""OpenVINO backend: a level's ONNX file compiled for the CPU plugin.

Compiled with ``PERFORMANCE_HINT=LATENCY`` (one stream), ``INFERENCE_NUM_THREADS`` = the
engine's thread count and an explicit ``INFERENCE_PRECISION_HINT`` (``f32``, or ``bf16`` where
the CPU plugin reports ``BF16`` among its ``OPTIMIZATION_CAPABILITIES``): the plugin's default
precision is bf16 on CPUs with AMX/avx512_bf16, which would make the same table run at another
precision on another machine. One infer request per level, guarded by a lock (a request is not
re-entrant), with its input bound once to a NumPy buffer that each call copies the frame into
(cheaper than wrapping every frame in a new tensor: ~60 us less per call measured on a 2-core
EPYC) and its output tensor kept.

**Compiled blobs.** Compiling an ONNX file takes 0.2-0.5 s per level; importing the plugin's
compiled blob about a third of that. The blob is specific to the OpenVINO version, the CPU
(model and ISA) and the properties, so it is stored beside the cache entry's ``model.onnx``
under a name derived from all of them (``openvino-<digest>.blob``), with a sidecar
``.json`` holding its size and SHA-256. A blob that is missing, does not match its sidecar
or that the plugin refuses is replaced by a fresh compile -- never trusted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from dynamic_ofa_ros.backends import CompiledLevelBase, CompileOptions, backend_version
from dynamic_ofa_ros.backends.header import cpu_isa, cpu_model
from dynamic_ofa_ros.timing import atomic_write_bytes, atomic_write_text

__all__ = ["OpenVINOLevel", "blob_path", "compile_level", "compile_properties", "precision_problem"]

_PRECISIONS = {"f32": "f32", "bf16": "bf16"}


@functools.cache
def _core() -> Any:  # noqa: ANN401 - openvino.Core has no type information
    import openvino  # type: ignore[import-untyped]

    return openvino.Core()


def precision_problem(precision: str) -> str | None:
    """Why the CPU plugin cannot compute in ``precision`` here (``None`` when it can)."""
    if precision == "f32":
        return None
    if precision not in _PRECISIONS:
        return f"OpenVINO's CPU plugin has no precision {precision!r}"
    capabilities = {str(c).upper() for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")}
    if precision.upper() in capabilities:
        return None
    return (
        f"this CPU ({cpu_model()}) offers {', '.join(sorted(capabilities))} to OpenVINO, not "
        f"{precision.upper()} (it needs AVX-512 BF16 or AMX); use precision f32 here"
    )


def compile_properties(options: CompileOptions) -> dict[str, object]:
    """The CPU plugin properties for ``options`` (also used by ``dofa-bench``'s stock run)."""
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": int(options.threads),
        "INFERENCE_PRECISION_HINT": _PRECISIONS[options.precision],
    }


def blob_path(model_path: str | Path, options: CompileOptions) -> Path:
    """Where the compiled blob of ``model_path`` for ``options`` on this CPU and OpenVINO lives."""
    identity = {
        "openvino": backend_version("openvino"),
        "cpu_model": cpu_model(),
        "isa": list(cpu_isa()),
        "properties": compile_properties(options),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:24]
    return Path(model_path).with_name(f"openvino-{digest}.blob")


def _verified_blob(path: Path) -> bytes | None:
    """The blob's bytes when its sidecar's size and SHA-256 match them, else ``None``."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        data = path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("bytes") != len(data):
        return None
    return data if meta.get("sha256") == hashlib.sha256(data).hexdigest() else None


def _compile(model_path: str, options: CompileOptions) -> Any:  # noqa: ANN401 - openvino.CompiledModel
    """Import the verified blob, else compile the ONNX file and store its blob."""
    properties = compile_properties(options)
    blob = blob_path(model_path, options)
    data = _verified_blob(blob)
    if data is not None:
        try:
            return _core().import_model(data, "CPU", properties)
        except RuntimeError:
            pass  # refused by the plugin: compile again below and replace the blob
    compiled = _core().compile_model(model_path, "CPU", properties)
    exported = compiled.export_model().getvalue()  # an io.BytesIO
    try:
        blob.with_suffix(".json").unlink(missing_ok=True)  # the old sidecar must not vouch for new bytes
        atomic_write_bytes(blob, exported)
        sidecar = {"bytes": len(exported), "sha256": hashlib.sha256(exported).hexdigest()}
        atomic_write_text(blob.with_suffix(".json"), json.dumps(sidecar) + "\n")
    except OSError:
        pass  # a read-only cache still runs, it just compiles at every start
    return compiled


class OpenVINOLevel(CompiledLevelBase):
    """One compiled level (see the module docstring)."""

    backend = "openvino"

    def __init__(self, model_path: str, options: CompileOptions) -> None:
        import openvino

        problem = precision_problem(options.precision)
        if problem is not None:
            raise RuntimeError(f"OpenVINO cannot compile {model_path} in {options.precision}: {problem}")
        self._compiled = _compile(model_path, options)
        actual = self._compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
        if actual != getattr(openvino.Type, _PRECISIONS[options.precision]):
            raise RuntimeError(f"OpenVINO compiled {model_path} in {actual}, not {options.precision}")
        self._request = self._compiled.create_infer_request()
        self._input = np.zeros(tuple(self._compiled.input(0).shape), dtype=np.float32)
        self._request.set_input_tensor(openvino.Tensor(self._input, shared_memory=True))
        self._output = self._request.get_output_tensor()
        self._lock = threading.Lock()
        super().__init__(
            version=backend_version("openvino"),
            precision=options.precision,
            threads=int(self._compiled.get_property("INFERENCE_NUM_THREADS")),
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(n_classes,)`` for one (1, 3, r, r) float32 input."""
        if x.shape != self._input.shape:
            raise ValueError(f"input of shape {x.shape}; this level takes {self._input.shape}")
        with self._lock:
            np.copyto(self._input, x)
            self._request.infer()
            return np.array(self._output.data[0], dtype=np.float32)


def compile_level(model_path: str, options: CompileOptions) -> OpenVINOLevel:
    """Compile ``model_path`` (ONNX) for the CPU plugin with ``options``."""
    return OpenVINOLevel(model_path, options)


def version() -> str:
    """OpenVINO's version."""
    return backend_version("openvino")
