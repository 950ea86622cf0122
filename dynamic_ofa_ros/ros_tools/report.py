"""The demo's record of what the classifiers did: predictions, per-phase statistics, table, timeline plot."""

from __future__ import annotations

import io
import math
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dynamic_ofa_ros.timing import atomic_write_bytes, percentile

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from dynamic_ofa_ros.msg import ManagerStatus, Prediction

__all__ = ["PhaseResult", "Recorder", "Sample", "format_table", "phase_result", "plot_timeline"]

#: node colours of the timeline, in the order the nodes first predicted
_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


@dataclass
class Sample:
    """One prediction as the demo saw it (``t`` seconds since the demo started)."""

    t: float
    node: str
    level: int
    latency_ms: float
    inference_ms: float
    label: str
    budget_ms: float


@dataclass
class PhaseResult:
    """Per-phase statistics of one node."""

    phase: str
    node: str
    start_s: float
    end_s: float
    budget_ms: float
    frames: int
    fps: float
    levels: dict[str, int]
    final_level: int
    mean_ms: float
    p95_ms: float
    hit_pct: float
    expected_accuracy: float


@dataclass
class Recorder:
    """Collects predictions and status of the classifier nodes, with the budget in force.

    Subscription callbacks (the executor thread) append; the demo's thread reads under ``lock``.
    """

    t0: float
    budgets: dict[str, float] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    status: dict[str, ManagerStatus] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        """Seconds since the demo started."""
        return time.monotonic() - self.t0

    def on_prediction(self, node: str, msg: Prediction) -> None:
        """Record a ``Prediction`` of ``node`` with the budget in force now."""
        with self.lock:
            self.samples.append(
                Sample(
                    t=self.now(),
                    node=node,
                    level=int(msg.level),
                    latency_ms=float(msg.latency_ms),
                    inference_ms=float(msg.inference_ms),
                    label=str(msg.label),
                    budget_ms=self.budgets.get(node, 0.0),
                )
            )

    def on_status(self, node: str, msg: ManagerStatus) -> None:
        """Keep the latest ``ManagerStatus`` of ``node``."""
        with self.lock:
            self.status[node] = msg

    def count(self, node: str) -> int:
        """Predictions of ``node`` so far."""
        with self.lock:
            return sum(1 for s in self.samples if s.node == node)

    def window(self, node: str, start: float, end: float) -> list[Sample]:
        """Predictions of ``node`` with ``start <= t < end``."""
        with self.lock:
            return [s for s in self.samples if s.node == node and start <= s.t < end]


def phase_result(
    recorder: Recorder,
    phase: str,
    node: str,
    start: float,
    end: float,
    budget: float,
    accuracy: Sequence[float],
) -> PhaseResult:
    """Statistics of ``node`` between ``start`` and ``end`` (seconds since the demo started).

    Args:
        recorder: the predictions.
        phase: the phase's name.
        node: the classifier node.
        start: phase start (s).
        end: phase end (s).
        budget: the budget in force (ms; 0 = none, every frame a hit).
        accuracy: the expected top-1 of each level (index = level - 1).
    """
    samples = recorder.window(node, start, end)
    lat = [s.latency_ms for s in samples]
    levels: dict[str, int] = {}
    for s in samples:
        levels[str(s.level)] = levels.get(str(s.level), 0) + 1
    final = samples[-1].level if samples else 0
    hits = sum(1 for s in samples if budget <= 0 or s.latency_ms <= budget)
    return PhaseResult(
        phase=phase,
        node=node,
        start_s=round(start, 2),
        end_s=round(end, 2),
        budget_ms=round(budget, 2),
        frames=len(samples),
        fps=round(len(samples) / max(end - start, 1e-9), 2),
        levels=levels,
        final_level=final,
        mean_ms=round(statistics.fmean(lat), 2) if lat else math.nan,
        p95_ms=round(percentile(lat, 95), 2),
        hit_pct=round(100.0 * hits / len(samples), 1) if samples else math.nan,
        expected_accuracy=round(accuracy[final - 1], 2) if final else math.nan,
    )


def format_table(results: Sequence[PhaseResult], *, meaningful: bool) -> str:
    """The per-phase table printed at the end (``meaningful``: the model's accuracy means something)."""
    acc = "exp. top-1 %" if meaningful else "exp. top-1 % (random weights)"
    header = (
        f"{'phase':<22} {'node':<13} {'budget ms':>9} {'levels used':<30} {'final':>5} {'fps':>5} "
        f"{'mean ms':>8} {'p95 ms':>7} {'hit %':>6}  {acc}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        used = " ".join(f"L{k}:{v}" for k, v in sorted(r.levels.items(), key=lambda kv: int(kv[0])))
        budget = f"{r.budget_ms:.1f}" if r.budget_ms > 0 else "none"
        lines.append(
            f"{r.phase:<22} {r.node:<13} {budget:>9} {used:<30} {r.final_level:>5} {r.fps:>5.1f} "
            f"{r.mean_ms:>8.1f} {r.p95_ms:>7.1f} {r.hit_pct:>6.1f}  {r.expected_accuracy:.1f}"
        )
    return "\n".join(lines)


def _shade_phases(ax_lat: Axes, ax_lvl: Axes, phases: Sequence[tuple[str, float, float]]) -> None:
    """Alternating grey bands for the phases, their names above the latency plot."""
    for i, (name, start, stop) in enumerate(phases):
        for ax in (ax_lat, ax_lvl):
            ax.axvspan(start, stop, color="0.93" if i % 2 else "0.86", zorder=0)
        ax_lat.text(
            (start + stop) / 2,
            1.0,
            name,
            transform=ax_lat.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
        )


def _plot_node(
    ax_lat: Axes,
    ax_lvl: Axes,
    node: str,
    samples: Sequence[Sample],
    steps: Sequence[tuple[float, float]],
    *,
    colour: str,
    end: float,
) -> None:
    """One node's latency dots, budget steps and moving mean on top, its level below."""
    ax_lat.scatter(
        [s.t for s in samples],
        [s.latency_ms for s in samples],
        s=5,
        color=colour,
        alpha=0.6,
        label=f"{node} latency",
        zorder=2,
    )
    if steps:
        xs = [t for t, _ in steps] + [end]
        ys = [b if b > 0 else np.nan for _, b in steps]
        ax_lat.step(
            xs,
            ys + ys[-1:],
            where="post",
            color=colour,
            linestyle="--",
            linewidth=1.5,
            label=f"{node} budget",
            zorder=3,
        )
    if len(samples) >= 10:
        mean = np.convolve([s.latency_ms for s in samples], np.ones(10) / 10, mode="valid")
        ax_lat.plot(
            [s.t for s in samples[9:]],
            mean,
            color=colour,
            linewidth=1.2,
            label=f"{node} mean of 10",
            zorder=4,
        )
    ax_lvl.step([s.t for s in samples], [s.level for s in samples], where="post", color=colour, label=node)


def plot_timeline(
    recorder: Recorder,
    phases: Sequence[tuple[str, float, float]],
    budget_steps: dict[str, list[tuple[float, float]]],
    n_levels: int,
    path: Path,
    *,
    title: str,
) -> None:
    """Latency (dots) with budget (steps) on top, level over time below; phases shaded. Atomic write.

    Args:
        recorder: the predictions.
        phases: ``(name, start s, end s)`` of each shaded phase.
        budget_steps: per node, ``(time s, budget ms)`` whenever its budget changed (0 = none).
        n_levels: the number of levels (y range of the level plot).
        path: the PNG to write.
        title: the figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_lvl) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=(2, 1))
    end = max((s.t for s in recorder.samples), default=1.0)
    _shade_phases(ax_lat, ax_lvl, phases)
    nodes = list(dict.fromkeys(s.node for s in recorder.samples))
    for i, node in enumerate(nodes):
        samples = [s for s in recorder.samples if s.node == node]
        _plot_node(
            ax_lat,
            ax_lvl,
            node,
            samples,
            budget_steps.get(node, []),
            colour=_COLOURS[i % len(_COLOURS)],
            end=end,
        )
    ax_lat.set_ylabel("end-to-end latency (ms)")
    ax_lat.set_yscale("log")
    ax_lat.legend(loc="upper left", fontsize=7, ncol=3)
    ax_lat.set_title(title, fontsize=10, pad=16)
    ax_lvl.set_ylabel("level")
    ax_lvl.set_yticks(range(1, n_levels + 1))
    ax_lvl.set_ylim(0.5, n_levels + 0.5)
    ax_lvl.set_xlabel("time (s)")
    ax_lvl.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
