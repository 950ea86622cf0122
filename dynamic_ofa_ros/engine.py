"""LevelEngine: every level of a table materialised once; switching is a pointer swap.

At start-up each level is prepared in the device's best execution mode:

* **CPU, backend ``openvino`` / ``onnxruntime``** — the level's extracted sub-network with its
  BN statistics, exported to ONNX once (cached on disk, :mod:`dynamic_ofa_ros.backends.cache`)
  and compiled at start-up: static shapes, latency hint, ``threads`` intra-op threads,
  explicit precision. A frame is preprocessed into a NumPy array (``preprocessing``: torch's
  uint8 kernel when torch is loaded, else the byte-identical NumPy resize of
  :mod:`dynamic_ofa_ros.resize`) and handed to the compiled level. With every level in the
  cache the super-network's weights are never loaded (a
  :class:`~dynamic_ofa_ros.supernet.SupernetSource` is identified by checksum) and **torch is
  not imported**: this module and the table loader import it only when they need it.
* **CPU, backend ``torch``** — the extracted module in eval mode, run eagerly under
  ``torch.inference_mode``; ``threads`` sets ``torch.set_num_threads`` (process-wide;
  default: the thread count the table was profiled with).
* **CUDA** — per level a captured CUDA graph of *preprocessing + model + softmax*, per input
  image shape (see :mod:`dynamic_ofa_ros.engine_torch`, which holds every torch path).

``backend="auto"`` runs the backend the table was profiled in (``profiling.backend``; a
table without one was profiled in PyTorch), falling back with a warning when that runtime is
not installed; another backend than the table's is refused (``check_backend``), because the
table's latencies would not describe it. On CUDA the backend is ``torch``.

``switch(level)`` validates the number and swaps one reference; it never takes the
inference lock, so it neither blocks nor is blocked by an in-flight inference. The
next ``infer`` call uses the new level.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from dynamic_ofa_ros.backends import (
    BackendFallbackWarning,
    CompiledLevel,
    CompileOptions,
    Precision,
    check_precision,
    choose_backend,
)
from dynamic_ofa_ros.backends.build import compile_table_level
from dynamic_ofa_ros.backends.cache import ArtefactCache
from dynamic_ofa_ros.backends.header import cpu_mismatch, table_backend
from dynamic_ofa_ros.errors import ImageError, LevelTableError, ModelSourceError, UnknownLevelError
from dynamic_ofa_ros.image_input import DEFAULT_MAX_PIXELS
from dynamic_ofa_ros.levels import Level, LevelTable, check_table_supernet
from dynamic_ofa_ros.model_input import check_rgb
from dynamic_ofa_ros.resize import to_input_array
from dynamic_ofa_ros.supernet import Supernet, SupernetSource, as_source

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dynamic_ofa_ros.engine_torch import TorchLevels

__all__ = ["PREPROCESSING", "InferenceResult", "LevelEngine", "LevelRunner", "topk"]

#: How compiled levels preprocess a frame: ``auto`` = torch's uint8 kernel when torch is already
#: imported (3-4x faster on a 640x480 frame), else NumPy; both give the same bytes.
PREPROCESSING: tuple[str, ...] = ("auto", "numpy", "torch")


@dataclass(frozen=True)
class InferenceResult:
    """One classified frame: the level that ran, class probabilities, preprocessing+model time."""

    level: int
    probs: np.ndarray
    inference_ms: float

    def topk(self, k: int = 5) -> list[tuple[int, float]]:
        """``[(class index, probability), ...]`` of the ``k`` most probable classes."""
        return topk(self.probs, k)


def topk(probs: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """The ``k`` largest entries of ``probs`` as ``(index, value)``, highest first (ties: lower index first).

    A few NumPy calls and a sort of about ``k`` Python pairs (every entry tied with the k-th
    largest is a candidate, so ties resolve by index, not by the partition's arbitrary choice).
    """
    n = int(probs.shape[-1])
    k = max(1, min(int(k), n))
    kth = probs[np.argpartition(probs, n - k)[n - k]]
    idx = np.flatnonzero(probs >= kth)  # ascending indices
    if idx.size > 4 * k:  # many ties (e.g. a flat distribution): sort them in NumPy, stably
        idx = idx[np.argsort(-probs[idx], kind="stable")[:k]]
    pairs = zip(idx.tolist(), probs[idx].tolist(), strict=True)
    return sorted(pairs, key=lambda pair: (-pair[1], pair[0]))[:k]


@dataclass
class LevelRunner:
    """One materialised level: its module or compiled model and how it runs.

    ``mode`` is ``"eager"``, ``"cuda_graph"`` (``module`` set) or ``"compiled"`` (``compiled``
    set, ``module`` ``None``: the PyTorch module is not kept). ``device`` is ``"cpu"`` or
    ``"cuda:N"``. The torch fields are set by :mod:`dynamic_ofa_ros.engine_torch` only.
    """

    level: Level
    module: nn.Module | None
    device: str
    mode: str
    half: bool = False
    channels_last: bool = False
    memory_bytes: int = 0
    static_input: torch.Tensor | None = None
    static_output: torch.Tensor | None = None
    model_graph: torch.cuda.CUDAGraph | None = None  # static_input -> static_output
    graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = field(default_factory=dict)  # image shape -> graph
    pool: Any = None  # the graphs' memory pool (torch.cuda.graph_pool_handle())
    backend: str = "torch"
    backend_version: str = ""
    compiled: CompiledLevel | None = None
    onnx: Path | None = None  # the compiled level's ONNX file (cache entry)
    cache: str = ""  # how the ONNX file was obtained: hit, built, rebuilt: <why>

    @property
    def resolution(self) -> int:
        """The level's input size."""
        return self.level.config.resolution

    @property
    def precision(self) -> str:
        """The inference precision: the compiled level's, else ``f16`` (a CUDA level in half) or ``f32``."""
        if self.compiled is not None:
            return self.compiled.precision
        return "f16" if self.half else "f32"

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Model + softmax for a preprocessed float32 batch, in this runner's dtype/layout; float32 probs."""
        from dynamic_ofa_ros.engine_torch import runner_body

        return runner_body(self, x)


class LevelEngine:
    """All levels of ``table`` ready to run on ``device``; see the module docstring.

    ``supernet`` is a loaded :class:`~dynamic_ofa_ros.supernet.Supernet` or a
    :class:`~dynamic_ofa_ros.supernet.SupernetSource` (loaded only for backend ``torch`` or a
    level missing from the compiled-level cache).

    Raises :class:`LevelTableError` when the table has no BN statistics, was built for
    another super-network, (with ``check_device``) for another device kind or (with
    ``check_backend``) for another backend than the one requested; :class:`ModelSourceError`
    when CUDA is requested but unavailable, or the backend is unknown, not installed or
    cannot run on the device. ``warnings`` lists what the caller should tell the user
    (a backend fallback, a table profiled on another CPU model).
    """

    def __init__(  # noqa: PLR0913 - keyword-only options, each documented in docs/runtime.md
        self,
        supernet: Supernet | SupernetSource,
        table: LevelTable,
        *,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        cuda_graphs: bool = True,
        half: bool | None = None,
        channels_last: bool | None = None,
        warmup: int = 2,
        warmup_shapes: Sequence[tuple[int, int]] = (),
        max_shapes: int = 4,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        check_device: bool = True,
        initial_level: int | None = None,
        backend: str = "auto",
        precision: str = "f32",
        check_backend: bool = True,
        preprocessing: str = "auto",
        cache_dir: str | Path | None = None,
    ) -> None:
        self._device_name = _device_name(device)
        kind = self._device_name.split(":", 1)[0]
        if kind == "cpu" and half:
            raise ModelSourceError("half=True needs CUDA: fp16 inference on the CPU is slower, not faster")
        _check_table(table, supernet, kind if check_device else None)
        self.table = table
        self.backend, self.warnings = self._choose_backend(backend, check_backend, kind)
        check_precision(self.backend, precision)  # bf16 only where the backend and CPU have it
        self.preprocessing = _preprocessing(preprocessing)
        self._cache = ArtefactCache(cache_dir)
        self._source = as_source(supernet)
        self.supernet_sha256 = supernet.sha256
        self.meaningful_accuracy = supernet.meaningful_accuracy and table.meaningful_accuracy
        self.max_pixels = int(max_pixels)
        self.max_shapes = int(max_shapes)
        self.cuda_graphs = bool(cuda_graphs) and kind == "cuda"
        self._runners: dict[int, LevelRunner] = {}
        self._torch: TorchLevels | None = None
        self.threads: int | None = _cpu_threads(threads, table, self.backend) if kind == "cpu" else None
        if kind != "cpu" and threads is not None:
            _torch_threads(int(threads))
        self._compile_options = CompileOptions(
            threads=self.threads or 1, precision=cast(Precision, precision)
        )
        from tqdm import tqdm  # type: ignore[import-untyped]

        levels = tqdm(table.levels, desc="materialising levels", unit="level", leave=False)
        if self.backend == "torch":
            self._materialise_torch(levels, warmup, warmup_shapes, half=half, channels_last=channels_last)
        else:
            for lv in levels:
                self._runners[lv.level] = self._materialise_compiled(lv, warmup)
        first = initial_level if initial_level is not None else table.levels[0].level
        self._current: LevelRunner = self._runner(first)

    # ------------------------------------------------------------------------------------ set-up

    def _choose_backend(self, requested: str, check: bool, kind: str) -> tuple[str, tuple[str, ...]]:
        """The backend to run and the warnings about it (fallback, another CPU model)."""
        where = self.table.path or "level table"
        recorded = table_backend(self.table.profiling)
        chosen, fallback = choose_backend(requested, table_backend=recorded, device=kind)
        notes: list[str] = []
        if fallback:
            warnings.warn(fallback, BackendFallbackWarning, stacklevel=3)
            notes.append(fallback)
        elif check and requested != "auto" and chosen != recorded:
            raise LevelTableError(
                f"{where}: profiled with backend {recorded!r}, but backend {chosen!r} was requested: its "
                f"latencies would not describe {chosen!r}; use backend 'auto' (runs {recorded!r}) or "
                f"a table profiled with {chosen!r}"
            )
        mismatch = cpu_mismatch(self.table.profiling) if kind == "cpu" else None
        if mismatch:
            notes.append(
                f"level table {where}: {mismatch}; its latencies may not hold here (the manager "
                "measures the real ones in modes auto and reactive)"
            )
        return chosen, tuple(notes)

    def _materialise_compiled(self, lv: Level, warmup: int) -> LevelRunner:
        built = compile_table_level(
            self._source,
            self.table,
            lv,
            backend=self.backend,
            options=self._compile_options,
            cache=self._cache,
        )
        runner = LevelRunner(
            level=lv,
            module=None,
            device=self._device_name,
            mode="compiled",
            backend=self.backend,
            backend_version=built.compiled.version,
            compiled=built.compiled,
            onnx=built.artefact.model,
            cache=built.artefact.origin,
            memory_bytes=built.artefact.model.stat().st_size,
        )
        probe = np.zeros((1, 3, runner.resolution, runner.resolution), dtype=np.float32)
        for _ in range(max(1, warmup)):
            built.compiled(probe)
        return runner

    def _materialise_torch(
        self,
        levels: Sequence[Level],
        warmup: int,
        warmup_shapes: Sequence[tuple[int, int]],
        *,
        half: bool | None,
        channels_last: bool | None,
    ) -> None:
        """Backend torch: the super-network's weights loaded, every level extracted (engine_torch)."""
        from dynamic_ofa_ros.engine_torch import TorchLevels, resolve_device

        self._torch = TorchLevels(
            resolve_device(self._device_name),
            self._runners,
            cuda_graphs=self.cuda_graphs,
            half=half,
            channels_last=channels_last,
            max_shapes=self.max_shapes,
        )

        def add(runner: LevelRunner) -> None:
            self._runners[runner.level.level] = runner

        net = self._source.load().net
        self._torch.materialise_all(net, self.table, levels, warmup, warmup_shapes, add)

    def _torch_levels(self) -> TorchLevels:
        assert self._torch is not None, "a torch level in an engine without its torch half"
        return self._torch

    # ------------------------------------------------------------------------------------ public

    @property
    def device(self) -> torch.device:
        """The device as a ``torch.device`` (imports torch: for torch callers; see ``device_name``)."""
        import torch

        return torch.device(self._device_name)

    @property
    def device_name(self) -> str:
        """The device: ``"cpu"`` or ``"cuda:N"`` (no torch needed)."""
        return self._device_name

    @property
    def levels(self) -> list[Level]:
        """The table's levels, level 1 (fastest) first."""
        return list(self.table.levels)

    @property
    def current_level(self) -> int:
        """The level the next :meth:`infer` runs."""
        return self._current.level.level

    @property
    def memory_mb(self) -> dict[int, float]:
        """Per level: parameters + buffers, plus CUDA-graph pool memory on CUDA, in MiB."""
        return {n: r.memory_bytes / 2**20 for n, r in self._runners.items()}

    @property
    def execution(self) -> dict[int, dict[str, Any]]:
        """Per level, as chosen at start-up: mode, half, channels_last, resolution, backend, precision...

        ``mode`` is ``eager``, ``cuda_graph`` or ``compiled``; ``backend``, ``backend_version``
        and ``precision`` say what runs it; compiled levels add ``threads``, ``cache`` (``hit``,
        ``built`` or ``rebuilt: <why>``) and ``preprocessing``.
        """
        result: dict[int, dict[str, Any]] = {}
        for n, r in self._runners.items():
            info: dict[str, Any] = {
                "mode": r.mode,
                "half": r.half,
                "channels_last": r.channels_last,
                "resolution": r.resolution,
                "backend": r.backend,
                "backend_version": r.backend_version,
                "precision": r.precision,
            }
            if r.compiled is not None:
                info.update(threads=r.compiled.threads, cache=r.cache, preprocessing=self.preprocessing)
            result[n] = info
        return result

    def runner(self, level: int) -> LevelRunner:
        """The materialised level ``level`` (for benchmarks and evaluation)."""
        return self._runner(level)

    def _runner(self, level: int) -> LevelRunner:
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
            raise UnknownLevelError(f"level {level!r} is not an integer; pick one of {sorted(self._runners)}")
        runner = self._runners.get(int(level))
        if runner is None:
            raise UnknownLevelError(
                f"level {level} is not in the table (levels {min(self._runners)}..{max(self._runners)}); "
                "pick one of those"
            )
        return runner

    def switch(self, level: int) -> None:
        """Use ``level`` from the next frame on: validation + one reference swap (O(1), thread-safe)."""
        self._current = self._runner(level)

    def infer(self, rgb: np.ndarray | torch.Tensor, *, level: int | None = None) -> InferenceResult:
        """Classify one (H, W, 3) uint8 RGB image with ``level``, else the engine's current level.

        ``inference_ms`` covers validation, preprocessing, the model and the copy of the
        probabilities to the host (not a one-off CUDA-graph capture for a new image size).
        :class:`~dynamic_ofa_ros.classifier.DynamicClassifier` always passes ``level`` (its
        manager owns the current level); :meth:`switch` serves standalone use (benchmarks).
        """
        start = time.perf_counter()
        runner = self._current if level is None else self._runner(level)
        check_rgb(rgb, max_pixels=self.max_pixels)
        if runner.compiled is not None:
            probs = runner.compiled(self.input_array(rgb, runner.resolution))
            return InferenceResult(runner.level.level, probs, (time.perf_counter() - start) * 1000.0)
        return self._torch_levels().infer(runner, rgb, start)

    def input_array(self, rgb: np.ndarray | torch.Tensor, resolution: int) -> np.ndarray:
        """The (1, 3, r, r) float32 model input of a compiled level (``preprocessing``; no checks)."""
        if self.preprocessing == "torch":
            from dynamic_ofa_ros.engine_torch import torch_input_array

            return torch_input_array(rgb, resolution)
        image = rgb if isinstance(rgb, np.ndarray) else rgb.cpu().numpy()  # a tensor: torch is loaded
        return to_input_array(image, resolution=resolution)

    def run_model(self, x: np.ndarray, *, level: int | None = None) -> np.ndarray:
        """Probabilities ``(n_classes,)`` of one preprocessed (1, 3, r, r) float32 input: the model alone."""
        runner = self._current if level is None else self._runner(level)
        if runner.compiled is not None:
            return runner.compiled(x)
        return self._torch_levels().run_model(runner, x)

    def infer_batch(
        self, images: Sequence[np.ndarray] | np.ndarray, *, level: int | None = None
    ) -> np.ndarray:
        """Class probabilities (N, classes) of RGB uint8 images (evaluation); same preprocessing as infer.

        Eager PyTorch runs the batch at once; a compiled level (static batch 1) runs image by image.
        """
        runner = self._current if level is None else self._runner(level)
        if runner.compiled is not None:
            compiled = runner.compiled
            if len(images) == 0:
                raise ImageError("the batch is empty")
            for image in images:
                check_rgb(image, max_pixels=self.max_pixels)
            return np.stack([compiled(self.input_array(image, runner.resolution)) for image in images])
        return self._torch_levels().infer_batch(runner, images)

    def topk(self, probs: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
        """``[(class index, probability), ...]`` of the ``k`` most probable classes."""
        return topk(probs, k)


def _device_name(device: str | torch.device) -> str:
    """``"cpu"`` without torch; anything else resolved by torch (``cuda`` -> ``cuda:N``, errors)."""
    if isinstance(device, str) and device.strip().lower() == "cpu":
        return "cpu"
    from dynamic_ofa_ros.engine_torch import resolve_device

    return str(resolve_device(device))


def _check_table(table: LevelTable, supernet: Supernet | SupernetSource, device_kind: str | None) -> None:
    """BN statistics present, built for ``supernet``, and (unless ``None``) for ``device_kind``."""
    if table.bn is None:
        raise LevelTableError(
            f"{table.path or 'level table'}: has no BN statistics (a search family); "
            "calibrate it with dofa-levels calibrate first"
        )
    check_table_supernet(table, supernet)
    if device_kind is not None and table.device.split(":")[0] != device_kind:
        raise LevelTableError(
            f"{table.path or 'level table'}: profiled on {table.device!r} ({table.device_name}), engine "
            f"runs on {device_kind!r}: load config/levels/{device_kind}.json or build one there"
        )


def _preprocessing(requested: str) -> str:
    """``torch`` or ``numpy``: ``auto`` = torch's kernel when torch is already imported (same bytes)."""
    if requested not in PREPROCESSING:
        raise ModelSourceError(f"preprocessing {requested!r} is not one of {', '.join(PREPROCESSING)}")
    if requested == "auto":
        return "torch" if "torch" in sys.modules else "numpy"
    if requested == "torch" and importlib.util.find_spec("torch") is None:
        raise ModelSourceError(
            "preprocessing 'torch' needs PyTorch, which is not installed: install it "
            "(requirements.txt) or use preprocessing 'numpy' (the same bytes, slower on large frames)"
        )
    return requested


def _torch_threads(threads: int | None) -> int:
    from dynamic_ofa_ros.engine_torch import set_threads

    return set_threads(threads)


def _cpu_threads(threads: int | None, table: LevelTable, backend: str) -> int:
    """The CPU threads: ``threads``, else the table's ``profiling.threads`` (CPU tables).

    They are torch's too (``torch.set_num_threads``, process-wide) for backend torch or when torch
    is already imported; a compiled backend in a process without torch only passes them on.
    """
    wanted: object = threads
    if wanted is None and table.device.split(":")[0] == "cpu":
        wanted = table.profiling.get("threads")
    valid = wanted if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0 else None
    if backend == "torch" or "torch" in sys.modules:
        return _torch_threads(valid)
    return valid if valid is not None else len(os.sched_getaffinity(0))
