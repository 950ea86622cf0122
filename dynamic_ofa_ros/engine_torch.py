"""The PyTorch half of :class:`~dynamic_ofa_ros.engine.LevelEngine`: eager CPU levels and CUDA graphs.

:mod:`dynamic_ofa_ros.engine` imports this module only for backend ``torch`` (CPU eager or a
CUDA device) or for torch preprocessing of compiled levels, so a process that runs compiled
levels (OpenVINO, ONNX Runtime) never imports torch.

* **CPU, backend ``torch``** — the extracted module in eval mode, run eagerly under
  ``torch.inference_mode``.
* **CUDA** — per level a captured CUDA graph of *preprocessing + model + softmax*: the uint8
  image is copied into a pinned host buffer, uploaded into a static device buffer,
  resized/normalised on the GPU into the level's static input (the same
  :func:`~dynamic_ofa_ros.preprocess.to_input_tensor` operations), the network runs and the
  probabilities land in a static output. Graphs are captured per input image shape (for every
  level at once, so switching stays O(1)): at start-up for ``warmup_shapes`` and lazily for a new
  camera resolution (up to ``max_shapes``; further shapes run eager preprocessing + a model-only
  graph). fp16 and channels_last are used per level only where measured faster at warm-up
  (``half`` / ``channels_last`` = ``None``) and fp16 only when its probabilities stay within
  0.01 of fp32; ``True``/``False`` force them.
"""

from __future__ import annotations

import copy
import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dynamic_ofa_ros.bn import extract_subnet, load_bn_state
from dynamic_ofa_ros.engine import InferenceResult, LevelRunner
from dynamic_ofa_ros.errors import ModelSourceError
from dynamic_ofa_ros.levels import Level, LevelTable
from dynamic_ofa_ros.preprocess import to_input_batch, to_input_tensor

__all__ = ["TorchLevels", "module_bytes", "resolve_device", "runner_body", "set_threads", "torch_input_array"]

_FP16_PROB_TOLERANCE = 0.01


def resolve_device(device: str | torch.device) -> torch.device:
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


def set_threads(threads: int | None) -> int:
    """``torch.set_num_threads(threads)`` when given (process-wide); torch's thread count."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def module_bytes(module: nn.Module | None) -> int:
    """Parameters + buffers of ``module`` in bytes (0 for ``None``)."""
    if module is None:
        return 0
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    total += sum(b.numel() * b.element_size() for b in module.buffers())
    return int(total)


def runner_body(runner: LevelRunner, x: torch.Tensor) -> torch.Tensor:
    """Model + softmax of ``runner`` for a preprocessed float32 batch, in its dtype/layout; float32 probs."""
    if runner.module is None:
        raise RuntimeError(f"level {runner.level.level} runs compiled ({runner.backend}); use run_model()")
    if runner.half:
        x = x.half()
    if runner.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    logits = runner.module(x)
    return torch.softmax(logits.float(), dim=1)


def torch_input_array(rgb: np.ndarray | torch.Tensor, resolution: int) -> np.ndarray:
    """A compiled level's (1, 3, r, r) float32 input made by torch's uint8 kernel (same bytes as NumPy's)."""
    with torch.inference_mode():  # a frame of the input size keeps its HWC strides: copy
        return np.ascontiguousarray(to_input_tensor(rgb, resolution=resolution).numpy())


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


class TorchLevels:
    """Materialises and runs the torch levels of one engine (``runners`` is the engine's dict).

    Args:
        device: the resolved device (``cpu`` or ``cuda:N``).
        runners: the engine's level -> runner dict; every CUDA image shape is captured for all of them.
        cuda_graphs: capture CUDA graphs (CUDA only).
        half, channels_last: ``None`` = measure per level (CUDA), else forced.
        max_shapes: image shapes with captured full-pipeline graphs (CUDA).
    """

    def __init__(
        self,
        device: torch.device,
        runners: Mapping[int, LevelRunner],
        *,
        cuda_graphs: bool,
        half: bool | None,
        channels_last: bool | None,
        max_shapes: int,
    ) -> None:
        self.device = device
        self.runners = runners
        self.cuda_graphs = bool(cuda_graphs) and device.type == "cuda"
        self.max_shapes = int(max_shapes)
        self._want_half = half
        self._want_channels_last = channels_last
        self._lock = threading.Lock()
        self._images: OrderedDict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._stream: torch.cuda.Stream | None = _new_stream(device) if device.type == "cuda" else None
        self._host_out: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------ set-up

    def materialise_all(
        self,
        supernet_net: nn.Module,
        table: LevelTable,
        levels: Sequence[Level],
        warmup: int,
        warmup_shapes: Sequence[tuple[int, int]],
        add: Callable[[LevelRunner], None],
    ) -> None:
        """Every level extracted, its BN loaded, prepared and handed to ``add``; then the shapes captured."""
        # static buffers must be normal tensors even if the caller is inside torch.inference_mode
        with torch.inference_mode(False):
            for lv in levels:
                add(self._materialise(supernet_net, table, lv, warmup))
            outputs = [r.static_output for r in self.runners.values() if r.static_output is not None]
            if outputs:  # one pinned host buffer for the probabilities (every level has the same head)
                self._host_out = torch.empty(tuple(outputs[0].shape), dtype=torch.float32, pin_memory=True)
            for shape in warmup_shapes:
                with self._lock:
                    self._ensure_shape((int(shape[0]), int(shape[1])))

    def _materialise(self, supernet_net: nn.Module, table: LevelTable, lv: Level, warmup: int) -> LevelRunner:
        where = f"{table.path or 'level table'}: level {lv.level}"
        module = extract_subnet(supernet_net, lv.config)
        load_bn_state(module, table.bn_arrays(lv.level), where=where)
        module = module.to(self.device).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        if self.device.type != "cpu":
            return self._materialise_cuda(lv, module, warmup)
        runner = LevelRunner(
            level=lv,
            module=module,
            device=str(self.device),
            mode="eager",
            channels_last=bool(self._want_channels_last),
            backend_version=torch.__version__,
        )
        if runner.channels_last:
            runner.module = module.to(memory_format=torch.channels_last)
        runner.memory_bytes = module_bytes(runner.module)
        x = torch.zeros(1, 3, runner.resolution, runner.resolution)
        with torch.inference_mode():
            for _ in range(max(0, warmup)):
                runner_body(runner, x)
        return runner

    def _materialise_cuda(self, lv: Level, module: nn.Module, warmup: int) -> LevelRunner:
        r = lv.config.resolution
        probe = torch.randn(
            1, 3, r, r, device=self.device, generator=torch.Generator(self.device).manual_seed(0)
        )
        if not self.cuda_graphs:
            runner = LevelRunner(
                level=lv,
                module=module,
                device=str(self.device),
                mode="eager",
                backend_version=torch.__version__,
            )
            self._choose_variant_eager(runner, probe)
            runner.memory_bytes = module_bytes(runner.module)
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
                    device=str(self.device),
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
        best.memory_bytes = module_bytes(best.module) + best.memory_bytes
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
            runner_body(runner, probe)

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
            static_out.copy_(runner_body(runner, static_in))

        runner.model_graph = self._capture(runner, model_only, warmup)

    def _n_classes(self, runner: LevelRunner) -> int:
        with torch.no_grad():
            x = torch.zeros(1, 3, runner.resolution, runner.resolution, device=self.device)
            return int(runner_body(runner, x).shape[1])

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
        for runner in self.runners.values():
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
            static_out.copy_(runner_body(runner, static_in))

        return full

    # ------------------------------------------------------------------------------------ running

    def infer(self, runner: LevelRunner, rgb: np.ndarray | torch.Tensor, start: float) -> InferenceResult:
        """Classify a checked (H, W, 3) uint8 frame with ``runner`` (CPU eager, or CUDA under the lock)."""
        if self.device.type == "cpu":
            with torch.inference_mode():
                x = to_input_tensor(rgb, resolution=runner.resolution)
                probs = runner_body(runner, x)[0].numpy()
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
                probs_dev = runner_body(
                    runner, to_input_tensor(rgb, resolution=runner.resolution, device=self.device)
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

    def run_model(self, runner: LevelRunner, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(n_classes,)`` of one preprocessed (1, 3, r, r) float32 input: the model alone."""
        with torch.inference_mode():
            probs = runner_body(runner, torch.from_numpy(x).to(self.device))
            return probs[0].float().cpu().numpy()

    def infer_batch(self, runner: LevelRunner, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) of RGB uint8 images, the batch at once (eager)."""
        with torch.inference_mode():
            x = to_input_batch(images, resolution=runner.resolution, device=self.device)
            probs = runner_body(runner, x)
            return probs.float().cpu().numpy()
