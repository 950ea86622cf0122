"""LevelEngine: every level of a table materialised once; switching is a pointer swap.

At start-up each level's sub-network is extracted from the super-network
(``get_active_subnet``), its pre-calibrated BN statistics from the table are loaded,
and it is prepared in the device's best execution mode:

* **CPU, backend ``openvino`` / ``onnxruntime``** — the extracted module with its BN
  statistics exported to ONNX once (cached on disk, :mod:`dynamic_ofa_ros.backends.cache`)
  and compiled at start-up: static shapes, latency hint, ``threads`` intra-op threads,
  explicit float32 precision. A frame is preprocessed into a NumPy array
  (``preprocessing``: torch's uint8 kernel when torch is loaded, else the byte-identical
  NumPy resize of :mod:`dynamic_ofa_ros.resize`) and handed to the compiled level.
* **CPU, backend ``torch``** — the extracted module in eval mode, run eagerly under
  ``torch.inference_mode``; ``threads`` sets ``torch.set_num_threads`` (process-wide;
  default: the thread count the table was profiled with).
* **CUDA** — per level a captured CUDA graph of *preprocessing + model + softmax*:
  the uint8 image is copied into a pinned host buffer, uploaded into a static device
  buffer, resized/normalised on the GPU into the level's static input (the same
  :func:`~dynamic_ofa_ros.preprocess.to_input_tensor` operations), the network runs
  and the probabilities land in a static output. Graphs are captured per input image
  shape (for every level at once, so switching stays O(1)): at start-up for
  ``warmup_shapes`` and lazily for a new camera resolution (up to ``max_shapes``;
  further shapes run eager preprocessing + a model-only graph). fp16 and
  channels_last are used per level only where measured faster at warm-up (``half`` /
  ``channels_last`` = ``None``) and fp16 only when its probabilities stay within
  0.01 of fp32; ``True``/``False`` force them.

``backend="auto"`` runs the backend the table was profiled in (``profiling.backend``; a
table without one was profiled in PyTorch), falling back with a warning when that runtime is
not installed; another backend than the table's is refused (``check_backend``), because the
table's latencies would not describe it. On CUDA the backend is ``torch``.

``switch(level)`` validates the number and swaps one reference; it never takes the
inference lock, so it neither blocks nor is blocked by an in-flight inference. The
next ``infer`` call uses the new level.
"""

from __future__ import annotations

import copy
import gc
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dynamic_ofa_ros.backends import (
    BackendFallbackWarning,
    CompiledLevel,
    CompileOptions,
    choose_backend,
)
from dynamic_ofa_ros.backends.build import compile_table_level
from dynamic_ofa_ros.backends.cache import ArtefactCache
from dynamic_ofa_ros.backends.header import cpu_mismatch, table_backend
from dynamic_ofa_ros.bn import extract_subnet, load_bn_state
from dynamic_ofa_ros.errors import ImageError, LevelTableError, ModelSourceError, UnknownLevelError
from dynamic_ofa_ros.image_input import DEFAULT_MAX_PIXELS
from dynamic_ofa_ros.levels import Level, LevelTable, check_table_supernet
from dynamic_ofa_ros.preprocess import check_rgb, to_input_batch, to_input_tensor
from dynamic_ofa_ros.resize import to_input_array
from dynamic_ofa_ros.supernet import Supernet

__all__ = ["PREPROCESSING", "InferenceResult", "LevelEngine", "LevelRunner", "topk"]

#: How compiled levels preprocess a frame: ``auto`` = torch's uint8 kernel when torch is already
#: imported (3-4x faster on a 640x480 frame), else NumPy; both give the same bytes.
PREPROCESSING: tuple[str, ...] = ("auto", "numpy", "torch")

_FP16_PROB_TOLERANCE = 0.01


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
    """The ``k`` largest entries of ``probs`` as ``(index, value)``, highest first."""
    k = max(1, min(int(k), int(probs.shape[-1])))
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return [(int(i), float(probs[i])) for i in idx]


def _module_bytes(module: nn.Module | None) -> int:
    if module is None:
        return 0
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    total += sum(b.numel() * b.element_size() for b in module.buffers())
    return int(total)


@dataclass
class LevelRunner:
    """One materialised level: its module or compiled model and how it runs.

    ``mode`` is ``"eager"``, ``"cuda_graph"`` (``module`` set) or ``"compiled"`` (``compiled``
    set, ``module`` ``None``: the PyTorch module is not kept).
    """

    level: Level
    module: nn.Module | None
    device: torch.device
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
        """The inference precision: ``f32``, or ``f16`` for a CUDA level that runs in half."""
        if self.compiled is not None:
            return self.compiled.precision
        return "f16" if self.half else "f32"

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Model + softmax for a preprocessed float32 batch, in this runner's dtype/layout; float32 probs."""
        if self.module is None:
            raise RuntimeError(f"level {self.level.level} runs compiled ({self.backend}); use run_model()")
        if self.half:
            x = x.half()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.module(x)
        return torch.softmax(logits.float(), dim=1)


class LevelEngine:
    """All levels of ``table`` ready to run on ``device``; see the module docstring.

    Raises :class:`LevelTableError` when the table has no BN statistics, was built for
    another super-network, (with ``check_device``) for another device kind or (with
    ``check_backend``) for another backend than the one requested; :class:`ModelSourceError`
    when CUDA is requested but unavailable, or the backend is unknown, not installed or
    cannot run on the device. ``warnings`` lists what the caller should tell the user
    (a backend fallback, a table profiled on another CPU model).
    """

    def __init__(  # noqa: PLR0913 - keyword-only options, each documented in docs/runtime.md
        self,
        supernet: Supernet,
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
        self.device = _resolve_device(device)
        if self.device.type == "cpu" and half:
            raise ModelSourceError("half=True needs CUDA: fp16 inference on the CPU is slower, not faster")
        _check_table(table, supernet, self.device.type if check_device else None)
        self.table = table
        self.backend, self.warnings = self._choose_backend(backend, check_backend)
        if precision != "f32":
            raise ModelSourceError(f"precision {precision!r} is not supported; use 'f32'")
        self.preprocessing = _preprocessing(preprocessing)
        self._cache = ArtefactCache(cache_dir)
        self.supernet_sha256 = supernet.sha256
        self.meaningful_accuracy = supernet.meaningful_accuracy and table.meaningful_accuracy
        self.max_pixels = int(max_pixels)
        self.max_shapes = int(max_shapes)
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self._want_half = half
        self._want_channels_last = channels_last
        self._lock = threading.Lock()
        self._images: OrderedDict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._stream: torch.cuda.Stream | None = None
        self._host_out: torch.Tensor | None = None
        self.threads: int | None = None
        if self.device.type == "cpu":
            self.threads = _cpu_threads(threads, table)
        else:
            self._stream = _new_stream(self.device)
            if threads is not None:
                torch.set_num_threads(int(threads))
        self._compile_options = CompileOptions(threads=self.threads or 1, precision="f32")
        self._runners: dict[int, LevelRunner] = {}
        from tqdm import tqdm  # type: ignore[import-untyped]

        # static buffers must be normal tensors even if the caller is inside torch.inference_mode
        with torch.inference_mode(False):
            for lv in tqdm(table.levels, desc="materialising levels", unit="level", leave=False):
                self._runners[lv.level] = self._materialise(supernet, lv, warmup)
            outputs = [r.static_output for r in self._runners.values() if r.static_output is not None]
            if outputs:  # one pinned host buffer for the probabilities (every level has the same head)
                self._host_out = torch.empty(tuple(outputs[0].shape), dtype=torch.float32, pin_memory=True)
            for shape in warmup_shapes:
                with self._lock:
                    self._ensure_shape((int(shape[0]), int(shape[1])))
        first = initial_level if initial_level is not None else table.levels[0].level
        self._current: LevelRunner = self._runner(first)

    # ------------------------------------------------------------------------------------ set-up

    def _choose_backend(self, requested: str, check: bool) -> tuple[str, tuple[str, ...]]:
        """The backend to run and the warnings about it (fallback, another CPU model)."""
        where = self.table.path or "level table"
        recorded = table_backend(self.table.profiling)
        chosen, fallback = choose_backend(requested, table_backend=recorded, device=self.device.type)
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
        mismatch = cpu_mismatch(self.table.profiling) if self.device.type == "cpu" else None
        if mismatch:
            notes.append(
                f"level table {where}: {mismatch}; its latencies may not hold here (the manager "
                "measures the real ones in modes auto and reactive)"
            )
        return chosen, tuple(notes)

    def _materialise_compiled(self, supernet: Supernet, lv: Level, warmup: int) -> LevelRunner:
        built = compile_table_level(
            supernet, self.table, lv, backend=self.backend, options=self._compile_options, cache=self._cache
        )
        runner = LevelRunner(
            level=lv,
            module=None,
            device=self.device,
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

    def _materialise(self, supernet: Supernet, lv: Level, warmup: int) -> LevelRunner:
        if self.backend != "torch":
            return self._materialise_compiled(supernet, lv, warmup)
        assert self.table.bn is not None
        where = f"{self.table.path or 'level table'}: level {lv.level}"
        module = extract_subnet(supernet.net, lv.config)
        load_bn_state(module, self.table.bn[lv.level], where=where)
        module = module.to(self.device).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        if self.device.type == "cpu":
            runner = LevelRunner(
                level=lv,
                module=module,
                device=self.device,
                mode="eager",
                channels_last=bool(self._want_channels_last),
                backend_version=torch.__version__,
            )
            if runner.channels_last:
                runner.module = module.to(memory_format=torch.channels_last)
            runner.memory_bytes = _module_bytes(runner.module)
            x = torch.zeros(1, 3, runner.resolution, runner.resolution)
            with torch.inference_mode():
                for _ in range(max(0, warmup)):
                    runner.body(x)
            return runner
        return self._materialise_cuda(lv, module, warmup)

    def _materialise_cuda(self, lv: Level, module: nn.Module, warmup: int) -> LevelRunner:
        r = lv.config.resolution
        probe = torch.randn(
            1, 3, r, r, device=self.device, generator=torch.Generator(self.device).manual_seed(0)
        )
        if not self.cuda_graphs:
            runner = LevelRunner(
                level=lv, module=module, device=self.device, mode="eager", backend_version=torch.__version__
            )
            self._choose_variant_eager(runner, probe)
            runner.memory_bytes = _module_bytes(runner.module)
            return runner
        halves = [False, True] if self._want_half is None else [bool(self._want_half)]
        layouts = [False, True] if self._want_channels_last is None else [bool(self._want_channels_last)]
        reference: torch.Tensor | None = None
        best: LevelRunner | None = None
        best_ms = float("inf")
        for half in halves:
            for cl in layouts:
                variant = copy.deepcopy(module)
                if half:
                    variant = variant.half()
                if cl:
                    variant = variant.to(memory_format=torch.channels_last)
                cand = LevelRunner(
                    level=lv,
                    module=variant,
                    device=self.device,
                    mode="cuda_graph",
                    half=half,
                    backend_version=torch.__version__,
                )
                cand.channels_last = cl
                self._capture_model(cand, warmup)
                assert cand.static_input is not None and cand.static_output is not None
                assert cand.model_graph is not None
                cand.static_input.copy_(probe)
                cand.model_graph.replay()
                torch.cuda.synchronize(self.device)
                probs = cand.static_output.clone()
                if reference is None and not half:
                    reference = probs
                if (
                    half
                    and reference is not None
                    and float((probs - reference).abs().max()) > _FP16_PROB_TOLERANCE
                ):
                    continue  # fp16 changes the answer too much for this level
                ms = _time_replay(cand.model_graph, self.device)
                if len(halves) * len(layouts) == 1 or ms < best_ms:
                    best, best_ms = cand, ms
        assert best is not None
        best.memory_bytes = _module_bytes(best.module) + best.memory_bytes
        del cand, variant  # release the losing candidates' graphs and pools
        gc.collect()
        torch.cuda.empty_cache()
        return best

    def _choose_variant_eager(self, runner: LevelRunner, probe: torch.Tensor) -> None:
        runner.half = bool(self._want_half)
        runner.channels_last = bool(self._want_channels_last)
        assert runner.module is not None
        if runner.half:
            runner.module = runner.module.half()
        if runner.channels_last:
            runner.module = runner.module.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            runner.body(probe)

    def _capture(self, runner: LevelRunner, fn: Callable[[], None], warmup: int) -> torch.cuda.CUDAGraph:
        """Warm ``fn`` up on a side stream, then capture it into a CUDA graph in the runner's pool."""
        side = _new_stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        if runner.pool is None:
            runner.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.empty_cache()  # torch.cuda.graph() empties the cache too: measure from the same state
        before = torch.cuda.memory_reserved(self.device)
        with torch.no_grad(), torch.cuda.graph(graph, pool=runner.pool, capture_error_mode="thread_local"):
            fn()
        torch.cuda.synchronize(self.device)
        # the graph's private pool keeps its segments reserved: count their growth for this level
        runner.memory_bytes += max(0, torch.cuda.memory_reserved(self.device) - before)
        return graph

    def _capture_model(self, runner: LevelRunner, warmup: int) -> None:
        r = runner.resolution
        runner.static_input = torch.zeros(1, 3, r, r, device=self.device)
        runner.static_output = torch.zeros(1, self._n_classes(runner), device=self.device)
        static_in, static_out = runner.static_input, runner.static_output

        def model_only() -> None:
            static_out.copy_(runner.body(static_in))

        runner.model_graph = self._capture(runner, model_only, warmup)

    def _n_classes(self, runner: LevelRunner) -> int:
        with torch.no_grad():
            x = torch.zeros(1, 3, runner.resolution, runner.resolution, device=self.device)
            return int(runner.body(x).shape[1])

    def _ensure_shape(self, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Pinned host + device uint8 buffers for ``shape``, with a full graph per level (lock held)."""
        if shape in self._images:
            self._images.move_to_end(shape)
            return self._images[shape]
        if not self.cuda_graphs or len(self._images) >= self.max_shapes:
            return None
        h, w = shape
        host = torch.empty((h, w, 3), dtype=torch.uint8, pin_memory=True)
        dev = torch.zeros((h, w, 3), dtype=torch.uint8, device=self.device)
        for runner in self._runners.values():
            runner.graphs[shape] = self._capture(runner, self._full_pipeline(runner, dev), 2)
        self._images[shape] = (host, dev)
        return host, dev

    def _full_pipeline(self, runner: LevelRunner, image: torch.Tensor) -> Callable[[], None]:
        """The captured function: device uint8 ``image`` -> preprocessing -> model -> static output."""
        static_in, static_out = runner.static_input, runner.static_output
        assert static_in is not None and static_out is not None
        device = self.device

        def full() -> None:
            to_input_tensor(image, resolution=runner.resolution, device=device, out=static_in)
            static_out.copy_(runner.body(static_in))

        return full

    # ------------------------------------------------------------------------------------ public

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
        if self.device.type == "cpu":
            with torch.inference_mode():
                x = to_input_tensor(rgb, resolution=runner.resolution)
                probs = runner.body(x)[0].numpy()
            return InferenceResult(runner.level.level, probs, (time.perf_counter() - start) * 1000.0)
        with self._lock:
            return self._infer_cuda(runner, rgb, start)

    def _infer_cuda(
        self, runner: LevelRunner, rgb: np.ndarray | torch.Tensor, start: float
    ) -> InferenceResult:
        shape = (int(rgb.shape[0]), int(rgb.shape[1]))
        if shape not in self._images:
            with torch.inference_mode(False):
                self._ensure_shape(shape)  # one-off capture for a new camera resolution (not timed)
            start = time.perf_counter()
        buffers = self._images.get(shape)
        with torch.no_grad(), torch.cuda.stream(self._stream):
            if buffers is not None and shape in runner.graphs:
                host, dev = buffers
                if isinstance(rgb, torch.Tensor):
                    dev.copy_(rgb, non_blocking=True)
                else:
                    np.copyto(host.numpy(), rgb, casting="no")
                    dev.copy_(host, non_blocking=True)
                runner.graphs[shape].replay()
            elif runner.model_graph is not None:
                assert runner.static_input is not None
                to_input_tensor(
                    rgb, resolution=runner.resolution, device=self.device, out=runner.static_input
                )
                runner.model_graph.replay()
            else:
                probs_dev = runner.body(
                    to_input_tensor(rgb, resolution=runner.resolution, device=self.device)
                )
                probs = probs_dev[0].float().cpu().numpy()
                return InferenceResult(runner.level.level, probs, (time.perf_counter() - start) * 1000.0)
            assert runner.static_output is not None
            host_out = self._host_out
            assert host_out is not None and host_out.shape == runner.static_output.shape
            host_out.copy_(runner.static_output, non_blocking=True)
            assert self._stream is not None
            self._stream.synchronize()
            probs = host_out[0].numpy().copy()
        return InferenceResult(runner.level.level, probs, (time.perf_counter() - start) * 1000.0)

    def input_array(self, rgb: np.ndarray | torch.Tensor, resolution: int) -> np.ndarray:
        """The (1, 3, r, r) float32 model input of a compiled level (``preprocessing``; no checks)."""
        if self.preprocessing == "torch":
            with torch.inference_mode():  # a frame of the input size keeps its HWC strides: copy
                return np.ascontiguousarray(to_input_tensor(rgb, resolution=resolution).numpy())
        image = rgb.cpu().numpy() if isinstance(rgb, torch.Tensor) else rgb
        return to_input_array(image, resolution=resolution)

    def run_model(self, x: np.ndarray, *, level: int | None = None) -> np.ndarray:
        """Probabilities ``(n_classes,)`` of one preprocessed (1, 3, r, r) float32 input: the model alone."""
        runner = self._current if level is None else self._runner(level)
        if runner.compiled is not None:
            return runner.compiled(x)
        with torch.inference_mode():
            probs = runner.body(torch.from_numpy(x).to(self.device))
            return probs[0].float().cpu().numpy()

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
        with torch.inference_mode():
            x = to_input_batch(images, resolution=runner.resolution, device=self.device)
            probs = runner.body(x)
            return probs.float().cpu().numpy()

    def topk(self, probs: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
        """``[(class index, probability), ...]`` of the ``k`` most probable classes."""
        return topk(probs, k)


def _resolve_device(device: str | torch.device) -> torch.device:
    """``cpu`` or ``cuda:N`` (the current device for plain ``cuda``); ModelSourceError otherwise."""
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelSourceError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        index = resolved.index  # None for plain "cuda"
        return torch.device("cuda", torch.cuda.current_device() if index is None else int(index))
    if resolved.type != "cpu":
        raise ModelSourceError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    return resolved


def _check_table(table: LevelTable, supernet: Supernet, device_kind: str | None) -> None:
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
    return requested


def _cpu_threads(threads: int | None, table: LevelTable) -> int:
    """Set torch's threads: ``threads``, else the table's ``profiling.threads`` (CPU tables); return them."""
    wanted: object = threads
    if wanted is None and table.device.split(":")[0] == "cpu":
        wanted = table.profiling.get("threads")
    if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0:
        torch.set_num_threads(wanted)
    return torch.get_num_threads()


def _new_stream(device: torch.device) -> torch.cuda.Stream:
    factory: Any = torch.cuda.Stream  # its constructor is untyped
    stream: torch.cuda.Stream = factory(device)
    return stream


def _time_replay(graph: torch.cuda.CUDAGraph, device: torch.device, iterations: int = 20) -> float:
    """Median milliseconds of ``graph.replay()`` + synchronise."""
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return times[len(times) // 2]
