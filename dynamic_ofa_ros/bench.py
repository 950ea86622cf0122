"""``dofa-bench``: engine latency per level, switch time, manager overhead and memory, as one JSON object.

Usage::

    dofa-bench --device cpu --table config/levels/cpu.json --model embedded --threads 1 --out bench.json
    dofa-bench --device cpu --table config/levels/cpu.json --threads 1 --backend openvino
    dofa-bench --device cuda --model random --allow-random --out docs/results/bench-h100.json

Without ``--table`` a small table of three sample sub-networks (``--configs``) is built
in-process (extraction, BN calibration on synthetic images, CPU profiling): enough to
measure the engine, not for accuracy. Every frame goes through
:class:`~dynamic_ofa_ros.classifier.DynamicClassifier`, the object the node drives (a level is
held with ``set_level``). Measured, all in the same process:

* per level ``infer_ms_p50/p95``: the engine time (``inference_ms``) of
  :meth:`DynamicClassifier.classify` on one ``--image`` sized uint8 RGB frame (preprocessing +
  model, output on the host);
* ``static_ms_p50/p95``: the same sub-network as a plain extracted eager module on an
  already preprocessed input (model only), interleaved with the engine runs;
* ``preprocess_ms_p50``: :func:`~dynamic_ofa_ros.preprocess.to_input_tensor` alone, and
  ``preprocess_numpy_ms_p50``: the same bytes by :func:`~dynamic_ofa_ros.resize.to_input_array`;
* ``model_ms_p50/p99``: the engine's level on an already preprocessed input
  (:meth:`~dynamic_ofa_ros.engine.LevelEngine.run_model`: the compiled model, or the eager module);
* ``frames``: ``inference_ms`` of a 224x224 and a 480x640 uint8 frame (:data:`FRAME_SIZES`);
  for a compiled level also ``infer_numpy_ms_p50``: the same frame resized by the NumPy kernel
  and run by the level (what the node runs when torch is not loaded);
* ``stock`` (CPU, ``--stock``): the stock runtimes on the level's ONNX file without our wrapper
  (:mod:`dynamic_ofa_ros.backends.stock`), and ``model_over_stock`` / ``infer_over_stock`` /
  ``infer_numpy_over_stock``: the engine against the fastest float32 one;
* on CUDA ``floor_ms_p50``: that sub-network alone captured as a CUDA graph
  (replay + synchronise, same dtype/layout as the engine's choice), and ``graph_ms_p50``:
  the engine's own captured graph for the frame size (preprocessing + model) replayed alone,
  so ``infer - graph`` is the host side (copies, synchronisation, Python);
* ``switch_ms_p50/p99``: from ``set_level()`` until the engine starts the new level's
  inference (the switch itself: manager bookkeeping + reference swap; the frame's own work is
  not in it); ``switch_call_us_p50``: the ``set_level()`` call alone;
  ``switch_first_frame_excess_ms_p50/p99``: the first inference at the new level minus that
  level's median inference in the same loop (the new level's weights start cold in the caches);
* ``manager_overhead_us_p50/p99``: one ``RuntimeManager.observe`` call;
* ``load_average`` of the machine at the start and the end (timings on a busy machine are slower);
* every per-level timer once per round, in a shuffled order;
* ``memory_mb`` per level and total (a compiled level: its ONNX file); on CUDA (or with
  ``--reference``) the reference
  design: switching by ``set_active_subnet`` + loading BN into the super-network, and
  by ``get_active_subnet`` extraction.

Progress goes to stderr (tqdm); the JSON goes to stdout and ``--out`` (atomic write).
Accuracy is never reported here.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.backends import BACKENDS, installed
from dynamic_ofa_ros.backends.build import export_table_level, level_cache_key
from dynamic_ofa_ros.backends.cache import ArtefactCache
from dynamic_ofa_ros.backends.header import cpu_isa, cpu_model
from dynamic_ofa_ros.backends.stock import StockRunner, stock_runners
from dynamic_ofa_ros.bench_report import format_side_by_side
from dynamic_ofa_ros.bn import extract_subnet, load_bn_into_supernet, load_bn_state
from dynamic_ofa_ros.classifier import DynamicClassifier
from dynamic_ofa_ros.engine import InferenceResult, LevelEngine
from dynamic_ofa_ros.errors import DofaError
from dynamic_ofa_ros.levels import LevelTable, load_level_table
from dynamic_ofa_ros.manager import LevelSpec, RuntimeManager
from dynamic_ofa_ros.preprocess import to_input_tensor
from dynamic_ofa_ros.resize import to_input_array
from dynamic_ofa_ros.supernet import Supernet, load_supernet
from dynamic_ofa_ros.table_builder import build_level_table
from dynamic_ofa_ros.timing import atomic_write_text, device_name, percentile

_T = TypeVar("_T")

__all__ = ["FRAME_SIZES", "SAMPLE_CONFIGS", "BenchOptions", "main", "run_bench", "sample_config"]

#: Frames every level is also classified from: a 224x224 thumbnail and a VGA camera frame (H, W).
FRAME_SIZES: tuple[tuple[int, int], ...] = ((224, 224), (480, 640))

#: The issue's sample sub-networks: small / medium / largest.
SAMPLE_CONFIGS: dict[str, SubnetConfig] = {
    "small": SubnetConfig(resolution=128, ks=(3,) * 20, e=(3,) * 20, d=(2,) * 5),
    "medium": SubnetConfig(resolution=176, ks=(5,) * 20, e=(4,) * 20, d=(3,) * 5),
    "large": SubnetConfig(resolution=224, ks=(7,) * 20, e=(6,) * 20, d=(4,) * 5),
}


def sample_config(name: str, resolutions: Sequence[int]) -> SubnetConfig:
    """``SAMPLE_CONFIGS[name]`` at a resolution the super-network was trained on.

    The samples' resolutions (128/176/224) are OFA ImageNet's; a model trained on another range
    (the embedded one: 96-160) gets its smallest / middle / largest resolution instead.
    """
    config = SAMPLE_CONFIGS[name]
    choices = sorted(int(r) for r in resolutions)
    if config.resolution in choices:
        return config
    position = {"small": 0, "medium": len(choices) // 2, "large": len(choices) - 1}[name]
    return dataclasses.replace(config, resolution=choices[position])


def _progress(iterable: Iterable[_T], desc: str, total: int | None = None) -> Iterator[_T]:
    from tqdm import tqdm  # type: ignore[import-untyped]

    bar: Iterator[_T] = tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False)
    return bar


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ms(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000.0


def _stats(values: Sequence[float], prefix: str, unit: str = "ms") -> dict[str, float]:
    return {
        f"{prefix}_{unit}_p50": round(percentile(values, 50), 4),
        f"{prefix}_{unit}_p95": round(percentile(values, 95), 4),
        f"{prefix}_{unit}_p99": round(percentile(values, 99), 4),
    }


def _static_module(
    supernet: Supernet, table: LevelTable, level: int, device: torch.device
) -> torch.nn.Module:
    assert table.bn is not None
    cfg = table.level(level).config
    module = extract_subnet(supernet.net, cfg)
    load_bn_state(module, table.bn[level], where=f"level {level}")
    return module.to(device).eval()


def _floor_graph(
    module: torch.nn.Module, runner_half: bool, runner_cl: bool, r: int, device: torch.device
) -> tuple[torch.cuda.CUDAGraph, tuple[torch.nn.Module, torch.Tensor]]:
    """``module`` alone as a CUDA graph (same dtype/layout as the engine's level); returns the graph."""
    mod = copy.deepcopy(module)
    if runner_half:
        mod = mod.half()
    if runner_cl:
        mod = mod.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, r, r, device=device)
    if runner_half:
        x = x.half()
    if runner_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    stream_factory: Any = torch.cuda.Stream
    side = stream_factory(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):
            mod(x)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
        mod(x)
    torch.cuda.synchronize(device)
    return graph, (mod, x)  # the caller keeps the module and static input alive with the graph


def _bench_specs(table: LevelTable) -> tuple[list[LevelSpec], str]:
    """The levels as the manager sees them, and a note on where their accuracies come from."""
    if all(lv.rank_accuracy is not None for lv in table.levels):
        return [LevelSpec.from_level(lv) for lv in table.levels], "levels from the table"
    # accuracy does not change the manager's cost; placeholders only for timing, never reported
    return (
        [
            LevelSpec(level=lv.level, latency_ms=lv.latency_ms, accuracy=50.0 + lv.level)
            for lv in table.levels
        ],
        "table has no accuracy (random weights): placeholder accuracies used for timing only",
    )


def _manager_overhead(table: LevelTable, samples: int) -> dict[str, Any]:
    specs, note = _bench_specs(table)
    manager = RuntimeManager(specs)
    budget = float(np.median([lv.latency_ms for lv in table.levels]))
    manager.set_constraints(latency_budget_ms=budget)
    rng = random.Random(0)
    trace = [budget * rng.uniform(0.6, 1.3) for _ in range(samples)]
    times = []
    for latency in _progress(trace, "manager"):
        start = time.perf_counter_ns()
        manager.observe(latency)
        times.append((time.perf_counter_ns() - start) / 1000.0)
    return {
        "manager_overhead_us_p50": round(percentile(times, 50), 3),
        "manager_overhead_us_p99": round(percentile(times, 99), 3),
        "manager_note": note,
    }


def _reference_design(
    supernet: Supernet, table: LevelTable, device: torch.device, switches: int, extractions: int
) -> dict[str, Any]:
    """The reference design's switch costs and the dynamic super-network's latency, same process."""
    assert table.bn is not None
    net = copy.deepcopy(supernet.net).to(device).eval()  # BN writes must not touch the engine's model
    numbers = table.numbers
    rng = random.Random(1)
    set_times: list[float] = []
    dynamic: dict[int, list[float]] = {n: [] for n in numbers}
    current = numbers[0]
    for _ in _progress(range(switches), "reference: set_active_subnet + BN"):
        target = rng.choice([n for n in numbers if n != current] or numbers)
        lv = table.level(target)
        assert table.bn is not None
        bn = table.bn[target]

        def switch(cfg: SubnetConfig = lv.config, bn: dict[str, torch.Tensor] = bn) -> None:
            net.set_active_subnet(**cfg.ofa_kwargs())  # type: ignore[operator]
            load_bn_into_supernet(net, cfg, bn)

        set_times.append(_ms(switch, device))
        x = torch.randn(1, 3, lv.resolution, lv.resolution, device=device)
        with torch.inference_mode():
            dynamic[target].append(_ms(functools.partial(net, x), device))
        current = target
    extract_times: list[float] = []
    for i in _progress(range(extractions), "reference: get_active_subnet"):
        n = numbers[i % len(numbers)]

        def extract(n: int = n) -> None:
            assert table.bn is not None
            module = extract_subnet(net, table.level(n).config)
            load_bn_state(module, table.bn[n], where=f"level {n}")
            module.to(device)

        extract_times.append(_ms(extract, device))
    return {
        "set_active_subnet_bn": {
            **_stats(set_times, "switch"),
            "samples": len(set_times),
            "dynamic_infer_ms_p50": {
                str(n): round(percentile(v, 50), 4) if v else None for n, v in dynamic.items()
            },
        },
        "get_active_subnet": {**_stats(extract_times, "switch"), "samples": len(extract_times)},
    }


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """What :func:`run_bench` measures and how often (the ``dofa-bench`` flags)."""

    device: str = "cpu"
    table_path: str | None = None
    model: str = "embedded"
    allow_random: bool = False
    threads: int | None = None
    iterations: int = 50
    warmup: int = 10
    switches: int = 200
    manager_samples: int = 5000
    image_size: tuple[int, int] = (480, 640)
    configs: Sequence[str] = ("small", "medium", "large")
    reference: bool | None = None
    reference_switches: int = 50
    reference_extractions: int = 6
    half: bool | None = None
    channels_last: bool | None = None
    backend: str = "auto"
    stock: bool | None = None  # None: on the CPU


def _load_table(opts: BenchOptions, supernet: Supernet) -> LevelTable:
    if opts.table_path is not None:
        return load_level_table(opts.table_path, supernet=supernet)
    unknown = [c for c in opts.configs if c not in SAMPLE_CONFIGS]
    if unknown:
        raise DofaError(f"unknown --configs {unknown}; choose from {sorted(SAMPLE_CONFIGS)}")
    samples = [sample_config(c, supernet.resolutions) for c in opts.configs]
    return build_level_table(supernet, samples, threads=opts.threads, warmup=2, iterations=5)


def _frame_key(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _level_onnx(engine: LevelEngine, supernet: Supernet, level: int) -> Path | None:
    """The level's ONNX file: the engine's (compiled levels), else exported into the cache."""
    runner = engine.runner(level)
    if runner.onnx is not None:
        return runner.onnx
    backend = next((b for b in BACKENDS if b != "torch" and installed(b)), None)
    if backend is None:
        return None
    table, lv = engine.table, engine.table.level(level)
    key = level_cache_key(supernet, table, lv, backend=backend, precision="f32")
    return ArtefactCache().get(key, lambda: export_table_level(supernet, table, lv)).model


def _interleaved(timers: dict[str, Callable[[], float]], opts: BenchOptions) -> dict[str, list[float]]:
    """Each timer once per round in a shuffled order, ``warmup`` untimed rounds first.

    All timers see the same load, and none always runs right after the same other one (a
    runtime that follows torch's large eager run finds its weights evicted from the caches).
    """
    times: dict[str, list[float]] = {name: [] for name in timers}
    order = list(timers)
    shuffle = random.Random(4).shuffle
    for i in range(opts.warmup + opts.iterations):
        shuffle(order)
        for name in order:
            ms = timers[name]()
            if i >= opts.warmup:
                times[name].append(ms)
    return times


def _level_timers(
    classifier: DynamicClassifier,
    static: torch.nn.Module,
    image: np.ndarray,
    level: int,
    stock: Sequence[StockRunner],
) -> dict[str, Callable[[], float]]:
    """What :func:`_measure_level` times, by name; each returns milliseconds."""
    engine = classifier.engine
    dev = engine.device
    resolution = engine.table.level(level).resolution
    x = to_input_tensor(image, resolution=resolution, device=dev)
    x_host = np.ascontiguousarray(x.cpu().numpy())
    timers: dict[str, Callable[[], float]] = {
        "infer": lambda: classifier.classify(image).inference_ms,
        "static": functools.partial(_ms, functools.partial(static, x), dev),
        "preprocess": functools.partial(
            _ms, functools.partial(to_input_tensor, image, resolution=resolution, device=dev), dev
        ),
        "model": functools.partial(_ms, functools.partial(engine.run_model, x_host, level=level), dev),
    }
    if dev.type == "cpu":
        timers["preprocess_numpy"] = functools.partial(
            _ms, functools.partial(to_input_array, image, resolution=resolution), dev
        )
    rng = np.random.default_rng(3)
    compiled = engine.runner(level).compiled is not None
    for size in FRAME_SIZES:
        frame = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
        timers[f"frame {_frame_key(size)}"] = functools.partial(
            lambda f: classifier.classify(f).inference_ms, frame
        )
        if compiled:  # what a node without torch runs: the NumPy resize, then the compiled level
            timers[f"frame numpy {_frame_key(size)}"] = functools.partial(
                _ms,
                functools.partial(
                    lambda f: engine.run_model(to_input_array(f, resolution=resolution), level=level), frame
                ),
                dev,
            )
    for runner in stock:
        timers[f"stock {runner.name}"] = functools.partial(_ms, functools.partial(runner.run, x_host), dev)
    return timers


def _p(values: Sequence[float], q: float) -> float:
    return round(percentile(values, q), 4)


def _stock_fields(
    times: dict[str, list[float]], stock: Sequence[StockRunner], model_p50: float
) -> dict[str, Any]:
    """``stock`` per runtime, and the engine's model and frames against the fastest f32 runtime."""
    out: dict[str, Any] = {
        "stock": {
            r.name: {
                "ms_p50": _p(times[f"stock {r.name}"], 50),
                "ms_p99": _p(times[f"stock {r.name}"], 99),
                "version": r.version,
                "precision": r.precision,
            }
            for r in stock
        }
    }
    f32 = [v["ms_p50"] for v in out["stock"].values() if v["precision"] == "f32"]
    if f32:
        best = min(f32)
        out["stock_best_f32_ms_p50"] = best
        out["model_over_stock"] = round(model_p50 / best, 4)
        out["infer_over_stock"] = {
            _frame_key(size): round(_p(times[f"frame {_frame_key(size)}"], 50) / best, 4)
            for size in FRAME_SIZES
        }
        numpy_keys = [_frame_key(size) for size in FRAME_SIZES if f"frame numpy {_frame_key(size)}" in times]
        if numpy_keys:
            out["infer_numpy_over_stock"] = {
                key: round(_p(times[f"frame numpy {key}"], 50) / best, 4) for key in numpy_keys
            }
    return out


def _measure_level(
    classifier: DynamicClassifier, supernet: Supernet, level: int, image: np.ndarray, opts: BenchOptions
) -> dict[str, Any]:
    """One level: engine (frames, model alone), plain eager module, stock runtimes; interleaved."""
    engine = classifier.engine
    table, dev = engine.table, engine.device
    lv = table.level(level)
    static = _static_module(supernet, table, level, dev)
    stock: list[StockRunner] = []
    if opts.stock if opts.stock is not None else dev.type == "cpu":
        onnx = _level_onnx(engine, supernet, level)
        stock = stock_runners(onnx, engine.threads or 1) if onnx is not None else []
    classifier.set_level(level)
    with torch.inference_mode():
        times = _interleaved(_level_timers(classifier, static, image, level, stock), opts)
    row: dict[str, Any] = {
        "level": level,
        "resolution": lv.resolution,
        "architecture": lv.config.key(),
        "table_latency_ms": lv.latency_ms,
        "infer_ms_p50": _p(times["infer"], 50),
        "infer_ms_p95": _p(times["infer"], 95),
        "infer_ms_p99": _p(times["infer"], 99),
        "static_ms_p50": _p(times["static"], 50),
        "static_ms_p95": _p(times["static"], 95),
        "static_ms_p99": _p(times["static"], 99),
        "preprocess_ms_p50": _p(times["preprocess"], 50),
        "model_ms_p50": _p(times["model"], 50),
        "model_ms_p99": _p(times["model"], 99),
        "frames": {
            _frame_key(size): {
                "infer_ms_p50": _p(times[f"frame {_frame_key(size)}"], 50),
                "infer_ms_p99": _p(times[f"frame {_frame_key(size)}"], 99),
            }
            for size in FRAME_SIZES
        },
        "memory_mb": round(engine.memory_mb[level], 3),
        "execution": engine.execution[level],
    }
    for size in FRAME_SIZES:
        if f"frame numpy {_frame_key(size)}" in times:
            row["frames"][_frame_key(size)]["infer_numpy_ms_p50"] = _p(
                times[f"frame numpy {_frame_key(size)}"], 50
            )
    if "preprocess_numpy" in times:
        row["preprocess_numpy_ms_p50"] = _p(times["preprocess_numpy"], 50)
    row["infer_over_static"] = round(row["infer_ms_p50"] / row["static_ms_p50"], 4)
    row["model_over_static"] = round(row["model_ms_p50"] / row["static_ms_p50"], 4)
    if stock:
        row.update(_stock_fields(times, stock, row["model_ms_p50"]))
    if dev.type == "cuda":
        row.update(_cuda_floor(engine, static, level, opts))
    return row


def _cuda_floor(
    engine: LevelEngine, static: torch.nn.Module, level: int, opts: BenchOptions
) -> dict[str, float]:
    """CUDA only: the sub-network alone as a graph (floor) and the engine's own captured graph."""
    dev, runner = engine.device, engine.runner(level)
    out: dict[str, float] = {}
    graph, keep = _floor_graph(static, runner.half, runner.channels_last, runner.resolution, dev)
    floor_t = [_ms(graph.replay, dev) for _ in range(opts.warmup + opts.iterations)][opts.warmup :]
    out["floor_ms_p50"] = round(percentile(floor_t, 50), 4)
    del graph, keep
    # The engine's own graph for this frame size (preprocessing + model, captured): splits
    # infer - floor into preprocessing kernels (graph - floor) and host work (infer - graph).
    full = runner.graphs.get(opts.image_size)
    if full is not None:
        graph_t = [_ms(full.replay, dev) for _ in range(opts.warmup + opts.iterations)][opts.warmup :]
        out["graph_ms_p50"] = round(percentile(graph_t, 50), 4)
    return out


def _measure_switching(classifier: DynamicClassifier, image: np.ndarray, switches: int) -> dict[str, Any]:
    """What a switch costs: ``set_level()`` -> the new level's inference starts; its first frame's excess.

    The engine's ``infer`` is wrapped (in this benchmark only) to note when it is entered, so
    the switch time excludes the frame's own work (preprocessing, model, top-k, the manager's
    bookkeeping of the frame); the first inference after a switch is compared with that
    level's median inference in the same loop (cold caches of the new level's weights).
    """
    engine = classifier.engine
    entered: list[float] = []
    infer = engine.infer

    def noting_infer(rgb: np.ndarray, *, level: int | None = None) -> InferenceResult:
        entered.append(time.perf_counter())
        return infer(rgb, level=level)

    numbers = classifier.table.numbers
    pick = random.Random(2)
    switch_t: list[float] = []
    first_ms: dict[int, list[float]] = {m: [] for m in numbers}
    steady_ms: dict[int, list[float]] = {m: [] for m in numbers}
    engine.infer = noting_infer  # type: ignore[method-assign,assignment]
    try:
        for _ in _progress(range(switches), "switches"):
            target = pick.choice([m for m in numbers if m != classifier.current_level] or numbers)
            entered.clear()
            start = time.perf_counter()
            classifier.set_level(target)
            res = classifier.classify(image)
            if res.level != target:
                raise DofaError(f"switch to level {target} ran level {res.level}")
            switch_t.append((entered[0] - start) * 1000.0)
            first_ms[target].append(res.inference_ms)
            steady_ms[target].append(classifier.classify(image).inference_ms)  # same level again
    finally:
        del engine.infer  # the instance attribute; the method is back
    excess = [first - percentile(steady_ms[m], 50) for m in numbers for first in first_ms[m] if steady_ms[m]]
    call_t: list[float] = []
    for _ in range(1000):
        start_ns = time.perf_counter_ns()
        classifier.set_level(pick.choice(numbers))
        call_t.append((time.perf_counter_ns() - start_ns) / 1000.0)
    return {
        "switch_ms_p50": round(percentile(switch_t, 50), 4),
        "switch_ms_p99": round(percentile(switch_t, 99), 4),
        "switch_samples": len(switch_t),
        "switch_call_us_p50": round(percentile(call_t, 50), 3),
        "switch_first_frame_excess_ms_p50": round(percentile(excess, 50), 4),
        "switch_first_frame_excess_ms_p99": round(percentile(excess, 99), 4),
    }


def run_bench(options: BenchOptions | None = None) -> dict[str, Any]:
    """Run the benchmark and return the JSON-ready result (see the module docstring)."""
    opts = options if options is not None else BenchOptions()
    load_before = _load_average()
    if opts.threads is not None:
        torch.set_num_threads(int(opts.threads))
    supernet = load_supernet(opts.model, device="cpu", allow_random=opts.allow_random)
    table = _load_table(opts, supernet)
    dev = torch.device(opts.device)
    if dev.type == "cuda":
        supernet.net.to(dev)
    started = time.perf_counter()
    engine = LevelEngine(
        supernet,
        table,
        device=dev,
        threads=opts.threads,
        half=opts.half,
        channels_last=opts.channels_last,
        warmup=3,
        warmup_shapes=[opts.image_size],
        check_device=False,  # a table's architectures may be benchmarked on another device kind
        backend=opts.backend,
        check_backend=False,  # ... and in another backend than the one it was profiled with
    )
    startup_s = time.perf_counter() - started
    dev = engine.device
    # Every frame below goes through the same object the node drives (a lock = a static level).
    classifier = DynamicClassifier(engine, levels=_bench_specs(table)[0])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (opts.image_size[0], opts.image_size[1], 3), dtype=np.uint8)
    per_level = [
        _measure_level(classifier, supernet, lv.level, image, opts)
        for lv in _progress(table.levels, "levels")
    ]
    memory = engine.memory_mb
    result: dict[str, Any] = {
        "tool": "dofa-bench",
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_name(dev),
        "device_kind": dev.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        **_backend_fields(engine),
        "startup_s": round(startup_s, 3),
        "model": {**supernet.identity()},
        "table": {
            "path": opts.table_path,
            "ad_hoc": opts.table_path is None,
            "device": table.device,
            "device_name": table.device_name,
            "levels": len(table.levels),
            "profiled_on_other_device_kind": table.device.split(":")[0] != dev.type,
            "backend": str(table.profiling.get("backend", "torch")),
        },
        "image": {"height": opts.image_size[0], "width": opts.image_size[1]},
        "iterations": opts.iterations,
        "warmup": opts.warmup,
        "levels": per_level,
    }
    result.update(_measure_switching(classifier, image, opts.switches))
    result.update(_manager_overhead(table, opts.manager_samples))
    result["memory_mb"] = {
        "per_level": {str(n): round(v, 3) for n, v in memory.items()},
        "total": round(sum(memory.values()), 3),
    }
    reference = opts.reference if opts.reference is not None else dev.type == "cuda"
    if reference:
        result["reference_design"] = _reference_design(
            supernet, table, dev, opts.reference_switches, opts.reference_extractions
        )
        result["reference_design"]["engine"] = {
            "switch_ms_p50": result["switch_ms_p50"],
            "switch_ms_p99": result["switch_ms_p99"],
        }
    result["targets"] = _targets(result, per_level, dev)
    result["load_average"] = {"start": load_before, "end": _load_average()}
    return result


def _load_average() -> list[float] | None:
    """The OS's 1/5/15-minute load averages: other processes on the cores make every timing slower."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _backend_fields(engine: LevelEngine) -> dict[str, Any]:
    """What ran the levels, on which CPU, with which libraries."""
    first = engine.execution[engine.table.levels[0].level]
    libraries = {}
    for name in ("numpy", "torch", "openvino", "onnxruntime", "onnx"):
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "backend": engine.backend,
        "backend_version": first["backend_version"],
        "precision": first["precision"],
        "preprocessing": engine.preprocessing if engine.backend != "torch" else "torch",
        "cpu_model": cpu_model(),
        "isa": list(cpu_isa()),
        "libraries": libraries,
        "warnings": list(engine.warnings),
    }


def _targets(result: dict[str, Any], per_level: list[dict[str, Any]], dev: torch.device) -> dict[str, bool]:
    limit = 1.1 if dev.type == "cpu" else 1.2
    baseline = "static_ms_p50" if dev.type == "cpu" else "floor_ms_p50"
    targets = {
        "switch_ms_p99_le_1ms": result["switch_ms_p99"] <= 1.0,
        "manager_overhead_le_20us": (result.get("manager_overhead_us_p50") or 1e9) <= 20.0,
        f"infer_le_{limit}x_{'static' if dev.type == 'cpu' else 'floor'}": all(
            row["infer_ms_p50"] <= limit * row[baseline] for row in per_level
        ),
    }
    if all("model_over_stock" in row for row in per_level):
        vga = _frame_key(FRAME_SIZES[-1])
        targets["model_le_1.1x_stock"] = all(row["model_over_stock"] <= 1.1 for row in per_level)
        targets[f"infer_{vga}_le_1.3x_stock"] = all(row["infer_over_stock"][vga] <= 1.3 for row in per_level)
        if all(vga in row.get("infer_numpy_over_stock", {}) for row in per_level):
            targets[f"infer_numpy_{vga}_le_1.3x_stock"] = all(
                row["infer_numpy_over_stock"][vga] <= 1.3 for row in per_level
            )
    return targets


def _image_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--image {text!r}: use HEIGHTxWIDTH, e.g. 480x640") from exc
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"--image {text!r}: sizes must be positive")
    return h, w


def _tristate(text: str) -> bool | None:
    value = text.lower()
    if value in ("auto", "none"):
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: use auto, on or off")


def build_parser() -> argparse.ArgumentParser:
    """The ``dofa-bench`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dofa-bench",
        description="Benchmark the level engine: per-level latency vs a static sub-network, switch time, "
        "manager overhead, memory. Prints one JSON object.",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument(
        "--table", default=None, help="level table JSON (default: build a 3-level table in-process)"
    )
    parser.add_argument("--model", default="embedded", help="embedded | ofa_zoo | random[:seed] | PATH")
    parser.add_argument("--allow-random", action="store_true", help="allow --model random (latency only)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU); default: torch's")
    parser.add_argument("--iterations", type=int, default=50, help="timed frames per level (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed frames per level first (default 10)")
    parser.add_argument("--switches", type=int, default=200, help="switches timed (default 200)")
    parser.add_argument("--manager-samples", type=int, default=5000, help="observe() calls timed")
    parser.add_argument("--image", type=_image_size, default=(480, 640), help="frame HEIGHTxWIDTH (480x640)")
    parser.add_argument(
        "--configs",
        default="small,medium,large",
        help="sample sub-networks for the in-process table: any of small,medium,large",
    )
    parser.add_argument(
        "--reference",
        type=_tristate,
        default=None,
        help="measure the reference design too: auto (CUDA only, default), on, off",
    )
    parser.add_argument("--reference-switches", type=int, default=50)
    parser.add_argument("--reference-extractions", type=int, default=6)
    parser.add_argument("--half", type=_tristate, default=None, help="CUDA fp16: auto (measure), on, off")
    parser.add_argument(
        "--channels-last", type=_tristate, default=None, help="CUDA channels_last: auto, on, off"
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=("auto", *BACKENDS),
        help="engine backend (default auto: the table's); here any backend may run any table",
    )
    parser.add_argument(
        "--stock",
        type=_tristate,
        default=None,
        help="also time the stock runtimes on each level's ONNX file: auto (CPU, default), on, off",
    )
    parser.add_argument("--out", default=None, help="also write the JSON here (atomically)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 2 on a DofaError, printed without a traceback)."""
    args = build_parser().parse_args(argv)
    for name in ("iterations", "switches", "manager_samples", "reference_switches", "reference_extractions"):
        if getattr(args, name) < 1:
            print(f"dofa-bench: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.warmup < 0 or (args.threads is not None and args.threads < 1):
        print("dofa-bench: --warmup must be >= 0 and --threads >= 1", file=sys.stderr)
        return 2
    try:
        result = run_bench(
            BenchOptions(
                device=args.device,
                table_path=args.table,
                model=args.model,
                allow_random=args.allow_random,
                threads=args.threads,
                iterations=args.iterations,
                warmup=args.warmup,
                switches=args.switches,
                manager_samples=args.manager_samples,
                image_size=args.image,
                configs=[c.strip() for c in args.configs.split(",") if c.strip()],
                reference=args.reference,
                reference_switches=args.reference_switches,
                reference_extractions=args.reference_extractions,
                half=args.half,
                channels_last=args.channels_last,
                backend=args.backend,
                stock=args.stock,
            )
        )
    except DofaError as exc:
        print(f"dofa-bench: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    # the same numbers as a table for people; stderr, so stdout stays one JSON object
    print("\n" + format_side_by_side(result), file=sys.stderr)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
