"""Figures of the paper: Fig. 3 (search candidates, Pareto front, chosen levels) and Fig. 4 (level tables).

Both render with matplotlib's Agg backend (no display needed) to PNG, written atomically.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from dynamic_ofa_ros.errors import DofaError
from dynamic_ofa_ros.levels import LevelTable
from dynamic_ofa_ros.timing import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PlotError", "load_search_report", "plot_search", "plot_tables", "pyplot", "save_png"]


class PlotError(DofaError):
    """A figure's input is missing or malformed."""


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Figure, path: str | os.PathLike[str], *, dpi: int, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` (must end in ``.png``) atomically; ``tight``: crop to the content."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise PlotError(f"{target}: figures are written as .png")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    atomic_write_bytes(target, buf.getvalue())
    return target


def load_search_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a search report written by ``dofa-levels search --report``; :class:`PlotError` if malformed."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlotError(f"search report {file} does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlotError(f"{file}: not a JSON search report ({exc})") from exc
    if not isinstance(data, dict) or not all(k in data for k in ("candidates", "front", "levels")):
        raise PlotError(
            f"{file}: not a search report (needs candidates, front, levels); write one with --report"
        )
    return data


def plot_search(
    report: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Fig. 3: every evaluated candidate (grey), the Pareto front (line) and the chosen levels (numbered)."""
    plt = pyplot()
    try:
        cands = [(float(lat), float(acc)) for lat, acc in report["candidates"]]
        front = [(float(p["latency_ms"]), float(p["accuracy"])) for p in report["front"]]
        levels = [(float(p["latency_ms"]), float(p["accuracy"])) for p in report["levels"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise PlotError(f"search report: malformed entries ({exc})") from exc
    if not cands:
        raise PlotError("search report: no candidates to plot")
    meta = report.get("meta", {})
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    ax.scatter(
        [c[0] for c in cands],
        [c[1] for c in cands],
        s=3,
        c="0.65",
        alpha=0.35,
        linewidths=0,
        label=f"candidates ({len(cands)})",
        rasterized=True,
    )
    ax.plot(
        [p[0] for p in front],
        [p[1] for p in front],
        "-",
        drawstyle="steps-post",
        color="tab:blue",
        lw=1.5,
        label=f"Pareto front ({len(front)})",
    )
    ax.plot(
        [p[0] for p in levels],
        [p[1] for p in levels],
        "o",
        color="tab:red",
        ms=7,
        label=f"levels ({len(levels)})",
        zorder=5,
    )
    for i, (lat, acc) in enumerate(levels, start=1):
        ax.annotate(f"L{i}", (lat, acc), textcoords="offset points", xytext=(6, -10), fontsize=9)
    kind = "predicted " if meta.get("predicted", True) else ""
    ax.set_xlabel(f"latency (ms){' on ' + meta['device'] if meta.get('device') else ''}")
    ax.set_ylabel(f"{kind}top-1 accuracy (%)")
    ax.set_title(title or meta.get("title") or "Dynamic-OFA search: candidates, Pareto front and levels")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    try:
        return save_png(fig, path, dpi=dpi)
    finally:
        plt.close(fig)


def plot_tables(
    tables: Sequence[tuple[str, LevelTable]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    log_latency: bool = False,
    dpi: int = 150,
) -> Path:
    """Fig. 4: accuracy against latency of each level table (measured accuracy, else predicted, hollow)."""
    if not tables:
        raise PlotError("give at least one level table to plot")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    for label, table in tables:
        lat = [lv.latency_ms for lv in table.levels]
        acc = [lv.rank_accuracy for lv in table.levels]
        if any(a is None for a in acc):
            raise PlotError(f"{label}: some levels have no accuracy (measured or predicted); nothing to plot")
        measured = all(lv.accuracy is not None for lv in table.levels)
        (line,) = ax.plot(
            lat,
            acc,
            "-o",
            ms=6,
            mfc=None if measured else "none",
            label=f"{label} ({table.device}, {'measured' if measured else 'predicted'})",
        )
        for lv, x, y in zip(table.levels, lat, acc, strict=True):
            ax.annotate(
                str(lv.level),
                (x, y),
                textcoords="offset points",
                xytext=(4, -11),
                fontsize=8,
                color=line.get_color(),
            )
    if log_latency:
        ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "Level tables: accuracy against latency")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    try:
        return save_png(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
