"""What the level-building subcommands write and print: families, level rows, search reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dynamic_ofa_ros import bn
from dynamic_ofa_ros.arch import SUPERNET_NAME, SubnetConfig
from dynamic_ofa_ros.levels import Level, LevelTable
from dynamic_ofa_ros.supernet import Supernet
from offline_tools.accuracy import AccuracySource, MLPAccuracyPredictor
from offline_tools.latency.table import LatencyTable
from offline_tools.pareto import Candidate
from offline_tools.search import SearchResult

__all__ = [
    "describe_accuracy",
    "family_table",
    "level_rows",
    "macs_of",
    "print_levels",
    "search_report",
]

_ZERO_SHA = "0" * 64


def _identity(model: Supernet | None) -> dict[str, Any]:
    """The table's ``supernet`` object; a placeholder when the search ran without a model."""
    if model is not None:
        return dict(model.identity())
    return {
        "name": SUPERNET_NAME,
        "source": "unspecified (searched with an accuracy predictor and a latency table; "
        "pass --model to record it)",
        "sha256": _ZERO_SHA,
    }


def _profiling_of(table: LatencyTable) -> dict[str, Any]:
    """The table's ``profiling`` object: the latency table's scalar metadata and correction."""
    meta: dict[str, Any] = {
        k: v for k, v in table.metadata.items() if isinstance(v, str | int | float | bool) or v is None
    }
    if isinstance(table.metadata.get("isa"), list):  # the backend header of a level table needs it whole
        meta["isa"] = list(table.metadata["isa"])
    meta["latency_source"] = f"look-up table {table.name}"
    if table.correction is not None:
        meta["correction"] = table.correction.to_dict()
    return meta


def describe_accuracy(accuracy: AccuracySource) -> dict[str, Any]:
    """What the accuracies are: the predictor's metadata, or measured/predicted and the dataset."""
    if isinstance(accuracy, MLPAccuracyPredictor):
        return dict(accuracy.describe())
    return {"kind": "measured" if accuracy.measured else "predicted", "dataset": accuracy.dataset}


def macs_of(model: Supernet | None, cfgs: Sequence[SubnetConfig]) -> dict[str, float] | None:
    """Millions of MACs per architecture key (None without a model)."""
    if model is None:
        return None
    return {c.key(): float(bn.count_macs(bn.extract_subnet(model.net, c), c.resolution)) for c in cfgs}


def level_rows(
    cands: Sequence[Candidate], accuracy: AccuracySource, macs: Mapping[str, float] | None = None
) -> list[Level]:
    """Levels 1..n of ``cands``: measured accuracy in ``accuracy``, predicted in ``predicted_accuracy``."""
    rows = []
    for n, cand in enumerate(cands, start=1):
        acc = round(float(cand.accuracy), 3)
        rows.append(
            Level(
                level=n,
                config=cand.config,
                latency_ms=round(float(cand.latency_ms), 4),
                latency_p95_ms=None,
                accuracy=acc if accuracy.measured else None,
                predicted_accuracy=None if accuracy.measured else acc,
                accuracy_dataset=accuracy.dataset if accuracy.measured else None,
                macs_m=None if macs is None else round(macs[cand.config.key()], 3),
            )
        )
    return rows


def family_table(
    result: SearchResult,
    *,
    table: LatencyTable,
    accuracy: AccuracySource,
    model: Supernet | None,
    device: str,
) -> LevelTable:
    """The searched family as a level table without BN statistics (``bn_file: null``)."""
    levels = level_rows(result.levels, accuracy, macs_of(model, [c.config for c in result.levels]))
    device_name = str(table.metadata.get("device_name") or Path(str(table.name)).name)
    summary = result.summary()
    summary.pop("targets", None)
    return LevelTable(
        device=device,
        device_name=device_name,
        profiling=_profiling_of(table),
        supernet=_identity(model),
        calibration={},
        levels=levels,
        bn=None,
        extra={"search": {"accuracy_source": describe_accuracy(accuracy), **summary}},
    )


def search_report(result: SearchResult, *, device: str, accuracy: AccuracySource) -> dict[str, Any]:
    """The search report (``--report``): candidates, Pareto front and levels, for Fig. 3."""
    return {
        "format": "dynamic_ofa_ros.search_report",
        "version": 1,
        "meta": {
            "device": device,
            "predicted": not accuracy.measured,
            "accuracy_source": describe_accuracy(accuracy),
        },
        "summary": result.summary(),
        "candidates": [[round(c.latency_ms, 4), round(c.accuracy, 4)] for c in result.candidates],
        "front": [c.to_dict() for c in result.front],
        "levels": [c.to_dict() for c in result.levels],
    }


def print_levels(levels: Sequence[Level]) -> None:
    """One line per level on stdout: latency, accuracy (measured or predicted), MACs, architecture."""
    for lv in levels:
        acc = lv.accuracy if lv.accuracy is not None else lv.predicted_accuracy
        kind = "measured" if lv.accuracy is not None else "predicted"
        acc_text = "n/a" if acc is None else f"{acc:6.2f} % ({kind})"
        p95 = f" p95 {lv.latency_p95_ms:9.3f}" if lv.latency_p95_ms is not None else ""
        macs = f" {lv.macs_m:7.1f} MMACs" if lv.macs_m is not None else ""
        print(f"  level {lv.level}: {lv.latency_ms:9.3f} ms{p95}  {acc_text}{macs}  {lv.config.summary()}")
