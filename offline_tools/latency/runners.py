"""Timing machinery shared by profiling and validation: runners, clocks, the CPU allocator.

A :class:`Runner` holds one module with a static input, prepared for timing in the engine's
execution mode (CPU eager, CUDA eager or CUDA graphs); a compiled backend's runner
(:class:`~offline_tools.latency.compiled.CompiledRunner`) has the same interface
(:class:`TimingRunner`). :func:`round_robin` times many runners in interleaved passes.
:func:`resolve_clock` picks the clock, :func:`stabilize_cpu_allocator` fixes glibc's allocator
state so that every process measures the same steady state.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import functools
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, Protocol, TypeVar

import torch
from torch import nn

from dynamic_ofa_ros.ofa_compat import layer_classes
from dynamic_ofa_ros.timing import device_kind, device_name
from offline_tools.errors import LatencyTableError
from offline_tools.latency.geometry import MobileNetV3Geometry, OperatorSpec

try:
    import resource

    _RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)
except ImportError:  # pragma: no cover - not on Unix
    _RUSAGE_THREAD = None

__all__ = [
    "CLOCKS",
    "MODES",
    "Mode",
    "ProgressBar",
    "Runner",
    "RunnerSettings",
    "Timed",
    "TimingRunner",
    "build_operator",
    "check_backend_mode",
    "check_counts",
    "check_device_mode",
    "clock_note",
    "environment",
    "preempted_fraction",
    "progress_bar",
    "release_runners",
    "resolve_clock",
    "round_robin",
    "split_count",
    "stabilize_cpu_allocator",
    "torch_threads",
    "tracks_preemption",
    "cpu_clock_ns",
    "involuntary_switches",
    "load_average",
]

Mode = Literal["eager", "cuda_graph", "compiled"]
MODES: tuple[str, ...] = ("eager", "cuda_graph", "compiled")
"""``eager``/``cuda_graph``: the torch backend; ``compiled``: OpenVINO or ONNX Runtime."""
CLOCKS: tuple[str, ...] = ("thread_cpu", "process_cpu", "wall")

Timed = tuple[list[float], list[float]]
"""Samples of one runner in ms: ``(wall, cpu)`` where ``cpu`` is the runner's CPU clock
(``thread_cpu`` or ``process_cpu``); on CUDA both are the CUDA-event times."""


class TimingRunner(Protocol):
    """What :func:`round_robin` times: a prepared module with a static input."""

    n_samples: int
    n_preempted: int

    def warm(self, n: int) -> None:
        """``n`` untimed runs."""

    def sample(self, n: int) -> Timed:
        """``n`` timed runs: ``(wall, cpu)`` in ms."""

    def close(self) -> None:
        """Release what the runner holds."""


class ProgressBar(Protocol):
    """What the timing loops use of a progress bar (tqdm's interface)."""

    def update(self, n: int = 1) -> object:
        """Advance by ``n`` steps."""

    def set_description(self, desc: str) -> None:
        """Show ``desc`` before the bar."""

    def close(self) -> None:
        """Remove the bar."""


def progress_bar(total: int, desc: str, enabled: bool) -> ProgressBar:
    """A tqdm bar on stderr, or a disabled one (whose methods do nothing) when not ``enabled``."""
    from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

    bar: ProgressBar = tqdm(
        total=total, desc=desc, unit="step", leave=False, file=sys.stderr, disable=not enabled
    )
    return bar


# --------------------------------------------------------------------------------------------
# Execution environment
# --------------------------------------------------------------------------------------------


def check_device_mode(device: str, mode: str) -> None:
    """Raise :class:`LatencyTableError` unless ``mode`` can run on ``device`` here."""
    if mode not in MODES:
        raise LatencyTableError(f"execution mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "compiled" and device != "cpu":
        raise LatencyTableError(
            f"the compiled backends (openvino, onnxruntime) run on the CPU, not on {device!r};"
            " use --backend torch there"
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise LatencyTableError(f"device {device!r} is not supported; use 'cpu' or 'cuda' / 'cuda:N'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LatencyTableError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if mode == "cuda_graph" and not device.startswith("cuda"):
        raise LatencyTableError("mode 'cuda_graph' needs a CUDA device; on a CPU use --mode eager")


def check_backend_mode(backend: str, mode: str) -> None:
    """Raise :class:`LatencyTableError` when ``mode`` is not how ``backend`` runs.

    The torch backend runs ``eager`` or ``cuda_graph``; a compiled backend (OpenVINO, ONNX
    Runtime) runs ``compiled``.
    """
    compiled = backend != "torch"
    if compiled and mode != "compiled":
        raise LatencyTableError(
            f"backend {backend!r} runs compiled models, not mode {mode!r}; leave --mode out"
        )
    if not compiled and mode == "compiled":
        raise LatencyTableError("mode 'compiled' needs --backend openvino or onnxruntime")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (``None``: leave torch's setting)."""
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise LatencyTableError(f"threads={threads} must be >= 1")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``None`` where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment(device: str, mode: str, threads: int | None) -> dict[str, object]:
    """What a table or report records about where it was measured (device, mode, versions, date)."""
    try:
        ofa_version = version("ofa")
    except PackageNotFoundError:  # pragma: no cover - ofa is a dependency
        ofa_version = "unknown"
    return {
        "device": device_kind(device),
        "device_name": device_name(device),
        "mode": mode,
        "threads": threads,
        "dtype": "float32",
        "batch": 1,
        "torch": str(torch.__version__),
        "ofa": ofa_version,
        "python": platform.python_version(),
        "host": platform.node(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------
# Operators and runners
# --------------------------------------------------------------------------------------------


class _Logits(nn.Module):
    """``x.view(batch, -1)`` followed by the classifier, as in ``MobileNetV3.forward``."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(x.view(x.size(0), -1))
        return out


def build_operator(spec: OperatorSpec, geometry: MobileNetV3Geometry) -> nn.Module:
    """The standalone module of ``spec``, built from OFA's layer classes as in an extracted sub-network."""
    ofa = layer_classes()
    ConvLayer, MBConvLayer, LinearLayer = ofa.ConvLayer, ofa.MBConvLayer, ofa.LinearLayer
    ResidualBlock, IdentityLayer = ofa.ResidualBlock, ofa.IdentityLayer

    c_in = spec.input_shape[-1]
    c_out = spec.output_shape[-1]
    layer: nn.Module
    if spec.kind == "Conv":
        layer = ConvLayer(c_in, c_out, kernel_size=3, stride=2, act_func="h_swish")
    elif spec.kind == "expanded_conv":
        expand_ratio = 1 if spec.expand == c_in else spec.expand / c_in
        conv = MBConvLayer(
            c_in,
            c_out,
            kernel_size=spec.kernel,
            stride=spec.stride,
            expand_ratio=expand_ratio,
            mid_channels=None if expand_ratio == 1 else spec.expand,
            act_func="h_swish" if spec.hs else "relu",
            use_se=bool(spec.se),
        )
        layer = ResidualBlock(conv, IdentityLayer(c_in, c_in) if spec.idskip else None)
    elif spec.kind == "Conv_1":
        layer = ConvLayer(c_in, c_out, kernel_size=1, act_func="h_swish")
    elif spec.kind == "AvgPool2D":
        layer = ofa.MyGlobalAvgPool2d(keep_dim=True)
    elif spec.kind == "Conv_2":
        layer = ConvLayer(c_in, c_out, kernel_size=1, bias=False, use_bn=False, act_func="h_swish")
    elif spec.kind == "Logits":
        layer = _Logits(LinearLayer(c_in, geometry.n_classes, dropout_rate=0.0))
    else:
        raise LatencyTableError(f"operator kind {spec.kind!r} cannot be profiled")
    return layer


def _input_shape(spec: OperatorSpec) -> tuple[int, int, int, int]:
    h, w, c = spec.input_shape
    return (1, c, h, w)


def involuntary_switches() -> int:
    """Involuntary context switches of the calling thread so far (0 where not available)."""
    if _RUSAGE_THREAD is None:
        return 0
    return int(resource.getrusage(_RUSAGE_THREAD).ru_nivcsw)


def tracks_preemption() -> bool:
    """Whether CPU samples can tell that the thread was descheduled (Linux ``RUSAGE_THREAD``)."""
    return _RUSAGE_THREAD is not None


_Arg = TypeVar("_Arg")


def timed_calls(call: Callable[[_Arg], object], arg: _Arg, n: int, *, clock: str) -> tuple[Timed, int]:
    """``n`` calls ``call(arg)``, each timed: ``((wall, cpu), preempted)``, times in ms.

    Wall time from ``perf_counter_ns``, CPU time from ``clock``'s clock (:func:`cpu_clock_ns`);
    ``preempted`` counts the calls during which the calling thread was descheduled (0 where
    that is not tracked, :func:`tracks_preemption`).
    """
    wall_clock, cpu_clock = time.perf_counter_ns, cpu_clock_ns(clock)
    switches = involuntary_switches
    wall: list[float] = []
    cpu: list[float] = []
    preempted = 0
    for _ in range(n):
        s0 = switches()
        w0, c0 = wall_clock(), cpu_clock()
        call(arg)
        c1, w1 = cpu_clock(), wall_clock()
        if switches() != s0:
            preempted += 1
        wall.append((w1 - w0) / 1e6)
        cpu.append((c1 - c0) / 1e6)
    return (wall, cpu), preempted


class Runner:
    """A module with a static input, prepared for timing in one execution mode.

    CPU: one call per sample under ``torch.inference_mode()``, timed with ``perf_counter_ns``
    (wall) and ``cpu_clock`` (``thread_cpu``: the thread's CPU time, ``process_cpu``: the
    process's).

    CUDA: after an eager warm-up on a side stream (as PyTorch requires before a capture),
    ``cuda_replays`` back-to-back calls of the module are captured into one CUDA graph
    (``mode="cuda_graph"``) — so, as inside a level's graph, no CPU launch gap separates one
    operator from the next — and a sample is one replay between two CUDA events, divided by
    ``cuda_replays``. In ``eager`` mode a sample is ``cuda_replays`` eager calls between events.
    Graphs may share one memory ``pool`` (:func:`torch.cuda.graph_pool_handle`): they never run
    concurrently and their outputs are never read, so sharing only saves memory.
    """

    def __init__(
        self,
        module: nn.Module,
        x: torch.Tensor,
        *,
        device: str,
        mode: str,
        warmup: int,
        cuda_replays: int,
        pool: Any = None,  # noqa: ANN401 - torch.cuda._POOL_HANDLE is private
        cpu_clock: str = "thread_cpu",
    ) -> None:
        self.module = module
        self.cpu_clock = cpu_clock
        self.x = x
        self.cuda = device.startswith("cuda")
        self.replays = max(1, cuda_replays)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.n_samples = 0
        self.n_preempted = 0
        """CPU samples during which the thread was involuntarily descheduled (Linux only)."""
        if not self.cuda:
            self.warm(warmup)
            return
        with torch.inference_mode():
            stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # unannotated in torch
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(max(3, warmup)):
                    module(x)
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
            if mode == "cuda_graph":
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, pool=pool):
                    for _ in range(self.replays):
                        module(x)
                torch.cuda.synchronize()
        self.warm(max(1, warmup // self.replays))

    def _run(self) -> None:
        """One sample's work: one call on CPU; ``cuda_replays`` calls (one graph replay) on CUDA."""
        if self.graph is not None:
            self.graph.replay()
        elif self.cuda:
            for _ in range(self.replays):
                self.module(self.x)
        else:
            self.module(self.x)

    def warm(self, n: int) -> None:
        """``n`` untimed samples' worth of runs."""
        if n <= 0:
            return
        with torch.inference_mode():
            for _ in range(n):
                self._run()
        if self.cuda:
            torch.cuda.synchronize()

    def sample(self, n: int) -> Timed:
        """``n`` timing samples in ms: ``(wall, thread_cpu)``; on CUDA both are the CUDA-event times."""
        if not self.cuda:
            return self._sample_cpu(n)
        events = []
        with torch.inference_mode():
            for _ in range(n):
                start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                start.record()
                self._run()
                end.record()
                events.append((start, end))
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) / self.replays for start, end in events]
        return times, times

    def _sample_cpu(self, n: int) -> Timed:
        with torch.inference_mode():
            timed, preempted = timed_calls(self.module, self.x, n, clock=self.cpu_clock)
        self.n_preempted += preempted
        self.n_samples += n
        return timed

    def close(self) -> None:
        """Release the captured graph."""
        self.graph = None


def preempted_fraction(runners: Sequence[TimingRunner]) -> float | None:
    """Fraction of the runners' CPU samples during which the thread was descheduled (None: unknown)."""
    total = sum(r.n_samples for r in runners)
    if total == 0 or _RUSAGE_THREAD is None:
        return None
    return round(sum(r.n_preempted for r in runners) / total, 4)


@dataclass(frozen=True)
class RunnerSettings:
    """What every :class:`Runner` of one profiling or measuring run shares (one graph pool)."""

    device: str
    mode: str
    warmup: int
    cuda_replays: int
    pool: Any = None  # torch.cuda.graph_pool_handle(); its type, torch.cuda._POOL_HANDLE, is private
    cpu_clock: str = "thread_cpu"

    @classmethod
    def create(
        cls, *, device: str, mode: str, warmup: int, cuda_replays: int, clock: str = "thread_cpu"
    ) -> RunnerSettings:
        """Settings with a fresh CUDA graph memory pool in ``cuda_graph`` mode.

        ``clock``: the one timing uses (:func:`resolve_clock`); ``process_cpu`` makes the CPU
        samples the process's CPU time, anything else the calling thread's.
        """
        pool = torch.cuda.graph_pool_handle() if mode == "cuda_graph" else None
        cpu_clock = "process_cpu" if clock == "process_cpu" else "thread_cpu"
        return cls(
            device=device, mode=mode, warmup=warmup, cuda_replays=cuda_replays, pool=pool, cpu_clock=cpu_clock
        )

    def runner(self, module: nn.Module, x: torch.Tensor) -> Runner:
        """A runner of ``module`` on input ``x`` (already on :attr:`device`)."""
        return Runner(
            module,
            x,
            device=self.device,
            mode=self.mode,
            warmup=self.warmup,
            cuda_replays=self.cuda_replays,
            pool=self.pool,
            cpu_clock=self.cpu_clock,
        )

    def operator_runner(self, spec: OperatorSpec, geometry: MobileNetV3Geometry) -> Runner:
        """A runner of operator ``spec`` standalone: random weights, eval mode, a random input."""
        module = build_operator(spec, geometry).to(self.device).eval()
        return self.runner(module, torch.randn(_input_shape(spec), device=self.device))


def release_runners(runners: list[TimingRunner], device: str) -> None:
    """Close and drop ``runners`` (the list is emptied), then return cached CUDA memory."""
    for runner in runners:
        runner.close()
    runners.clear()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Allocator, clocks, timing passes
# --------------------------------------------------------------------------------------------

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30


@functools.cache  # once per process: the settings are process-wide
def stabilize_cpu_allocator() -> str:
    """Make glibc malloc keep freed activation memory instead of returning it to the kernel.

    By default glibc serves large blocks (e.g. a 1.8 MB activation) with ``mmap`` and unmaps
    them on free, or trims the heap, so the next inference page-faults the memory back in:
    about 1,250 page faults and 2.6 of 3.9 ms for one stage-1 block at 160 px in a fresh
    process, none once the process has raised its dynamic threshold (which a process that has
    loaded the super-network usually has). Which state a process is in depends on its
    history, so profiling and measuring fix it explicitly: ``mallopt(M_MMAP_THRESHOLD, 32 MiB)``
    and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``, for the whole process, once. The engine can do the
    same for steady per-frame latency. Returns a description of the state (``"default"`` where
    ``mallopt`` is not available, e.g. not glibc).
    """
    state = "default"
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            mallopt = libc.mallopt
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and (
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
            ):
                state = (
                    f"glibc mallopt: mmap_threshold={MMAP_THRESHOLD_BYTES >> 20} MiB, trim_threshold=1 GiB"
                )
        except (OSError, AttributeError):
            pass
    return state


def cpu_clock_ns(clock: str) -> Callable[[], int]:
    """The nanosecond CPU clock of ``clock``: the process's for ``process_cpu``, else the thread's."""
    return time.process_time_ns if clock == "process_cpu" else time.thread_time_ns


def resolve_clock(device: str, threads: int | None, clock: str = "auto", *, backend: str = "torch") -> str:
    """The clock used for timing: ``"thread_cpu"``, ``"process_cpu"``, ``"wall"`` or ``"cuda_events"``.

    ``"auto"``: CUDA events on a GPU. On a CPU with one intra-op thread, a CPU clock, which equals
    the wall-clock latency on an otherwise idle core but is not inflated when other processes
    share the cores (it excludes time the work is descheduled): for the torch backend the
    calling thread's (``time.thread_time_ns``; eager torch with one thread computes on it), for
    a compiled backend the **process's** (``time.process_time_ns``): OpenVINO and ONNX Runtime
    may run a request on a worker thread of their own, which the caller's thread clock would
    not see (with one thread both ran on the caller here, but that is their choice, not a
    contract). With several threads, the wall clock: CPU time would add the threads up.
    """
    if device.startswith("cuda"):
        return "cuda_events"
    compiled = backend != "torch"
    if clock == "auto":
        if threads != 1:
            return "wall"
        return "process_cpu" if compiled else "thread_cpu"
    if clock not in CLOCKS:
        raise LatencyTableError(f"clock {clock!r} is not one of auto, {', '.join(CLOCKS)}")
    if clock != "wall" and threads != 1:
        raise LatencyTableError(
            f"clock {clock!r} measures the CPU time of one thread's work; use it with threads=1 or use 'wall'"
        )
    if clock == "thread_cpu" and compiled:
        raise LatencyTableError(
            f"clock 'thread_cpu' misses the work {backend!r} runs on its own worker threads;"
            " use 'process_cpu' (or 'auto') with a compiled backend"
        )
    return clock


_CLOCK_NOTES = {
    "thread_cpu": "CPU time of the calling thread per call (time.thread_time_ns): eager torch with one"
    " thread computes on it; excludes the time other processes hold the core",
    "process_cpu": "CPU time of the whole process per call (time.process_time_ns): counts work the"
    " backend runs on threads of its own, which the caller's thread clock would miss; one thread, so"
    " it equals the latency on an idle core and excludes the time other processes hold it",
    "wall": "wall-clock time per call (time.perf_counter_ns): with several threads CPU time would add"
    " them up; interleaved passes and the fastest-half mean keep bursts of load out",
    "cuda_events": "CUDA events around the work on the GPU",
}


def clock_note(clock: str) -> str:
    """Why ``clock`` measures the right thing (recorded beside it in tables and reports)."""
    return _CLOCK_NOTES.get(clock, clock)


def check_counts(warmup: int, iterations: int, rounds: int) -> None:
    """Reject counts the timing loop cannot honour (no samples, negative warm-up)."""
    if warmup < 0 or iterations < 1 or rounds < 1:
        raise LatencyTableError(
            f"warmup={warmup}, iterations={iterations}, rounds={rounds}: need >= 0, >= 1 and >= 1"
        )


def split_count(total: int, parts: int) -> list[int]:
    """``total`` split into at most ``parts`` near-equal positive shares (larger shares first)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def round_robin(
    runners: Sequence[TimingRunner],
    *,
    warm_each_pass: Sequence[bool],
    calls: Sequence[Sequence[int]],
    bar: ProgressBar,
    what: str,
) -> list[Timed]:
    """Time every runner in passes over all of them; returns ``(wall, cpu)`` per runner.

    ``calls[i][p]`` is the number of consecutive timed calls of runner ``i`` in pass ``p``.
    Interleaving makes slow drifts and bursts of load from other processes hit every runner
    alike instead of biasing whichever was being timed at the time.
    """
    out: list[Timed] = [([], []) for _ in runners]
    n_passes = max((len(c) for c in calls), default=0)
    for index in range(n_passes):
        bar.set_description(f"{what} pass {index + 1}/{n_passes}")
        for runner, warm, counts, (wall, cpu) in zip(runners, warm_each_pass, calls, out, strict=True):
            if index >= len(counts):
                continue
            if warm:
                runner.warm(1)
            w, c = runner.sample(counts[index])
            wall.extend(w)
            cpu.extend(c)
            bar.update(1)
    return out
