"""The side-by-side table ``dofa-bench`` prints after its JSON: engine vs torch vs stock runtimes.

One row per level of a ``dofa-bench`` result (see :mod:`dynamic_ofa_ros.bench`), Markdown, with
the device, backend and library versions in a header line, so the terminal shows what the JSON
holds without reading it. Only fields the benchmark measured are shown; a missing one is ``-``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_side_by_side"]

_STOCK = ("onnxruntime", "openvino", "openvino_default")


def _ms(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "-"


def _ratio(value: object) -> str:
    return f"{value:.2f}x" if isinstance(value, int | float) else "-"


def _frame_p50(level: Mapping[str, Any], size: str, field: str = "infer_ms_p50") -> object:
    frames = level.get("frames")
    if not isinstance(frames, Mapping):
        return None
    row = frames.get(size)
    return row.get(field) if isinstance(row, Mapping) else None


def _stock_p50(level: Mapping[str, Any], name: str) -> object:
    stock = level.get("stock")
    if not isinstance(stock, Mapping) or not isinstance(stock.get(name), Mapping):
        return None
    return stock[name].get("ms_p50")


def format_side_by_side(result: Mapping[str, Any]) -> str:
    """Markdown per level: engine model-only and from frames (torch's, NumPy's resize), torch, stock."""
    levels: Sequence[Mapping[str, Any]] = result.get("levels") or []
    libraries = result.get("libraries") or {}
    versions = ", ".join(f"{k} {v}" for k, v in libraries.items()) if isinstance(libraries, Mapping) else ""
    load = result.get("load_average")
    head = (
        f"dofa-bench on {result.get('device', '?')}, backend {result.get('backend', '?')} "
        f"{result.get('precision', '')}, {result.get('threads', '?')} thread(s); {versions}"
    )
    if isinstance(load, Mapping):
        head += f"; load average {load.get('start')} -> {load.get('end')}"
    lines = [
        head,
        "p50 in ms; engine = our LevelEngine; stock = the runtime on the same ONNX file, no wrapper",
        "",
        "| level | px | engine model p50 / p99 | engine infer 224x224 | engine infer 480x640 "
        "| 480x640, NumPy resize | torch eager | ONNX Runtime | OpenVINO f32 | OpenVINO default "
        "| model / best stock | 480x640 / best stock | NumPy 480x640 / best stock |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level in levels:
        over_stock = level.get("infer_over_stock")
        big = over_stock.get("480x640") if isinstance(over_stock, Mapping) else None
        numpy_over = level.get("infer_numpy_over_stock")
        big_numpy = numpy_over.get("480x640") if isinstance(numpy_over, Mapping) else None
        stock = " | ".join(_ms(_stock_p50(level, name)) for name in _STOCK)
        lines.append(
            f"| {level.get('level')} | {level.get('resolution')} "
            f"| {_ms(level.get('model_ms_p50'))} / {_ms(level.get('model_ms_p99'))} "
            f"| {_ms(_frame_p50(level, '224x224'))} | {_ms(_frame_p50(level, '480x640'))} "
            f"| {_ms(_frame_p50(level, '480x640', 'infer_numpy_ms_p50'))} "
            f"| {_ms(level.get('static_ms_p50'))} | {stock} "
            f"| {_ratio(level.get('model_over_stock'))} | {_ratio(big)} | {_ratio(big_numpy)} |"
        )
    if "switch_ms_p50" in result:
        lines += [
            "",
            f"switch p50 / p99: {_ms(result.get('switch_ms_p50'))} / {_ms(result.get('switch_ms_p99'))} ms; "
            f"start-up {result.get('startup_s', '-')} s",
        ]
    return "\n".join(lines)
