"""The experiments' figures: one panel per run, latency and budget (left axis), level (right axis).

The load interval (training job or peer classifier running) is shaded. Written with
:func:`offline_tools.plot.save_png` (atomic PNG); a plotting error never loses the JSON result
(:func:`plot_safely`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from offline_tools.experiments.records import Headline, RunRecord
from offline_tools.plot import save_png

__all__ = ["fmt_pct", "plot_pairs", "plot_runs", "plot_safely"]

_DPI = 110


def fmt_pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal, ``n/a`` for ``None``."""
    return "n/a" if value is None else f"{100.0 * value:.1f} %"


def _shade_load(ax: Axes, rec: RunRecord) -> None:
    start = None
    for i, flag in enumerate([*rec.load, 0]):
        if flag and start is None:
            start = rec.t[i]
        elif not flag and start is not None:
            end = rec.t[i] if i < len(rec) else rec.t[-1]
            ax.axvspan(start, end, color="0.85", zorder=0, lw=0)
            start = None


def _panel(ax: Axes, recs: Sequence[tuple[str, RunRecord, str]], title: str, levels: Sequence[int]) -> None:
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


def _panel_title(name: str, m: Headline, *, reaction: bool) -> str:
    title = (
        f"{name}: {fmt_pct(m['deadline_hit_after_reaction'])} in budget after reaction, "
        f"mean accuracy {m['mean_accuracy']:.1f} %"
    )
    if reaction:
        frames = m["reaction_frames"]
        title += ", reaction " + ("never" if frames is None else f"{frames} frames")
    return title


def _panels(n: int) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(10, 2.6 * n))
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)
    return fig, [row[0] for row in axes]


def plot_runs(
    path: Path,
    runs: Mapping[str, RunRecord],
    headlines: Mapping[str, Headline],
    *,
    title: str,
    levels: Sequence[int],
    device_name: str,
) -> str:
    """Figs. 6/7: one panel per run (``headlines`` keyed like ``runs``); the PNG's file name."""
    fig, axes = _panels(len(runs))
    for ax, (name, rec) in zip(axes, runs.items(), strict=True):
        _panel(ax, [(name, rec, "tab:blue")], _panel_title(name, headlines[name], reaction=True), levels)
    axes[-1].set_xlabel("time (s); grey = co-located load running; line = level (right axis)")
    fig.suptitle(f"{title} - {device_name}", fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=_DPI, tight=False)
    return path.name


def plot_pairs(
    path: Path,
    runs: Mapping[str, Mapping[str, RunRecord]],
    headlines: Mapping[str, Headline],
    *,
    levels: Sequence[int],
    device_name: str,
) -> str:
    """Fig. 8: one panel per mode with both models (A blue, B orange); the PNG's file name."""
    fig, axes = _panels(len(runs))
    for ax, (mode, pair_runs) in zip(axes, runs.items(), strict=True):
        recs = [
            (n, rec, color)
            for (n, rec), color in zip(pair_runs.items(), ("tab:blue", "tab:orange"), strict=True)
        ]
        _panel(ax, recs, _panel_title(mode, headlines[mode], reaction=False), levels)
    axes[-1].set_xlabel("time (s) on A's clock; blue = A, orange = B; grey = the other model running")
    fig.suptitle(f"Fig. 8: two classifiers share the device - {device_name}", fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=_DPI, tight=False)
    return path.name


def plot_safely(result: dict[str, object], plot: Callable[[], str]) -> None:
    """``result["png"]`` = the PNG's name; a plotting error is recorded, not raised (JSON first)."""
    try:
        result["png"] = plot()
    except Exception as exc:
        result["png"] = None
        result["png_error"] = f"{type(exc).__name__}: {exc}"
        print(f"plot failed: {result['png_error']}", file=sys.stderr)
