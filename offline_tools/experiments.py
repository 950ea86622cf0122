"""Runtime experiments of the Dynamic-OFA paper (Figs. 6, 7 and 8) on one device, GPU or CPU.

``python -m offline_tools.experiments --device cuda --table config/levels/cuda.json --model embedded
--out docs/results [--only fig6 fig7 fig8] [--quick] [--images DIR_OR_ZIP]``

Every experiment drives a frame loop like a camera: frames are captured at ``--fps`` (0 =
back-to-back), each real image goes through :meth:`LevelEngine.infer`, the measured latency of
the call (capture to result, preprocessing included) is fed to :meth:`RuntimeManager.observe`,
and the level it returns is applied with :meth:`LevelEngine.switch` for the next frame.

* **fig6** - the latency budget changes over time (tight -> loose -> medium) on an otherwise idle
  device; the levels must follow within one window.
* **fig7** - a co-located training job (torchvision ResNet-18, SGD, random data) starts in
  another process in the middle of the run and stops later; the manager steps down until the
  budget is met and back up after the job ends.
* **fig8** - two classifiers (two processes, one engine and one manager each) share the device
  with different budgets; their statuses travel through multiprocessing queues to each one's
  :class:`~dynamic_ofa_ros.coordinator.Coordinator`. Compared with the same two managers
  reacting alone (``uncoordinated``).

Each experiment is also run, the same way, with two static baselines that never switch:
``static_alone`` (the level the look-up table picks for the budget: it meets the budget only
when the model is alone) and ``static_safe`` (the level that meets the budget even under the
load: measured). Budgets are chosen automatically from per-level latencies measured at
start-up, alone and under the load, see :func:`fig6_budgets`, :func:`load_budget` and
``docs/experiments.md``. Results: ``<out>/fig{6,7,8}-<tag>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing as mp
import os
import queue
import re
import sys
import time
import traceback
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

__all__ = [
    "EXPERIMENTS",
    "Context",
    "Event",
    "RunRecord",
    "Settings",
    "analyse_run",
    "fig6_budgets",
    "load_budget",
    "load_images",
    "lut_level",
    "main",
    "run_fig6",
    "run_fig7",
    "run_fig8",
]

EXPERIMENTS = ("fig6", "fig7", "fig8")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_SHARED_IMAGE_CANDIDATES = ("datasets/imagenette/val-224px.zip", "datasets/imagenette/val-128px.zip")


# --------------------------------------------------------------------------------------------
# settings


@dataclass
class Settings:
    """Everything that shapes a run; written into every result file.

    Durations are in seconds of wall time. ``fps`` paces figs. 6/7 like a camera (0 = next frame
    as soon as the previous result is out); ``fig8_fps`` paces both classifiers of fig. 8 (by
    default back-to-back, so that they really compete for the device).
    """

    device: str = "cpu"
    fps: float = 0.0
    fig8_fps: float = 0.0
    fig6_phases_s: tuple[float, float, float] = (3.0, 3.0, 3.0)
    fig7_phases_s: tuple[float, float, float] = (3.0, 5.0, 4.0)
    fig8_phases_s: tuple[float, float, float] = (2.0, 5.0, 3.0)
    calib_frames: int = 60
    warmup_frames: int = 20
    margin: float = 1.1
    load_margin: float = 1.25
    window_size: int | None = None
    load_batch: int = 128
    load_resolution: int = 224
    load_threads: int = 0
    threads: int | None = None
    lut_source: str = "measured"
    statistic: str = "p95"
    n_images: int = 32
    image_size: int = 224
    max_timeline_points: int = 2000
    peer_timeout_s: float = 0.5
    worker_start_timeout_s: float = 240.0
    seed: int = 0

    @classmethod
    def for_device(cls, device: str, *, quick: bool = False) -> Settings:
        """Defaults for ``device``: 100 fps camera and a batch-128 training job on a GPU; on a CPU
        back-to-back frames, one inference thread and a small training job on all cores."""
        if torch.device(device).type == "cuda":
            s = cls(
                device=device, fps=100.0, fig8_fps=0.0, load_batch=128, load_resolution=224, calib_frames=100
            )
        else:
            s = cls(
                device=device,
                fps=0.0,
                fig8_fps=0.0,
                load_batch=8,
                load_resolution=96,
                load_threads=os.cpu_count() or 2,
                threads=1,
                calib_frames=20,
                warmup_frames=5,
            )
        if quick:
            s = replace(
                s,
                fig6_phases_s=tuple(v / 2 for v in s.fig6_phases_s),  # type: ignore[arg-type]
                fig7_phases_s=tuple(v / 2 for v in s.fig7_phases_s),  # type: ignore[arg-type]
                fig8_phases_s=tuple(v / 2 for v in s.fig8_phases_s),  # type: ignore[arg-type]
                calib_frames=max(10, s.calib_frames // 2),
            )
        return s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


# --------------------------------------------------------------------------------------------
# images


def _decode(data: bytes, size: int) -> np.ndarray:
    """RGB uint8 ``size`` x ``size`` (a camera delivers one frame size; the engine captures per size)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _pick(names: Sequence[str], n: int) -> list[str]:
    """``n`` names spread evenly over the sorted list (deterministic, every class of a folder)."""
    ordered = sorted(names)
    if len(ordered) <= n:
        return ordered
    step = len(ordered) / n
    return [ordered[int(i * step)] for i in range(n)]


def _shared_candidates() -> list[Path]:
    roots = []
    if os.environ.get("DOFA_SHARED"):
        roots.append(Path(os.environ["DOFA_SHARED"]))
    here = Path(__file__).resolve().parent.parent
    roots += [here / "shared", here.parent / "shared", Path.cwd() / "shared", Path.cwd().parent / "shared"]
    return [root / rel for root in roots for rel in _SHARED_IMAGE_CANDIDATES]


def load_images(spec: str | None, n: int, *, seed: int = 0, size: int = 224) -> tuple[list[np.ndarray], str]:
    """Up to ``n`` RGB uint8 images (``size`` x ``size``) from a folder or zip of JPEG/PNG files.

    Returns the images and a description. Files are picked evenly over the sorted names.

    Without ``spec`` the Imagenette validation zip in ``shared/`` (``$DOFA_SHARED``,
    ``./shared`` or ``../shared``) is used when present, else ``n`` synthetic images
    (smooth random colour fields, seeded) - the description says which.
    """
    paths = [Path(spec)] if spec else [p for p in _shared_candidates() if p.is_file()]
    for path in paths:
        if path.is_dir():
            files = [str(p) for p in path.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES]
            if not files:
                raise ValueError(f"--images {path}: no .jpg/.jpeg/.png file inside")
            images = [_decode(Path(f).read_bytes(), size) for f in _pick(files, n)]
            return images, f"{len(images)} images from {path}"
        if path.is_file() and path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                names = [m for m in zf.namelist() if m.lower().endswith(_IMAGE_SUFFIXES)]
                if not names:
                    raise ValueError(f"--images {path}: the zip holds no .jpg/.jpeg/.png file")
                images = [_decode(zf.read(m), size) for m in _pick(names, n)]
            return images, f"{len(images)} images from {path.name}"
        if spec:
            raise ValueError(f"--images {spec}: not a folder or a .zip file")
    rng = np.random.default_rng(seed)
    images = []
    cell = max(1, math.ceil(size / 8))
    for _ in range(n):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        img = np.kron(coarse, np.ones((cell, cell, 1), dtype=np.uint8))[:size, :size]
        images.append(np.ascontiguousarray(img))
    return images, f"{n} synthetic {size}x{size} images (no image source found)"


def pack_images(src: str, dst: str, n: int) -> int:
    """Copy ``n`` evenly picked JPEG/PNG files (bytes unchanged) from a folder or zip into a new zip.

    For carrying a few real photos to a machine without the data set (``--pack-images``).
    """
    from dynamic_ofa_ros.timing import atomic_write_bytes

    path = Path(src)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as out:
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES]
            picked = _pick([str(f) for f in files], n)
            for f in picked:
                out.writestr(str(Path(f).relative_to(path)), Path(f).read_bytes())
        else:
            with zipfile.ZipFile(path) as zf:
                names = [m for m in zf.namelist() if m.lower().endswith(_IMAGE_SUFFIXES)]
                picked = _pick(names, n)
                for m in picked:
                    out.writestr(m, zf.read(m))
    if not picked:
        raise ValueError(f"--pack-images {src}: no .jpg/.jpeg/.png file inside")
    atomic_write_bytes(dst, buf.getvalue())
    return len(picked)


# --------------------------------------------------------------------------------------------
# records and metrics


@dataclass
class Event:
    """A change the system must react to, at frame ``frame`` of a run.

    ``kind``: ``start`` (first frame), ``budget`` (new latency budget), ``load_on`` /
    ``load_off`` (the co-located job or the peer classifier starts / stops). ``target`` is the
    level the manager should reach (the look-up-table choice when the model is alone), or
    ``None`` when only the budget matters (under load).
    """

    frame: int
    t: float
    kind: str
    target: int | None = None


@dataclass
class RunRecord:
    """Per-frame timeline of one run: capture time (s since start), level, latencies, budget, load."""

    name: str
    t: list[float] = field(default_factory=list)
    level: list[int] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    budget_ms: list[float] = field(default_factory=list)
    load: list[int] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.t)

    def append(
        self, t: float, level: int, latency: float, inference: float, budget: float, load: int
    ) -> None:
        """Record one frame."""
        self.t.append(t)
        self.level.append(level)
        self.latency_ms.append(latency)
        self.inference_ms.append(inference)
        self.budget_ms.append(budget)
        self.load.append(load)

    def to_payload(self) -> dict[str, Any]:
        """Picklable / JSON-ready full form (used between processes)."""
        return {
            "name": self.name,
            "t": self.t,
            "level": self.level,
            "latency_ms": self.latency_ms,
            "inference_ms": self.inference_ms,
            "budget_ms": self.budget_ms,
            "load": self.load,
            "info": self.info,
        }

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_payload`."""
        return cls(
            name=str(data["name"]),
            t=list(data["t"]),
            level=list(data["level"]),
            latency_ms=list(data["latency_ms"]),
            inference_ms=list(data["inference_ms"]),
            budget_ms=list(data["budget_ms"]),
            load=list(data["load"]),
            info=dict(data.get("info", {})),
        )

    def compact(self, max_points: int) -> dict[str, Any]:
        """Rounded column arrays for the JSON; every ``stride``-th frame when longer than ``max_points``."""
        stride = max(1, math.ceil(len(self) / max(1, max_points)))
        sl = slice(None, None, stride)
        return {
            "stride": stride,
            "frames": len(self),
            "t": [round(v, 4) for v in self.t[sl]],
            "level": self.level[sl],
            "latency_ms": [round(v, 3) for v in self.latency_ms[sl]],
            "inference_ms": [round(v, 3) for v in self.inference_ms[sl]],
            "budget_ms": [round(v, 3) for v in self.budget_ms[sl]],
            "load": self.load[sl],
        }


def lut_level(latency: Mapping[int, float], budget_ms: float) -> int:
    """The look-up-table choice: the highest level whose latency fits ``budget_ms`` (else the lowest)."""
    fitting = [lvl for lvl, ms in latency.items() if ms <= budget_ms]
    return max(fitting) if fitting else min(latency)


def find_events(rec: RunRecord, alone_lut: Mapping[int, float]) -> list[Event]:
    """Events of ``rec``: its start, every budget change and every load on/off transition.

    Targets: with no load, the look-up-table level for the budget (``alone_lut``); under load none.
    """
    events: list[Event] = []
    for i in range(len(rec)):
        kinds = []
        if i == 0:
            kinds.append("start")
        else:
            if rec.budget_ms[i] != rec.budget_ms[i - 1]:
                kinds.append("budget")
            if rec.load[i] != rec.load[i - 1]:
                kinds.append("load_on" if rec.load[i] else "load_off")
        if not kinds:
            continue
        kind = "load_off" if "load_off" in kinds else ("load_on" if "load_on" in kinds else kinds[0])
        target = None if rec.load[i] else lut_level(alone_lut, rec.budget_ms[i])
        events.append(Event(frame=i, t=rec.t[i], kind=kind, target=target))
    return events


def _event_reaction(rec: RunRecord, ev: Event, end: int, window: int, hit: np.ndarray) -> dict[str, Any]:
    """Frames (and ms) from ``ev`` until a full window meets the budget and the target level is reached."""
    deadline: int | None = None
    # a full window inside the phase (the whole phase when it is shorter than a window)
    for j in range(ev.frame, max(ev.frame, end - window) + 1):
        if hit[j : min(j + window, end)].all():
            deadline = j - ev.frame
            break
    level: int | None = 0
    if ev.target is not None:
        level = None
        for j in range(ev.frame, end):
            if rec.level[j] == ev.target:
                level = j - ev.frame
                break
    if ev.kind == "load_off":  # the budget is met anyway: the reaction is stepping back up
        frames = level
    elif deadline is None or level is None:
        frames = None
    else:
        frames = max(deadline, level)
    ms = None
    if frames is not None:
        last = min(ev.frame + frames, len(rec) - 1)
        ms = (rec.t[last] - rec.t[ev.frame]) * 1000.0
    return {
        "kind": ev.kind,
        "frame": ev.frame,
        "t": round(ev.t, 4),
        "target": ev.target,
        "budget_ms": round(rec.budget_ms[ev.frame], 4),
        "deadline_frames": deadline,
        "level_frames": level,
        "reaction_frames": frames,
        "reaction_ms": None if ms is None else round(ms, 3),
        "frames_in_phase": end - ev.frame,
    }


def analyse_run(
    rec: RunRecord,
    *,
    window: int,
    accuracy: Mapping[int, float],
    alone_lut: Mapping[int, float],
    reaction_from: Sequence[Mapping[str, Any]] | None = None,
    static: bool = False,
) -> dict[str, Any]:
    """Metrics of one run (see ``docs/experiments.md`` for the definitions).

    ``static``: a run that never switches; its reaction is only the deadline part (no target
    level) and it has no recovery.

    ``reaction_from``: another run's ``events`` (``kind`` + ``reaction_frames``); the k-th event
    of a kind here then excludes as many frames from ``deadline_hit_after_reaction`` as the
    k-th event of that kind there. A baseline passes the dynamic run's, so that every run is
    scored on the same part of its timeline. Default: the run's own reactions (an event never
    reacted to excludes the rest of its phase).
    """
    n = len(rec)
    if n == 0:
        raise RuntimeError(f"run {rec.name!r} recorded no frame; give the experiment more time")
    lat = np.asarray(rec.latency_ms, dtype=float)
    bud = np.asarray(rec.budget_ms, dtype=float)
    hit = lat <= bud
    events = find_events(rec, alone_lut)
    if static:
        for ev in events:
            ev.target = None
    bounds = [ev.frame for ev in events[1:]] + [n]
    reactions = [_event_reaction(rec, ev, end, window, hit) for ev, end in zip(events, bounds, strict=True)]
    excluded = np.zeros(n, dtype=bool)
    given: dict[str, list[int | None]] = {}
    for other in reaction_from or ():
        given.setdefault(str(other["kind"]), []).append(other["reaction_frames"])
    seen: dict[str, int] = {}
    for k, (ev, end) in enumerate(zip(events, bounds, strict=True)):
        nth = seen.get(ev.kind, 0)
        seen[ev.kind] = nth + 1
        if ev.kind == "load_off":
            continue  # stepping up happens while the budget is met: nothing to exclude
        frames: int | None = reactions[k]["reaction_frames"]
        if reaction_from is not None and nth < len(given.get(ev.kind, [])):
            frames = given[ev.kind][nth]
        stop = end if frames is None else min(end, ev.frame + frames)
        excluded[ev.frame : stop] = True
    scored = hit[~excluded]
    restoring = [r for r in reactions if r["kind"] != "load_off"]
    recovering = [r for r in reactions if r["kind"] == "load_off"]

    def worst(items: list[dict[str, Any]], key: str) -> float | int | None:
        if not items:
            return 0
        values = [r[key] for r in items]
        return None if any(v is None for v in values) else max(values)

    acc = [accuracy[lv] for lv in rec.level]
    levels, counts = np.unique(np.asarray(rec.level), return_counts=True)
    return {
        "deadline_hit_after_reaction": float(scored.mean()) if scored.size else None,
        "reaction_frames": worst(restoring, "reaction_frames"),
        "reaction_ms": worst(restoring, "reaction_ms"),
        "recovery_frames": worst(recovering, "reaction_frames") if recovering and not static else None,
        "recovery_ms": worst(recovering, "reaction_ms") if recovering and not static else None,
        "recovery_events": 0 if static else len(recovering),
        "window_size": window,
        "mean_accuracy": float(np.mean(acc)),
        "deadline_hit_all": float(hit.mean()),
        "frames": n,
        "frames_scored": int(scored.size),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "level_share": {int(lv): round(int(c) / n, 4) for lv, c in zip(levels, counts, strict=True)},
        "switches": int(np.count_nonzero(np.diff(np.asarray(rec.level)))) if n > 1 else 0,
        "events": reactions,
    }


def metric_fields(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The headline fields (the ones every result and baseline carries)."""
    keys = (
        "deadline_hit_after_reaction",
        "reaction_frames",
        "reaction_ms",
        "recovery_frames",
        "recovery_ms",
        "window_size",
        "mean_accuracy",
        "deadline_hit_all",
    )
    return {k: metrics.get(k) for k in keys}


# --------------------------------------------------------------------------------------------
# budget rules


def monotone(latency: Mapping[int, float]) -> dict[int, float]:
    """Latencies made strictly increasing with the level (noise between near-equal levels)."""
    out: dict[int, float] = {}
    prev = -math.inf
    for lvl in sorted(latency):
        value = max(float(latency[lvl]), prev + 1e-3)
        out[lvl] = value
        prev = value
    return out


def fig6_budgets(p95: Mapping[int, float], margin: float) -> dict[str, tuple[float, int]]:
    """Budgets of fig. 6, ``{"tight"|"medium"|"loose": (budget_ms, level)}``.

    With the levels ``1..n`` sorted, the target levels are the one at 25 % of the range
    (``tight``), 50 % (``medium``) and the top (``loose``); each budget is ``margin`` x the
    target's alone p95, but below the next level's p95 (mid-way), so that the look-up table
    picks exactly the target and the target meets the budget.
    """
    lat = monotone(p95)
    levels = sorted(lat)
    n = len(levels)
    picks = {
        "tight": levels[int(0.25 * (n - 1))],
        "medium": levels[int(0.5 * (n - 1) + 0.5)],
        "loose": levels[-1],
    }
    out: dict[str, tuple[float, int]] = {}
    for name, lvl in picks.items():
        budget = margin * lat[lvl]
        if lvl != levels[-1]:
            budget = min(budget, 0.5 * (lat[lvl] + lat[lvl + 1]))
        out[name] = (float(budget), int(lvl))
    return out


LOAD_MARGINS_FALLBACK = (1.15, 1.05)


def _load_margins(settings: Settings) -> tuple[float, ...]:
    """``load_margin``, then the smaller fall-backs (see :func:`load_budget`)."""
    return (settings.load_margin, *[m for m in LOAD_MARGINS_FALLBACK if m < settings.load_margin])


def load_budget(
    alone_p95: Mapping[int, float], loaded_p95: Mapping[int, float], margin: float | Sequence[float]
) -> dict[str, Any]:
    """The budget of figs. 7/8 from per-level p95 latencies alone and under the load.

    Candidates are ``margin`` x each level's p95 under load. For each, ``static_safe`` is the
    highest level whose p95 under load fits and ``static_alone`` the look-up-table level (alone
    p95) for it. The candidate with the largest gap ``static_alone - static_safe`` wins (ties:
    the higher ``static_safe``, i.e. the looser budget): the budget where switching matters most.
    ``margin`` may be a sequence, tried in order until one gives a gap (a load that adds a
    roughly constant delay, e.g. GPU time-slicing, leaves a gap only with a small margin). With no
    gap at any margin (the load does not slow the levels differently) the median candidate of the
    first margin is used and ``load_effect`` says ``"none"``.
    """
    alone = monotone(alone_p95)
    margins = [float(margin)] if isinstance(margin, (int, float)) else [float(m) for m in margin]
    if not margins:
        raise ValueError("load_budget needs at least one margin")
    first: list[dict[str, Any]] = []
    tried: dict[str, Any] = {}
    for m in margins:
        best: tuple[int, int, float] | None = None
        candidates = []
        for lvl in sorted(loaded_p95):
            budget = m * float(loaded_p95[lvl])
            safe = max(lv for lv, ms in loaded_p95.items() if ms <= budget)
            lut = lut_level(alone, budget)
            candidates.append({"budget_ms": round(budget, 4), "static_safe": safe, "static_alone": lut})
            key = (lut - safe, safe, budget)
            if best is None or key[:2] > best[:2]:
                best = key
        assert best is not None
        tried[f"{m:g}"] = candidates
        if not first:
            first = candidates
        gap, safe, budget = best
        if gap > 0:
            return {
                "budget_ms": float(budget),
                "static_alone": lut_level(alone, budget),
                "static_safe": int(safe),
                "load_effect": "slows",
                "margin": m,
                "candidates": tried,
            }
    mid = first[len(first) // 2]
    return {
        "budget_ms": float(mid["budget_ms"]),
        "static_alone": lut_level(alone, float(mid["budget_ms"])),
        "static_safe": int(mid["static_safe"]),
        "load_effect": "none",
        "margin": margins[0],
        "candidates": tried,
    }


# --------------------------------------------------------------------------------------------
# level controllers (what picks the level of the next frame)


class Controller(Protocol):
    """Picks the level of the next frame."""

    def start(self, budget_ms: float) -> int:
        """Apply the first budget; the level of the first frame."""

    def set_budget(self, budget_ms: float) -> int:
        """Apply a new budget (takes effect for this frame); the level to use."""

    def observe(self, latency_ms: float, inference_ms: float) -> int:
        """Feed the latencies of the frame just done; the level of the next frame."""


class StaticController:
    """A baseline that never switches."""

    def __init__(self, level: int) -> None:
        self.level = int(level)

    def start(self, budget_ms: float) -> int:
        """The fixed level."""
        return self.level

    def set_budget(self, budget_ms: float) -> int:
        """The fixed level (budgets are ignored)."""
        return self.level

    def observe(self, latency_ms: float, inference_ms: float) -> int:
        """The fixed level."""
        return self.level


class ManagedController:
    """The runtime manager (``mode="auto"``: LUT on a constraint change, reactive afterwards).

    ``poll`` is called before every observation (fig. 8: hand the peers' statuses that
    arrived to the coordinator attached to the manager).
    """

    def __init__(self, manager: Any, poll: Callable[[], None] | None = None) -> None:
        self.manager = manager
        self.poll = poll

    def start(self, budget_ms: float) -> int:
        """Set the budget; the manager's current level."""
        return self.set_budget(budget_ms)

    def set_budget(self, budget_ms: float) -> int:
        """``set_constraints`` then the manager's level."""
        self.manager.set_constraints(latency_budget_ms=budget_ms)
        return int(self.manager.status().level)

    def observe(self, latency_ms: float, inference_ms: float) -> int:
        """``RuntimeManager.observe`` with both latencies."""
        if self.poll is not None:
            self.poll()
        return int(self.manager.observe(latency_ms, inference_ms=inference_ms))

    def summary(self) -> dict[str, Any]:
        """The manager's own counters at the end of a run (its reaction measure, for comparison)."""
        st = self.manager.status()
        return {
            "frames": st.frames,
            "violations": st.violations,
            "switches": st.switches,
            "last_reaction_frames": st.last_reaction_frames,
            "last_reaction_ms": round(float(st.last_reaction_ms), 3),
            "mode": st.mode,
        }


# --------------------------------------------------------------------------------------------
# the frame loop


def _warm(engine: Any, images: Sequence[np.ndarray], level: int, frames: int) -> None:
    engine.switch(level)
    for i in range(frames):
        engine.infer(images[i % len(images)])


def run_frames(
    engine: Any,
    images: Sequence[np.ndarray],
    controller: Controller,
    *,
    name: str,
    duration_s: float,
    fps: float,
    budget_at: Callable[[float], float],
    load_flag: Callable[[], bool] | None = None,
    actions: Sequence[tuple[float, Callable[[], None]]] = (),
    warmup_frames: int = 0,
    start_at: float | None = None,
) -> RunRecord:
    """Run the camera-like loop for ``duration_s`` and record every frame.

    ``budget_at(t)`` gives the budget at ``t`` seconds after the start (a change is applied
    before that frame); ``actions`` are ``(t, fn)`` called once at the first frame at or after
    ``t`` (start/stop the load); ``load_flag()`` says whether the co-located load is running
    (sampled at capture). ``start_at``: a ``time.monotonic()`` instant to start at (to align
    processes). The latency of a frame is the wall time of ``engine.infer`` (resize,
    normalisation, copy, inference, result back on the host).
    """
    rec = RunRecord(name=name)
    level = controller.start(budget_at(0.0))
    budget = budget_at(0.0)
    if warmup_frames:
        _warm(engine, images, level, warmup_frames)
    engine.switch(level)
    pending = sorted(actions, key=lambda a: a[0])
    period = 1.0 / fps if fps > 0 else 0.0
    if start_at is not None:
        delay = start_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    t_start = time.monotonic()
    rec.info["t0_monotonic"] = t_start
    next_t = t_start
    i = 0
    while True:
        if period:
            now = time.monotonic()
            if next_t > now:
                time.sleep(next_t - now)
            next_t = max(next_t + period, time.monotonic())
        capture = time.monotonic()
        elapsed = capture - t_start
        if elapsed >= duration_s:
            break
        while pending and pending[0][0] <= elapsed:
            pending.pop(0)[1]()
        new_budget = budget_at(elapsed)
        if new_budget != budget:
            budget = new_budget
            level = controller.set_budget(budget)
            engine.switch(level)
        loaded = 1 if load_flag is not None and load_flag() else 0
        t0 = time.perf_counter()
        result = engine.infer(images[i % len(images)])
        latency = (time.perf_counter() - t0) * 1000.0
        rec.append(elapsed, int(result.level), latency, float(result.inference_ms), budget, loaded)
        nxt = controller.observe(latency, float(result.inference_ms))
        if nxt != level:
            level = nxt
            engine.switch(level)
        i += 1
    for _, fn in pending:  # actions scheduled past the end (e.g. stopping the load) still run
        fn()
    if isinstance(controller, ManagedController):
        rec.info["manager"] = controller.summary()
    return rec


def measure_levels(
    engine: Any,
    images: Sequence[np.ndarray],
    levels: Iterable[int],
    *,
    frames: int,
    fps: float,
    warmup: int = 5,
) -> dict[int, dict[str, float]]:
    """Per level: p50/p95/mean of the ``engine.infer`` wall time over ``frames`` frames at ``fps``."""
    out: dict[int, dict[str, float]] = {}
    period = 1.0 / fps if fps > 0 else 0.0
    for lvl in levels:
        _warm(engine, images, lvl, warmup)
        samples = []
        next_t = time.monotonic()
        for i in range(frames):
            if period:
                now = time.monotonic()
                if next_t > now:
                    time.sleep(next_t - now)
                next_t = max(next_t + period, time.monotonic())
            t0 = time.perf_counter()
            engine.infer(images[i % len(images)])
            samples.append((time.perf_counter() - t0) * 1000.0)
        out[int(lvl)] = {
            "p50": float(np.percentile(samples, 50)),
            "p95": float(np.percentile(samples, 95)),
            "mean": float(np.mean(samples)),
        }
    return out


# --------------------------------------------------------------------------------------------
# the co-located training job


def _training_job(
    device: str,
    batch: int,
    resolution: int,
    threads: int,
    ready: Any,
    go: Any,
    quit_: Any,
    active: Any,
    steps: Any,
    errors: Any,
    setup_lock: Any = None,
) -> None:
    """Process body: ResNet-18 SGD training on random data while ``go`` is set, until ``quit_``.

    The device part of the set-up (model, warm-up steps) runs under ``setup_lock``.
    """
    try:
        import torchvision

        if threads > 0:
            torch.set_num_threads(threads)
        dev = torch.device(device)
        torch.manual_seed(0)
        with _locked(setup_lock):
            model = torchvision.models.resnet18(num_classes=1000).to(dev).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            x = torch.randn(batch, 3, resolution, resolution, device=dev)
            y = torch.randint(0, 1000, (batch,), device=dev)
            loss_fn = torch.nn.CrossEntropyLoss()

            def step() -> None:
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                opt.step()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)

            for _ in range(2):  # cuDNN autotuning / allocator warm-up before we count as ready
                step()
        ready.set()
        while not quit_.is_set():
            if not go.wait(timeout=0.02):
                continue
            active.value = 1
            while go.is_set() and not quit_.is_set():
                step()
                with steps.get_lock():
                    steps.value += 1
            active.value = 0
    except BaseException as exc:  # reported to the parent, which prints it
        errors.put(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
        ready.set()


class TrainingLoad:
    """A ResNet-18 training job in another process (spawned), started and stopped on demand.

    ``on()`` lets it train (it reports ``active`` once the first step is launched),
    ``off()`` stops it after the current step; ``running`` is that flag.
    """

    def __init__(
        self,
        device: str,
        *,
        batch: int,
        resolution: int,
        threads: int,
        timeout_s: float,
        setup_lock: Any = None,
    ) -> None:
        ctx = mp.get_context("spawn")
        self.ready = ctx.Event()
        self.go = ctx.Event()
        self.quit = ctx.Event()
        self.active = ctx.Value("i", 0)
        self.steps = ctx.Value("l", 0)
        self.errors: Any = ctx.Queue()
        self.settings = {"device": device, "batch": batch, "resolution": resolution, "threads": threads}
        self.proc = ctx.Process(
            target=_training_job,
            args=(
                device,
                batch,
                resolution,
                threads,
                self.ready,
                self.go,
                self.quit,
                self.active,
                self.steps,
                self.errors,
                setup_lock,
            ),
            daemon=True,
            name="dofa-training-load",
        )
        self.proc.start()
        self._spawned = time.monotonic()
        self.timeout_s = timeout_s
        self.startup_s = math.nan
        self._on_at = 0.0
        self._steps_at = 0
        self.intervals: list[dict[str, float]] = []

    def wait_ready(self) -> None:
        """Block until the job has built its model and run its warm-up steps (raise if it failed)."""
        if not math.isnan(self.startup_s):
            return
        while not self.ready.wait(timeout=0.5):
            if not self.proc.is_alive():
                break
            if time.monotonic() - self._spawned > self.timeout_s:
                self.close()
                raise RuntimeError(f"the training job did not start within {self.timeout_s:.0f} s")
        self.startup_s = time.monotonic() - self._spawned
        self._check()

    def _check(self) -> None:
        try:
            msg = self.errors.get_nowait()
        except queue.Empty:
            msg = None
        if msg is not None or not self.proc.is_alive():
            self.close()
            raise RuntimeError(f"the training job failed: {msg or 'process exited'}")

    @property
    def running(self) -> bool:
        """Whether it is training right now."""
        return bool(self.active.value)

    def on(self) -> None:
        """Start training (returns at once)."""
        self._check()
        self._on_at = time.monotonic()
        self._steps_at = int(self.steps.value)
        self.go.set()

    def off(self) -> None:
        """Ask it to stop after the current step (returns at once; ``running`` drops when it has)."""
        self.go.clear()

    def wait_idle(self, wait_s: float = 30.0) -> dict[str, float]:
        """After :meth:`off`: wait until the job is idle; record and return the interval's step rate."""
        self.go.clear()
        t0 = time.monotonic()
        while self.active.value and time.monotonic() - t0 < wait_s:
            time.sleep(0.002)
        dur = max(time.monotonic() - self._on_at, 1e-9)
        done = int(self.steps.value) - self._steps_at
        interval = {"seconds": round(dur, 3), "steps": done, "steps_per_s": round(done / dur, 2)}
        self.intervals.append(interval)
        return interval

    def close(self) -> None:
        """Stop and join the process."""
        self.go.clear()
        self.quit.set()
        self.proc.join(timeout=15.0)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5.0)


# --------------------------------------------------------------------------------------------
# context shared by the experiments


@dataclass
class Context:
    """What every experiment uses: the engine, the images, the levels and the alone latencies."""

    settings: Settings
    engine: Any
    images: list[np.ndarray]
    images_desc: str
    accuracy: dict[int, float]
    accuracy_meaningful: bool
    table_latency: dict[int, float]
    alone: dict[int, dict[str, float]]
    device_name: str
    tag: str
    out: Path
    model: str
    table_path: str
    allow_random: bool
    make_manager: Callable[..., Any]
    window_size: int
    args: dict[str, Any] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)
    helpers: dict[str, Any] = field(default_factory=dict)

    @property
    def levels(self) -> list[int]:
        """Level numbers, lowest first."""
        return sorted(self.accuracy)

    def lut(self, stats: Mapping[int, Mapping[str, float]] | None = None) -> dict[int, float]:
        """The latencies the manager's look-up table uses: measured p95 alone (or the table's p50)."""
        if self.settings.lut_source == "table":
            return monotone(self.table_latency)
        source = self.alone if stats is None else stats
        return monotone({lvl: s["p95"] for lvl, s in source.items()})


def _result_header(ctx: Context, experiment: str) -> dict[str, Any]:
    return {
        "experiment": experiment,
        "device": ctx.device_name,
        "device_kind": torch.device(ctx.settings.device).type,
        **ctx.header,
    }


def _levels_block(
    ctx: Context, loaded: Mapping[int, Mapping[str, float]] | None = None
) -> list[dict[str, Any]]:
    rows = []
    for lvl in ctx.levels:
        row: dict[str, Any] = {
            "level": lvl,
            "accuracy": ctx.accuracy[lvl],
            "table_latency_ms": ctx.table_latency[lvl],
            "alone_ms_p50": round(ctx.alone[lvl]["p50"], 4),
            "alone_ms_p95": round(ctx.alone[lvl]["p95"], 4),
        }
        if loaded is not None:
            row["loaded_ms_p50"] = round(loaded[lvl]["p50"], 4)
            row["loaded_ms_p95"] = round(loaded[lvl]["p95"], 4)
        rows.append(row)
    return rows


def _write_result(ctx: Context, experiment: str, result: dict[str, Any]) -> Path:
    from dynamic_ofa_ros.timing import atomic_write_text

    path = ctx.out / f"{experiment}-{ctx.tag}.json"
    text = json.dumps(_finite(result), indent=1, allow_nan=False, default=_json_default)
    # one line per list of numbers (the timelines), which keeps the file small and readable
    text = re.sub(
        r"\[\s+([-0-9.eE+,\snul]+?)\s+\]",
        lambda m: "[" + ",".join(part.strip() for part in m.group(1).split(",")) + "]",
        text,
    )
    atomic_write_text(path, text + "\n")
    return path


def _finite(obj: Any) -> Any:
    """``obj`` with NaN/infinite floats replaced by ``None`` (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _assemble(
    ctx: Context,
    experiment: str,
    runs: Mapping[str, RunRecord],
    baselines_levels: Mapping[str, int],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Analyse the dynamic run and the baselines the same way; the JSON object of one experiment."""
    lut = ctx.lut()
    dyn = analyse_run(runs["dynamic"], window=ctx.window_size, accuracy=ctx.accuracy, alone_lut=lut)
    reactions = dyn["events"]
    result = _result_header(ctx, experiment)
    result.update(metric_fields(dyn))
    dyn["switch_reasons"] = runs["dynamic"].info.get("switch_reasons", {})
    dyn["manager"] = runs["dynamic"].info.get("manager", {})
    result["dynamic"] = dyn
    result["baselines"] = {}
    for name, lvl in baselines_levels.items():
        m = analyse_run(
            runs[name],
            window=ctx.window_size,
            accuracy=ctx.accuracy,
            alone_lut=lut,
            reaction_from=reactions,
            static=True,
        )
        result["baselines"][name] = {"level": lvl, **metric_fields(m), "detail": m}
    result.update(extra)
    result["timeline"] = {name: rec.compact(ctx.settings.max_timeline_points) for name, rec in runs.items()}
    return result


def _controller(
    ctx: Context, name: str, lut: Mapping[int, float], base: Mapping[str, int], reasons: dict[str, int]
) -> Controller:
    """The dynamic run's manager (counting its switch reasons into ``reasons``) or a static level."""
    if name != "dynamic":
        return StaticController(base[name])

    def on_switch(decision: Any) -> None:
        reasons[decision.reason] = reasons.get(decision.reason, 0) + 1

    return ManagedController(ctx.make_manager(lut, on_switch))


def _run_dynamic_and_static(
    ctx: Context,
    lut: Mapping[int, float],
    base: Mapping[str, int],
    *,
    duration_s: float,
    budget_at: Callable[[float], float],
    load_flag: Callable[[], bool] | None = None,
    actions: Sequence[tuple[float, Callable[[], None]]] = (),
    after_run: Callable[[RunRecord], None] | None = None,
) -> dict[str, RunRecord]:
    """The dynamic manager's run, then one run of each static level of ``base``, under the same schedule.

    Each record's ``info["switch_reasons"]`` counts the manager's switches by reason;
    ``after_run(record)`` is called right after each run, before the next starts.
    """
    runs: dict[str, RunRecord] = {}
    for name in ("dynamic", "static_alone", "static_safe"):
        reasons: dict[str, int] = {}
        runs[name] = run_frames(
            ctx.engine,
            ctx.images,
            _controller(ctx, name, lut, base, reasons),
            name=name,
            duration_s=duration_s,
            fps=ctx.settings.fps,
            budget_at=budget_at,
            load_flag=load_flag,
            actions=actions,
            warmup_frames=ctx.settings.warmup_frames,
        )
        if after_run is not None:
            after_run(runs[name])
        runs[name].info["switch_reasons"] = reasons
    return runs


# --------------------------------------------------------------------------------------------
# fig. 6: budget changes


def run_fig6(ctx: Context) -> dict[str, Any]:
    """Budget tight -> loose -> medium on an idle device; dynamic vs two static levels."""
    s = ctx.settings
    budgets = fig6_budgets({lvl: st["p95"] for lvl, st in ctx.alone.items()}, s.margin)
    order = ("tight", "loose", "medium")
    edges = np.cumsum(s.fig6_phases_s).tolist()

    def budget_at(t: float) -> float:
        for name, edge in zip(order, edges, strict=True):
            if t < edge:
                return budgets[name][0]
        return budgets[order[-1]][0]

    lut = ctx.lut()
    base = {
        "static_alone": budgets["loose"][1],
        "static_safe": lut_level(lut, min(b for b, _ in budgets.values())),
    }
    runs = _run_dynamic_and_static(ctx, lut, base, duration_s=edges[-1], budget_at=budget_at)
    extra = {
        "settings": s.to_dict(),
        "budget_rule": "fig6_budgets: target levels at 25 %, 50 %, 100 % of the range; budget = margin x "
        "alone p95 of the target, below the next level's p95; static_alone = LUT level of the loosest "
        "budget, static_safe = LUT level of the tightest",
        "budgets": {k: {"budget_ms": round(b, 4), "level": lvl} for k, (b, lvl) in budgets.items()},
        "phases": [{"budget": k, "until_s": e} for k, e in zip(order, edges, strict=True)],
        "levels": _levels_block(ctx),
    }
    result = _assemble(ctx, "fig6", runs, base, extra)
    _plot_safely(
        result, lambda: _plot(ctx, "fig6", runs, result, "Fig. 6: budget changes (tight -> loose -> medium)")
    )
    return result


# --------------------------------------------------------------------------------------------
# fig. 7: co-located training job


def run_fig7(ctx: Context) -> dict[str, Any]:
    """A ResNet-18 training job starts mid-run in another process and stops later."""
    s = ctx.settings
    load = ctx.helpers.pop("load", None) or start_training_load(s)
    try:
        load.wait_ready()
        load.on()
        t0 = time.monotonic()
        while not load.running and time.monotonic() - t0 < 30:
            time.sleep(0.005)
        loaded = measure_levels(
            ctx.engine, ctx.images, ctx.levels, frames=s.calib_frames, fps=s.fps, warmup=s.warmup_frames
        )
        calib_interval = load.wait_idle()
        rule = load_budget(
            {lvl: st["p95"] for lvl, st in ctx.alone.items()},
            {lvl: st["p95"] for lvl, st in loaded.items()},
            _load_margins(s),
        )
        budget = float(rule["budget_ms"])
        before, during, after = s.fig7_phases_s
        base = {"static_alone": int(rule["static_alone"]), "static_safe": int(rule["static_safe"])}
        lut = ctx.lut()

        def record_load(rec: RunRecord) -> None:
            rec.info["load"] = load.wait_idle()  # also waits for the job to be idle before the next run

        runs = _run_dynamic_and_static(
            ctx,
            lut,
            base,
            duration_s=before + during + after,
            budget_at=lambda _t: budget,
            load_flag=lambda: load.running,
            actions=[(before, load.on), (before + during, load.off)],
            after_run=record_load,
        )
        probe = base["static_alone"]
        check = {
            "level": probe,
            "alone_ms_p50": round(ctx.alone[probe]["p50"], 4),
            "loaded_ms_p50": round(loaded[probe]["p50"], 4),
            "slowdown_p50": round(loaded[probe]["p50"] / ctx.alone[probe]["p50"], 3),
            "calibration_steps_per_s": calib_interval["steps_per_s"],
            "runs": {k: r.info["load"] for k, r in runs.items()},
        }
    finally:
        load.close()
    extra = {
        "settings": s.to_dict(),
        "budget_ms": round(budget, 4),
        "budget_rule": "load_budget: candidates margin x p95 under load per level; keep the one with the "
        "largest gap LUT(alone) - safe level (ties: higher safe level); margins tried in order until "
        "one gives a gap",
        "budget_margin": rule["margin"],
        "budget_candidates": rule["candidates"],
        "load_effect": rule["load_effect"],
        "load_job": {
            **load.settings,
            "model": "torchvision resnet18",
            "optimizer": "SGD(lr=0.01, momentum=0.9)",
            "startup_s": round(load.startup_s, 2),
        },
        "load_check": check,
        "levels": _levels_block(ctx, loaded),
    }
    result = _assemble(ctx, "fig7", runs, base, extra)
    _plot_safely(
        result, lambda: _plot(ctx, "fig7", runs, result, "Fig. 7: co-located ResNet-18 training job")
    )
    return result


# --------------------------------------------------------------------------------------------
# fig. 8: two coordinated classifiers


def _classifier_worker(
    spec: dict[str, Any],
    cmd_q: Any,
    res_q: Any,
    inbox: Any,
    outbox: Any,
    own_flag: Any,
    peer_flag: Any,
    stop_flag: Any,
    setup_lock: Any = None,
) -> None:
    """Process body of one fig. 8 classifier: build the engine, then serve commands."""
    name = spec["name"]
    try:
        ctx = build_context(
            spec["args"], Settings(**spec["settings"]), measure=False, quiet=True, setup_lock=setup_lock
        )
        res_q.put((name, "ready", {"pid": os.getpid()}))
        while True:
            cmd = cmd_q.get()
            op = cmd["op"]
            if op == "quit":
                _drain(inbox)  # let the peer's queue feeder flush, so that it can exit
                outbox.cancel_join_thread()
                break
            if op == "measure":
                _wait_until(cmd.get("start_at"))
                stats = measure_levels(
                    ctx.engine,
                    ctx.images,
                    cmd["levels"],
                    frames=cmd["frames"],
                    fps=cmd["fps"],
                    warmup=ctx.settings.warmup_frames,
                )
                res_q.put((name, "measure", stats))
            elif op == "hog":  # load the device back-to-back until told to stop
                ctx.engine.switch(cmd["level"])
                i = 0
                own_flag.value = 1
                while not stop_flag.value and time.monotonic() < cmd["until"]:
                    ctx.engine.infer(ctx.images[i % len(ctx.images)])
                    i += 1
                own_flag.value = 0
                res_q.put((name, "hog", {"frames": i}))
            elif op == "run":
                res_q.put((name, "run", _worker_run(ctx, cmd, inbox, outbox, own_flag, peer_flag)))
            else:
                raise ValueError(f"unknown command {op!r}")
    except BaseException as exc:
        res_q.put((name, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"))


def _wait_until(t: float | None) -> None:
    if t is not None:
        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _drain(box: Any) -> list[Any]:
    items = []
    while True:
        try:
            items.append(box.get_nowait())
        except queue.Empty:
            return items


def _worker_run(
    ctx: Context, cmd: Mapping[str, Any], inbox: Any, outbox: Any, own_flag: Any, peer_flag: Any
) -> dict[str, Any]:
    """One fig. 8 run of this classifier: static, reactive alone, or coordinated through the queues.

    Coordinated: a :class:`Coordinator` is attached to the manager (consulted at each window
    boundary, where this model's :class:`PeerStatus` is also put into the peer's inbox); the
    statuses that arrived are handed to it before every frame's observation.
    """
    from dynamic_ofa_ros.coordinator import Coordinator

    budget = float(cmd["budget_ms"])
    lut = {int(k): float(v) for k, v in cmd["lut"].items()}
    counts = {"coordinator": 0, "violation": 0, "slack": 0, "published": 0, "received": 0}

    def on_switch(decision: Any) -> None:
        counts[decision.reason] = counts.get(decision.reason, 0) + 1

    _drain(inbox)  # statuses left over from the previous run
    if cmd["mode"] == "static":
        controller: Controller = StaticController(int(cmd["level"]))
    else:
        manager = ctx.make_manager(lut, on_switch)
        poll = None
        if cmd["mode"] == "coordinated":
            coordinator = Coordinator(
                cmd["name"], timeout_s=float(cmd["peer_timeout_s"]), clock=time.monotonic
            )

            def publish(status: Any) -> None:
                counts["published"] += 1
                outbox.put(status)

            def poll() -> None:
                for status in _drain(inbox):
                    counts["received"] += 1
                    coordinator.update(status)

            coordinator.attach(manager, group="fig8", publish=publish)
        controller = ManagedController(manager, poll)
    if ctx.settings.warmup_frames:
        _warm(ctx.engine, ctx.images, controller.start(budget), ctx.settings.warmup_frames)
    _wait_until(cmd["start_at"])
    own_flag.value = 1
    try:
        rec = run_frames(
            ctx.engine,
            ctx.images,
            controller,
            name=cmd["name"],
            duration_s=cmd["duration_s"],
            fps=cmd["fps"],
            budget_at=lambda _t: budget,
            load_flag=lambda: bool(peer_flag.value),
        )
    finally:
        own_flag.value = 0
    rec.info["switch_reasons"] = {k: v for k, v in counts.items() if k not in ("published", "received")}
    rec.info["statuses"] = {"published": counts["published"], "received": counts["received"]}
    return rec.to_payload()


class WorkerPair:
    """The two classifier processes of fig. 8 (``A`` and ``B``) with their queues and flags."""

    names = ("A", "B")

    def __init__(self, args: Mapping[str, Any], settings: Settings, setup_lock: Any = None) -> None:
        ctx = mp.get_context("spawn")
        self.res_q: Any = ctx.Queue()
        self.cmd_q: dict[str, Any] = {n: ctx.Queue() for n in self.names}
        self.inbox: dict[str, Any] = {n: ctx.Queue() for n in self.names}
        self.flag: dict[str, Any] = {n: ctx.Value("i", 0) for n in self.names}
        self.stop: Any = ctx.Value("i", 0)
        self.timeout = settings.worker_start_timeout_s
        self.procs = []
        for me, peer in (("A", "B"), ("B", "A")):
            fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.to_dict().items()}
            spec: dict[str, Any] = {"name": me, "args": dict(args), "settings": fields}
            p = ctx.Process(
                target=_classifier_worker,
                args=(
                    spec,
                    self.cmd_q[me],
                    self.res_q,
                    self.inbox[me],
                    self.inbox[peer],
                    self.flag[me],
                    self.flag[peer],
                    self.stop,
                    setup_lock,
                ),
                daemon=True,
                name=f"dofa-classifier-{me}",
            )
            p.start()
            self.procs.append(p)
        self._spawned = time.monotonic()
        self.startup_s = math.nan

    def wait_ready(self) -> None:
        """Block until both classifiers have built their engines (raise if one failed)."""
        if math.isnan(self.startup_s):
            self.collect("ready", timeout=self.timeout)
            self.startup_s = time.monotonic() - self._spawned

    def send(self, name: str, cmd: dict[str, Any]) -> None:
        """Queue a command for one worker."""
        self.cmd_q[name].put(cmd)

    def collect(self, kind: str, *, timeout: float, names: Sequence[str] = ("A", "B")) -> dict[str, Any]:
        """Wait for one ``kind`` answer from each of ``names``; raise on a worker error or timeout."""
        got: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(names):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"fig8 workers: no {kind!r} answer from {sorted(set(names) - set(got))} "
                    f"within {timeout:.0f} s"
                )
            try:
                name, what, payload = self.res_q.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [p.name for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"fig8 workers died: {dead}") from None
                continue
            if what == "error":
                raise RuntimeError(f"fig8 worker {name} failed: {payload}")
            if what == kind:
                got[name] = payload
        return got

    def close(self) -> None:
        """Ask both to quit, then join (terminate when stuck)."""
        for n in self.names:
            self.cmd_q[n].put({"op": "quit"})
        for p in self.procs:
            p.join(timeout=10.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)


def run_fig8(ctx: Context) -> dict[str, Any]:
    """Two classifiers in two processes share the device; coordinated vs uncoordinated vs static."""
    s = ctx.settings
    pair = ctx.helpers.pop("pair", None) or WorkerPair(ctx.args, s)
    try:
        pair.wait_ready()
        levels = ctx.levels
        frames = s.calib_frames
        alone = pair_measure(pair, levels, frames, s.fig8_fps, hog=False)
        top = levels[-1]
        contention = pair_measure(pair, levels, frames, s.fig8_fps, hog=True, hog_level=top)
        alone_p95 = {lvl: st["p95"] for lvl, st in alone.items()}
        cont_p95 = {lvl: st["p95"] for lvl, st in contention.items()}
        rule_a = load_budget(alone_p95, cont_p95, _load_margins(s))
        safe_a = int(rule_a["static_safe"])
        l_b = min(top, safe_a + max(1, (top - safe_a) // 2))
        budget_b = max(float(rule_a["margin"]) * cont_p95[l_b], float(rule_a["budget_ms"]) * 1.25)
        budgets = {"A": float(rule_a["budget_ms"]), "B": budget_b}
        lut = monotone(alone_p95) if s.lut_source == "measured" else ctx.lut()
        static_alone = {n: lut_level(lut, budgets[n]) for n in pair.names}
        static_safe = {
            n: max([lv for lv, ms in cont_p95.items() if ms <= budgets[n]] or [levels[0]]) for n in pair.names
        }
        # a peer is forgotten when silent for this long: several windows at the slowest contended level
        peer_timeout = max(s.peer_timeout_s, 4.0 * ctx.window_size * max(cont_p95.values()) / 1000.0)
        t1, t2, t3 = s.fig8_phases_s
        modes = {
            "coordinated": ("coordinated", None),
            "uncoordinated": ("reactive", None),
            "static_alone": ("static", static_alone),
            "static_safe": ("static", static_safe),
        }
        runs: dict[str, dict[str, RunRecord]] = {}
        for mode_name, (mode, fixed) in modes.items():
            # both warm up before the common start (``warmup_frames`` each, contended at worst)
            start = time.monotonic() + 0.3 + 2.0 * s.warmup_frames * max(cont_p95.values()) / 1000.0
            for n, (offset, dur) in {"A": (0.0, t1 + t2 + t3), "B": (t1, t2)}.items():
                pair.send(
                    n,
                    {
                        "op": "run",
                        "name": n,
                        "mode": mode,
                        "level": None if fixed is None else fixed[n],
                        "budget_ms": budgets[n],
                        "lut": lut,
                        "start_at": start + offset,
                        "duration_s": dur,
                        "fps": s.fig8_fps,
                        "peer_timeout_s": peer_timeout,
                    },
                )
            got = pair.collect("run", timeout=t1 + t2 + t3 + 60.0)
            runs[mode_name] = {n: RunRecord.from_payload(got[n]) for n in pair.names}
            # B's times on A's clock (both stamped with time.monotonic, one clock per host)
            shift = runs[mode_name]["B"].info["t0_monotonic"] - runs[mode_name]["A"].info["t0_monotonic"]
            runs[mode_name]["B"].t = [t + shift for t in runs[mode_name]["B"].t]
            runs[mode_name]["B"].info["t_offset_s"] = round(shift, 4)
    finally:
        pair.close()
    alone_lut = lut
    result = _result_header(ctx, "fig8")
    per_mode: dict[str, dict[str, Any]] = {}
    dyn_reactions: dict[str, list[dict[str, Any]]] = {}
    for mode_name in modes:
        models = {}
        for n in pair.names:
            rec = runs[mode_name][n]
            m = analyse_run(
                rec,
                window=ctx.window_size,
                accuracy=ctx.accuracy,
                alone_lut=alone_lut,
                reaction_from=None if mode_name == "coordinated" else dyn_reactions.get(n),
                static=mode_name.startswith("static"),
            )
            if mode_name == "coordinated":
                dyn_reactions[n] = m["events"]
            m["switch_reasons"] = rec.info.get("switch_reasons", {})
            m["statuses"] = rec.info.get("statuses", {})
            m["manager"] = rec.info.get("manager", {})
            models[n] = m
        per_mode[mode_name] = {"combined": _combine(models, runs[mode_name], ctx), "models": models}
    result.update(metric_fields(per_mode["coordinated"]["combined"]))
    result["models"] = {
        n: {**metric_fields(m), "budget_ms": round(budgets[n], 4), "detail": m}
        for n, m in per_mode["coordinated"]["models"].items()
    }
    result["baselines"] = {}
    for mode_name in ("static_alone", "static_safe", "uncoordinated"):
        entry = {
            **metric_fields(per_mode[mode_name]["combined"]),
            "models": {n: metric_fields(m) for n, m in per_mode[mode_name]["models"].items()},
        }
        if mode_name == "static_alone":
            entry["level"] = static_alone
        elif mode_name == "static_safe":
            entry["level"] = static_safe
        result["baselines"][mode_name] = entry
    result.update(
        {
            "settings": s.to_dict(),
            "budgets_ms": {n: round(b, 4) for n, b in budgets.items()},
            "budget_rule": "A: load_budget with the peer running the top level back-to-back as the load; "
            "B: the budget that makes B's safe level half-way between A's safe level and the top "
            "(at least 1.25 x A's)",
            "budget_candidates": rule_a["candidates"],
            "budget_margin": rule_a["margin"],
            "load_effect": rule_a["load_effect"],
            "phases": {"A": [0.0, t1 + t2 + t3], "B": [t1, t1 + t2]},
            "worker_startup_s": round(pair.startup_s, 2),
            "peer_timeout_s": round(peer_timeout, 3),
            "levels": [
                {
                    "level": lvl,
                    "accuracy": ctx.accuracy[lvl],
                    "alone_ms_p50": round(alone[lvl]["p50"], 4),
                    "alone_ms_p95": round(alone[lvl]["p95"], 4),
                    "contention_ms_p50": round(contention[lvl]["p50"], 4),
                    "contention_ms_p95": round(contention[lvl]["p95"], 4),
                }
                for lvl in levels
            ],
            "timeline": {
                mode_name: {
                    n: rec.compact(ctx.settings.max_timeline_points // 2) for n, rec in pair_runs.items()
                }
                for mode_name, pair_runs in runs.items()
            },
        }
    )
    _plot_safely(result, lambda: _plot8(ctx, runs, result))
    return result


def pair_measure(
    pair: WorkerPair,
    levels: Sequence[int],
    frames: int,
    fps: float,
    *,
    hog: bool,
    hog_level: int | None = None,
) -> dict[int, dict[str, float]]:
    """Per-level latencies measured by ``A``, alone or while ``B`` runs ``hog_level`` back-to-back."""
    if hog:
        pair.stop.value = 0
        pair.send("B", {"op": "hog", "level": hog_level, "until": time.monotonic() + 600.0})
        t0 = time.monotonic()
        while not pair.flag["B"].value:
            if time.monotonic() - t0 > 60.0:
                raise RuntimeError("fig8: B did not start loading the device within 60 s")
            time.sleep(0.005)
    pair.send("A", {"op": "measure", "levels": list(levels), "frames": frames, "fps": fps})
    try:
        stats: dict[int, dict[str, float]] = pair.collect("measure", timeout=300.0, names=("A",))["A"]
    finally:
        pair.stop.value = 1
    if hog:
        pair.collect("hog", timeout=60.0, names=("B",))
    return {int(k): v for k, v in stats.items()}


def _combine(
    models: Mapping[str, Mapping[str, Any]], recs: Mapping[str, RunRecord], ctx: Context
) -> dict[str, Any]:
    """Pool two models' metrics: frame-weighted hit rate and accuracy, worst reaction."""
    scored = sum(m["frames_scored"] for m in models.values())
    hits = sum((m["deadline_hit_after_reaction"] or 0.0) * m["frames_scored"] for m in models.values())
    frames = sum(m["frames"] for m in models.values())

    def worst(key: str) -> Any:
        """Worst over the models (``None`` if one never reacted); recovery only where the load stopped."""
        pool = [m for m in models.values() if not key.startswith("recovery") or m.get("recovery_events")]
        values = [m[key] for m in pool]
        if not values:
            return None
        return None if any(v is None for v in values) else max(values)

    return {
        "deadline_hit_after_reaction": hits / scored if scored else None,
        "reaction_frames": worst("reaction_frames"),
        "reaction_ms": worst("reaction_ms"),
        "recovery_frames": worst("recovery_frames"),
        "recovery_ms": worst("recovery_ms"),
        "window_size": ctx.window_size,
        "mean_accuracy": sum(m["mean_accuracy"] * m["frames"] for m in models.values()) / frames,
        "deadline_hit_all": sum(m["deadline_hit_all"] * m["frames"] for m in models.values()) / frames,
        "frames": frames,
    }


# --------------------------------------------------------------------------------------------
# plots


def _shade_load(ax: Any, rec: RunRecord) -> None:
    start = None
    for i, flag in enumerate(rec.load + [0]):
        if flag and start is None:
            start = rec.t[i]
        elif not flag and start is not None:
            end = rec.t[i] if i < len(rec) else rec.t[-1]
            ax.axvspan(start, end, color="0.85", zorder=0, lw=0)
            start = None


def _panel(ax: Any, recs: Sequence[tuple[str, RunRecord, str]], title: str, levels: Sequence[int]) -> None:
    """Latency dots and budget (left axis), level steps (right axis, upper part), load shaded."""
    ax2 = ax.twinx()
    for rec_label, rec, color in recs:
        if not len(rec):
            continue
        ax.plot(rec.t, rec.latency_ms, ".", ms=2.0, color=color, alpha=0.5, label=f"{rec_label} latency")
        ax.step(rec.t, rec.budget_ms, where="post", color=color, ls="--", lw=1.2, label=f"{rec_label} budget")
        ax2.step(rec.t, rec.level, where="post", color=color, lw=1.6, alpha=0.9, label=f"{rec_label} level")
    if recs and len(recs[0][1]):
        _shade_load(ax, recs[0][1])
    top = max((max(r.budget_ms) for _, r, _ in recs if len(r)), default=1.0)
    ax.set_ylim(0, top * 2.2)
    ax.set_ylabel("latency (ms), dots;\nbudget, dashed")
    n = len(levels)
    ax2.set_ylim(min(levels) - 1.2 * n, max(levels) + 0.5)
    ax2.set_yticks(list(levels))
    ax2.set_ylabel("level (steps)")
    ax.set_title(title, fontsize=9)


def _plot(
    ctx: Context, experiment: str, runs: Mapping[str, RunRecord], result: Mapping[str, Any], title: str
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.6 * len(runs)), sharex=True)
    for ax, (name, rec) in zip(np.atleast_1d(axes), runs.items(), strict=True):
        m = result if name == "dynamic" else result["baselines"][name]
        _panel(
            ax,
            [(name, rec, "tab:blue")],
            f"{name}: {_fmt_pct(m['deadline_hit_after_reaction'])} in budget after reaction, "
            f"mean accuracy {m['mean_accuracy']:.1f} %, reaction "
            + ("never" if m["reaction_frames"] is None else f"{m['reaction_frames']} frames"),
            ctx.levels,
        )
    np.atleast_1d(axes)[-1].set_xlabel("time (s); grey = co-located load running; line = level (right axis)")
    fig.suptitle(f"{title} - {ctx.device_name}", fontsize=10)
    fig.tight_layout()
    path = ctx.out / f"{experiment}-{ctx.tag}.png"
    _save_fig(fig, path)
    plt.close(fig)
    return path.name


def _plot8(ctx: Context, runs: Mapping[str, Mapping[str, RunRecord]], result: Mapping[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.6 * len(runs)), sharex=True)
    for ax, (mode, pair_runs) in zip(np.atleast_1d(axes), runs.items(), strict=True):
        m = result if mode == "coordinated" else result["baselines"][mode]
        recs = [
            (n, rec, color)
            for (n, rec), color in zip(pair_runs.items(), ("tab:blue", "tab:orange"), strict=True)
        ]
        _panel(
            ax,
            recs,
            f"{mode}: {_fmt_pct(m['deadline_hit_after_reaction'])} in budget after reaction, "
            f"mean accuracy {m['mean_accuracy']:.1f} %",
            ctx.levels,
        )
    np.atleast_1d(axes)[-1].set_xlabel(
        "time (s) on A's clock; blue = A, orange = B; grey = the other model running"
    )
    fig.suptitle(f"Fig. 8: two classifiers share the device - {ctx.device_name}", fontsize=10)
    fig.tight_layout()
    path = ctx.out / f"fig8-{ctx.tag}.png"
    _save_fig(fig, path)
    plt.close(fig)
    return path.name


def _plot_safely(result: dict[str, Any], plot: Callable[[], str]) -> None:
    """``result["png"]`` = the PNG's name; a plotting error is recorded, not raised (JSON first)."""
    try:
        result["png"] = plot()
    except Exception as exc:
        result["png"] = None
        result["png_error"] = f"{type(exc).__name__}: {exc}"
        print(f"plot failed: {result['png_error']}", file=sys.stderr)


def _save_fig(fig: Any, path: Path) -> None:
    from dynamic_ofa_ros.timing import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f} %"


# --------------------------------------------------------------------------------------------
# set-up and command line


def _device_tag(device: str, name: str) -> str:
    if torch.device(device).type != "cuda":
        return "cpu"
    words = [w for w in name.lower().replace("-", " ").split() if w not in ("nvidia", "geforce", "tesla")]
    return "".join(ch for ch in (words[0] if words else "cuda") if ch.isalnum()) or "cuda"


def start_training_load(settings: Settings, setup_lock: Any = None) -> TrainingLoad:
    """Spawn fig. 7's training job (returns at once; it idles until :meth:`TrainingLoad.on`)."""
    return TrainingLoad(
        settings.device,
        batch=settings.load_batch,
        resolution=settings.load_resolution,
        threads=settings.load_threads,
        timeout_s=settings.worker_start_timeout_s,
        setup_lock=setup_lock,
    )


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


@contextlib.contextmanager
def _locked(lock: Any, timeout_s: float = 300.0) -> Iterator[None]:
    """Hold ``lock`` (a multiprocessing lock, or ``None``: nothing) for the block.

    Gives up waiting after ``timeout_s`` (a process that died holding it must not hang the run).
    """
    got = lock.acquire(timeout=timeout_s) if lock is not None else False
    if lock is not None and not got:
        print(f"set-up lock not free after {timeout_s:.0f} s; going on without it", file=sys.stderr)
    try:
        yield
    finally:
        if got:
            lock.release()


def build_context(
    args: Mapping[str, Any],
    settings: Settings,
    *,
    measure: bool = True,
    quiet: bool = False,
    setup_lock: Any = None,
) -> Context:
    """Load the super-network, the level table, the engine and the images; measure every level alone.

    The engine is built under ``setup_lock`` (a multiprocessing lock shared with the helper
    processes), so that its warm-up measurements (fp16/channels_last choices) are not disturbed
    by another process setting up on the same device.
    """
    from dynamic_ofa_ros.engine import LevelEngine
    from dynamic_ofa_ros.levels import load_level_table
    from dynamic_ofa_ros.supernet import load_supernet
    from dynamic_ofa_ros.timing import device_name

    device = settings.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: CUDA is not available here")
    t0 = time.monotonic()
    supernet = load_supernet(args["model"], device=device, allow_random=bool(args.get("allow_random")))
    table = load_level_table(args["table"], supernet=supernet)
    size = settings.image_size
    with _locked(setup_lock), _quiet_progress():
        engine = LevelEngine(
            supernet, table, device=device, threads=settings.threads, warmup_shapes=[(size, size)]
        )
    images, desc = load_images(args.get("images"), settings.n_images, seed=settings.seed, size=size)
    accuracy = {}
    for lv in table.levels:
        acc = lv.accuracy if lv.accuracy is not None else lv.predicted_accuracy
        accuracy[int(lv.level)] = float(acc) if acc is not None else float(lv.level)
    table_latency = {int(lv.level): float(lv.latency_ms) for lv in table.levels}
    window = settings.window_size or _default_window()
    make_manager = _manager_factory(accuracy, settings, window)
    name = device_name(device)
    ctx = Context(
        settings=settings,
        engine=engine,
        images=images,
        images_desc=desc,
        accuracy=accuracy,
        accuracy_meaningful=bool(supernet.meaningful_accuracy),
        table_latency=table_latency,
        alone={},
        device_name=name,
        tag=str(args.get("tag") or _device_tag(device, name)),
        out=Path(args["out"]),
        model=str(args["model"]),
        table_path=str(args["table"]),
        allow_random=bool(args.get("allow_random")),
        make_manager=make_manager,
        window_size=window,
        args=dict(args),
    )
    ctx.header = {
        "torch": torch.__version__,
        "model": supernet.source,
        "supernet_sha256": supernet.sha256,
        "accuracy_meaningful": ctx.accuracy_meaningful,
        "accuracy_source": (
            f"level table 'accuracy' (top-1 %, {table.levels[0].accuracy_dataset})"
            if table.levels[0].accuracy is not None
            else "level table 'predicted_accuracy' (no measured accuracy in the table)"
        ),
        "table": str(args["table"]),
        "table_device": table.device,
        "images": desc,
        "images_arg": args.get("images"),
        "manager_config": _manager_config(settings, window),
        "lut_source": settings.lut_source,
        "engine_execution": {int(k): v for k, v in dict(getattr(engine, "execution", {})).items()},
        "engine_memory_mb": {int(k): round(float(v), 2) for k, v in dict(engine.memory_mb).items()},
    }
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
    ctx.alone = measure_levels(
        ctx.engine, ctx.images, ctx.levels, frames=s.calib_frames, fps=s.fps, warmup=s.warmup_frames
    )


def _default_window() -> int:
    from dynamic_ofa_ros.manager import ManagerConfig

    return int(ManagerConfig().window_size)


def _manager_factory(accuracy: Mapping[int, float], settings: Settings, window: int) -> Callable[..., Any]:
    """``make(lut, on_switch=None) -> RuntimeManager`` in auto mode with ``lut`` as the levels' latencies."""
    from dynamic_ofa_ros.manager import LevelSpec, ManagerConfig, RuntimeManager

    config = ManagerConfig(window_size=window, violation_statistic=settings.statistic)

    def make(lut: Mapping[int, float], on_switch: Callable[[Any], None] | None = None) -> Any:
        specs = [
            LevelSpec(level=lvl, latency_ms=float(lut[lvl]), accuracy=float(accuracy[lvl]))
            for lvl in sorted(lut)
        ]
        return RuntimeManager(specs, config, clock=time.monotonic, on_switch=on_switch)

    return make


def _manager_config(settings: Settings, window: int) -> dict[str, Any]:
    from dynamic_ofa_ros.manager import ManagerConfig

    cfg = ManagerConfig(window_size=window, violation_statistic=settings.statistic)
    return {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "fig6": run_fig6,
    "fig7": run_fig7,
    "fig8": run_fig8,
}


def _summary_rows(name: str, result: Mapping[str, Any]) -> list[str]:
    rows = []
    entries = [("dynamic" if name != "fig8" else "coordinated", result, None)]
    entries += [(k, v, v.get("level")) for k, v in result.get("baselines", {}).items()]
    for label, m, lvl in entries:
        hit = _fmt_pct(m.get("deadline_hit_after_reaction"))
        rf = m.get("reaction_frames")
        rms = m.get("reaction_ms")
        rec = m.get("recovery_frames")
        lvl_s = (
            ""
            if lvl is None
            else (str(lvl) if not isinstance(lvl, dict) else "/".join(map(str, lvl.values())))
        )
        rows.append(
            f"{name:5} {label:14} {lvl_s:>5} {hit:>9} {'-' if rf is None else rf:>7} "
            f"{'-' if rms is None else f'{rms:.1f}':>8} {'-' if rec is None else rec:>7} "
            f"{m.get('mean_accuracy', float('nan')):8.2f}"
        )
    return rows


def run_experiments(
    args: Mapping[str, Any], settings: Settings, only: Sequence[str]
) -> tuple[dict[str, Any], int]:
    """Run ``only`` (names from :data:`EXPERIMENTS`); write results; ``(results, failures)``.

    The other processes (fig. 7's training job, fig. 8's two classifiers) are spawned first and
    build their models while this process builds its engine; all of them then idle (without
    touching the device) until their experiment, so their start-up costs wall time only once
    and never overlaps a measurement.
    """
    Path(args["out"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars (also in the spawned processes)
    helpers: dict[str, Any] = {}
    setup_lock = mp.get_context("spawn").Lock()
    if "fig7" in only:
        helpers["load"] = start_training_load(settings, setup_lock)
    if "fig8" in only:
        helpers["pair"] = WorkerPair(args, settings, setup_lock)
    try:
        ctx = build_context(args, settings, measure=False, setup_lock=setup_lock)
        ctx.helpers = helpers
        t0 = time.monotonic()
        for helper in list(helpers.values()):
            try:
                helper.wait_ready()
            except Exception as exc:  # the experiment that needs it fails, the others run
                print(f"helper process failed to start: {exc}", flush=True)
        print(f"helper processes ready after {time.monotonic() - t0:.1f} s more", flush=True)
        measure_alone(ctx)
        return _run_all(ctx, only)
    finally:
        for helper in helpers.values():
            helper.close()


def _run_all(ctx: Context, only: Sequence[str]) -> tuple[dict[str, Any], int]:
    results: dict[str, Any] = {}
    failures = 0
    for name in only:
        t0 = time.monotonic()
        try:
            result = RUNNERS[name](ctx)
            result["wall_s"] = round(time.monotonic() - t0, 2)
            path = _write_result(ctx, name, result)
            results[name] = result
            print(f"{name}: {time.monotonic() - t0:.1f} s -> {path}", flush=True)
        except Exception as exc:
            failures += 1
            print(
                f"{name}: FAILED after {time.monotonic() - t0:.1f} s: {type(exc).__name__}: {exc}", flush=True
            )
            print("".join(traceback.format_exc(limit=6).splitlines(keepends=True)[-12:]), flush=True)
    print(
        f"\n{ctx.device_name} | window {ctx.window_size} frames | levels {ctx.levels} | "
        f"alone p95 ms " + ", ".join(f"{lvl}:{ctx.alone[lvl]['p95']:.2f}" for lvl in ctx.levels)
    )
    if not ctx.accuracy_meaningful:
        print("NOTE: random-weight super-network: the accuracies are the table's numbers, not this model's")
    head = ("exp", "run", "level", "hit", "react", "react_ms", "recover", "acc %")
    print(
        f"{head[0]:5} {head[1]:14} "
        + " ".join(f"{h:>{w}}" for h, w in zip(head[2:], (5, 9, 7, 8, 7, 8), strict=True))
    )
    for name, result in results.items():
        for row in _summary_rows(name, result):
            print(row)
        extra = []
        if "budget_ms" in result:
            extra.append(f"budget {result['budget_ms']:.3f} ms")
        if "budgets_ms" in result:
            extra.append("budgets " + ", ".join(f"{k} {v:.3f} ms" for k, v in result["budgets_ms"].items()))
        if "budgets" in result:
            extra.append(
                "budgets " + ", ".join(f"{k} {v['budget_ms']:.3f}" for k, v in result["budgets"].items())
            )
        if "load_check" in result:
            lc = result["load_check"]
            extra.append(
                f"load slows level {lc['level']} x{lc['slowdown_p50']} "
                f"({lc['alone_ms_p50']:.2f} -> {lc['loaded_ms_p50']:.2f} ms p50), "
                f"{lc['calibration_steps_per_s']} train steps/s"
            )
        if extra:
            print(f"{'':5} " + "; ".join(extra))
    return results, failures


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(
        prog="python -m offline_tools.experiments", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--table", help="level table JSON (its BN file beside it); required unless --pack-images")
    p.add_argument("--model", default="embedded", help="embedded | ofa_zoo | random[:seed] | checkpoint path")
    p.add_argument("--allow-random", action="store_true", help="allow --model random (latency only)")
    p.add_argument("--out", help="folder for fig*-<tag>.json/.png; required unless --pack-images")
    p.add_argument(
        "--pack-images",
        nargs=2,
        metavar=("SRC", "DST_ZIP"),
        help="only copy --n-images photos from SRC (folder or zip) into DST_ZIP, then exit",
    )
    p.add_argument("--n-images", type=int, default=None, help="images cycled through by the camera (32)")
    p.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    p.add_argument("--quick", action="store_true", help="half-length phases")
    p.add_argument(
        "--images", default=None, help="folder or zip of JPEG/PNG images (default: Imagenette in shared/)"
    )
    p.add_argument("--fps", type=float, default=None, help="camera rate of figs. 6/7 (0 = back-to-back)")
    p.add_argument(
        "--fig8-fps", type=float, default=None, help="rate of each fig. 8 classifier (0 = back-to-back)"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU inference threads")
    p.add_argument("--window", type=int, default=None, help="manager window (default: ManagerConfig's)")
    p.add_argument("--margin", type=float, default=None, help="fig. 6 budget margin over p95 (default 1.1)")
    p.add_argument(
        "--load-margin", type=float, default=None, help="figs. 7/8 budget margin over p95 under load (1.25)"
    )
    p.add_argument("--lut-source", choices=("measured", "table"), default="measured")
    p.add_argument(
        "--statistic",
        choices=("p95", "mean"),
        default="p95",
        help="window statistic the manager compares with the budget (default p95)",
    )
    p.add_argument("--tag", default=None, help="file-name tag (default: GPU model, e.g. h100, or cpu)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; exit status 0 when every experiment ran (whatever its numbers), else 1."""
    ns = parse_args(argv)
    if ns.pack_images:
        count = pack_images(ns.pack_images[0], ns.pack_images[1], ns.n_images or Settings().n_images)
        print(f"{count} images -> {ns.pack_images[1]}")
        return 0
    if not ns.table or not ns.out:
        print("--table and --out are required", file=sys.stderr)
        return 2
    os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm: keep the output short
    settings = Settings.for_device(ns.device, quick=ns.quick)
    overrides: dict[str, Any] = {"lut_source": ns.lut_source, "statistic": ns.statistic}
    for key, value in (
        ("fps", ns.fps),
        ("fig8_fps", ns.fig8_fps),
        ("threads", ns.threads),
        ("window_size", ns.window),
        ("margin", ns.margin),
        ("load_margin", ns.load_margin),
        ("n_images", ns.n_images),
    ):
        if value is not None:
            overrides[key] = value
    settings = replace(settings, **overrides)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    args = {
        "model": ns.model,
        "table": ns.table,
        "allow_random": ns.allow_random,
        "images": ns.images,
        "out": ns.out,
        "tag": ns.tag,
    }
    t0 = time.monotonic()
    _, failures = run_experiments(args, settings, ns.only)
    print(f"total {time.monotonic() - t0:.1f} s; {failures} experiment(s) failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
