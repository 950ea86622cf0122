"""Set-up shared by the experiments: the :class:`Context` (engine, frames, levels, alone latencies).

Also the camera's frames (:func:`load_images`), the result files' common parts
(:func:`result_header`, :func:`levels_block`) and :func:`write_result`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.synchronize import Lock
from pathlib import Path

import numpy as np
import torch

from dynamic_ofa_ros.engine import LevelEngine
from dynamic_ofa_ros.levels import LevelTable, load_level_table
from dynamic_ofa_ros.manager import ManagerConfig
from dynamic_ofa_ros.supernet import Supernet, load_supernet
from dynamic_ofa_ros.timing import device_kind, device_name, write_json
from offline_tools.datasets import decode_rgb_square, read_members
from offline_tools.experiments.budgets import monotone
from offline_tools.experiments.processes import locked
from offline_tools.experiments.records import Headline, LatencyStats
from offline_tools.experiments.runs import Rig, measure_levels
from offline_tools.experiments.settings import Inputs, Settings

__all__ = [
    "Context",
    "Outcome",
    "SummaryRow",
    "build_context",
    "device_tag",
    "levels_block",
    "load_images",
    "measure_alone",
    "result_header",
    "shared_image_candidates",
    "write_result",
]

_SHARED_IMAGES = ("datasets/imagenette/val-224px.zip", "datasets/imagenette/val-128px.zip")


@dataclass
class Context:
    """What every experiment uses: the rig (engine, frames, levels), the alone latencies, the header."""

    settings: Settings
    inputs: Inputs
    rig: Rig
    images_desc: str
    accuracy_meaningful: bool
    device_name: str
    tag: str
    header: dict[str, object] = field(default_factory=dict)
    alone: dict[int, LatencyStats] = field(default_factory=dict)

    @property
    def levels(self) -> list[int]:
        """Level numbers, lowest first."""
        return self.rig.levels

    @property
    def accuracy(self) -> Mapping[int, float]:
        """Top-1 (%) per level (the table's; its level number when it has none)."""
        return self.rig.accuracy

    @property
    def window_size(self) -> int:
        """The manager's window (frames)."""
        return self.rig.manager_config.window_size

    def lut(self, stats: Mapping[int, LatencyStats] | None = None) -> dict[int, float]:
        """The latencies the manager's look-up table uses: measured p95 alone (or the table's)."""
        if self.settings.lut_source == "table":
            return monotone(self.rig.table_latency)
        source = self.alone if stats is None else stats
        return monotone({lvl: s["p95"] for lvl, s in source.items()})


@dataclass(frozen=True)
class SummaryRow:
    """One line of the console summary: a run, its static level(s) (``""`` if dynamic), its headline."""

    label: str
    level: str
    headline: Headline


@dataclass
class Outcome:
    """What an experiment produced: its JSON object and its lines of the console summary."""

    result: dict[str, object]
    rows: list[SummaryRow]
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# camera frames


def shared_image_candidates() -> list[Path]:
    """Where the Imagenette validation zips may be: ``$DOFA_SHARED``, ``shared/`` here or one up."""
    roots = []
    if os.environ.get("DOFA_SHARED"):
        roots.append(Path(os.environ["DOFA_SHARED"]))
    here = Path(__file__).resolve().parents[2]
    roots += [here / "shared", here.parent / "shared", Path.cwd() / "shared", Path.cwd().parent / "shared"]
    return [root / rel for root in roots for rel in _SHARED_IMAGES]


def _synthetic_images(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Smooth random colour fields (8 x 8 blocks), seeded."""
    rng = np.random.default_rng(seed)
    cell = max(1, math.ceil(size / 8))
    images = []
    for _ in range(n):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        img = np.kron(coarse, np.ones((cell, cell, 1), dtype=np.uint8))[:size, :size]
        images.append(np.ascontiguousarray(img))
    return images


def load_images(spec: str | None, n: int, *, seed: int = 0, size: int = 224) -> tuple[list[np.ndarray], str]:
    """Up to ``n`` RGB uint8 camera frames (``size`` x ``size``) and a description of where they came from.

    From a folder or zip of images (``spec``; picked evenly over the sorted names); without
    ``spec`` the Imagenette validation zip of :func:`shared_image_candidates` when present, else
    ``n`` synthetic images. One frame size, as a camera delivers (the engine captures per size).
    Raises :class:`~offline_tools.errors.DatasetError` when ``spec`` holds no image.
    """
    path = Path(spec) if spec else next((p for p in shared_image_candidates() if p.is_file()), None)
    if path is None:
        return _synthetic_images(n, size, seed), f"{n} synthetic {size}x{size} images (no image source found)"
    images = [np.ascontiguousarray(decode_rgb_square(data, size)[0]) for _, data in read_members(path, n)]
    return images, f"{len(images)} images from {path if path.is_dir() else path.name}"


# --------------------------------------------------------------------------------------------
# set-up


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Drop progress bars (lines with carriage returns) written to stderr; pass other lines on.

    ``TQDM_DISABLE`` cannot do it in this process: torch imports tqdm before ``main`` runs.
    """
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield
    finally:
        kept = [line for line in buf.getvalue().split("\n") if line.strip() and "\r" not in line]
        if kept:
            print("\n".join(kept), file=sys.stderr)


def device_tag(device: str, name: str) -> str:
    """File-name tag of a device: ``cpu``, or the GPU model's first word (``h100`` for "NVIDIA H100 ...")."""
    if device_kind(device) != "cuda":
        return "cpu"
    words = [w for w in name.lower().replace("-", " ").split() if w not in ("nvidia", "geforce", "tesla")]
    return "".join(ch for ch in (words[0] if words else "cuda") if ch.isalnum()) or "cuda"


def _accuracy(table: LevelTable) -> dict[int, float]:
    """Per level: measured top-1, else predicted, else the level number (only the order matters)."""
    out = {}
    for lv in table.levels:
        acc = lv.accuracy if lv.accuracy is not None else lv.predicted_accuracy
        out[int(lv.level)] = float(acc) if acc is not None else float(lv.level)
    return out


def _header(ctx: Context, supernet: Supernet, table: LevelTable, engine: LevelEngine) -> dict[str, object]:
    """The set-up part of every result file."""
    return {
        "torch": torch.__version__,
        "model": supernet.source,
        "supernet_sha256": supernet.sha256,
        "accuracy_meaningful": ctx.accuracy_meaningful,
        "accuracy_source": (
            f"level table 'accuracy' (top-1 %, {table.levels[0].accuracy_dataset})"
            if table.levels[0].accuracy is not None
            else "level table 'predicted_accuracy' (no measured accuracy in the table)"
        ),
        "table": str(ctx.inputs.table),
        "table_device": table.device,
        "images": ctx.images_desc,
        "images_arg": ctx.inputs.images,
        "manager_config": dataclasses.asdict(ctx.rig.manager_config),
        "lut_source": ctx.settings.lut_source,
        "engine_execution": engine.execution,
        "engine_memory_mb": {k: round(v, 2) for k, v in engine.memory_mb.items()},
    }


def build_context(
    inputs: Inputs,
    settings: Settings,
    *,
    measure: bool = True,
    quiet: bool = False,
    setup_lock: Lock | None = None,
) -> Context:
    """Load the super-network, the level table, the engine and the images; measure every level alone.

    The engine is built under ``setup_lock`` (a multiprocessing lock shared with the helper
    processes), so that its warm-up measurements (fp16/channels_last choices) are not disturbed
    by another process setting up on the same device.
    """
    device = settings.device
    if device_kind(device) == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: CUDA is not available here")
    t0 = time.monotonic()
    supernet = load_supernet(inputs.model, device=device, allow_random=inputs.allow_random)
    table = load_level_table(inputs.table, supernet=supernet)
    size = settings.image_size
    with locked(setup_lock), _quiet_progress():
        engine = LevelEngine(
            supernet, table, device=device, threads=settings.threads, warmup_shapes=[(size, size)]
        )
    images, desc = load_images(inputs.images, settings.n_images, seed=settings.seed, size=size)
    window = settings.window_size or ManagerConfig().window_size
    rig = Rig(
        engine=engine,
        images=images,
        accuracy=_accuracy(table),
        table_latency={int(lv.level): float(lv.latency_ms) for lv in table.levels},
        manager_config=ManagerConfig(window_size=window, violation_statistic=settings.statistic),
    )
    name = device_name(device)
    ctx = Context(
        settings=settings,
        inputs=inputs,
        rig=rig,
        images_desc=desc,
        accuracy_meaningful=bool(supernet.meaningful_accuracy),
        device_name=name,
        tag=inputs.tag or device_tag(device, name),
    )
    ctx.header = _header(ctx, supernet, table, engine)
    setup_s = time.monotonic() - t0
    ctx.header["setup_s"] = round(setup_s, 2)
    if measure:
        measure_alone(ctx)
    if not quiet:
        print(f"set-up {setup_s:.1f} s: {name}, {len(ctx.levels)} levels, {desc}", flush=True)
    return ctx


def measure_alone(ctx: Context) -> None:
    """Measure every level alone (``ctx.alone``): the basis of every budget and of the LUT."""
    s = ctx.settings
    ctx.alone = measure_levels(ctx.rig, ctx.levels, frames=s.calib_frames, fps=s.fps, warmup=s.warmup_frames)


# --------------------------------------------------------------------------------------------
# result files


def result_header(ctx: Context, experiment: str) -> dict[str, object]:
    """The first fields of a result: experiment, device, then the set-up header."""
    return {
        "experiment": experiment,
        "device": ctx.device_name,
        "device_kind": device_kind(ctx.settings.device),
        **ctx.header,
    }


def levels_block(ctx: Context, loaded: Mapping[int, LatencyStats] | None = None) -> list[dict[str, object]]:
    """Per level: accuracy, table latency, alone p50/p95 and (``loaded``) p50/p95 under the load."""
    rows = []
    for lvl in ctx.levels:
        row: dict[str, object] = {
            "level": lvl,
            "accuracy": ctx.accuracy[lvl],
            "table_latency_ms": ctx.rig.table_latency[lvl],
            "alone_ms_p50": round(ctx.alone[lvl]["p50"], 4),
            "alone_ms_p95": round(ctx.alone[lvl]["p95"], 4),
        }
        if loaded is not None:
            row["loaded_ms_p50"] = round(loaded[lvl]["p50"], 4)
            row["loaded_ms_p95"] = round(loaded[lvl]["p95"], 4)
        rows.append(row)
    return rows


def write_result(ctx: Context, experiment: str, result: Mapping[str, object]) -> Path:
    """Write ``<out>/<experiment>-<tag>.json`` atomically (number lists on one line); its path."""
    path = ctx.inputs.out / f"{experiment}-{ctx.tag}.json"
    write_json(path, result, one_line_numbers=True)
    return path
