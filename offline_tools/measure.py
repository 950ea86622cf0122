"""Measured top-1 of a list of sub-networks (``dofa-levels measure``), with resumable records.

:func:`measure_subnets_accuracy` measures each architecture after BN calibration (through an
executor: in-process or Ray workers, :mod:`offline_tools.executors`) and writes **records** in the
``subnet_accuracy.json`` format that ``dofa-levels fit-predictor`` reads
(:func:`offline_tools.predictor_fit.load_accuracy_records`: ``subnets[*]`` with ``resolution``,
``ks``, ``e``, ``d`` and ``holdout_top1`` in percent).

The record file is the source of truth: it is rewritten atomically after every finished
candidate, so an interrupted run keeps everything it finished, and a rerun with the same output
measures only what is missing. Each record carries what its number depends on — the model's
SHA-256, the calibration and validation sources' names and image counts, the backend (torch
version, device kind, dtype, batch size) — and a file is only ever extended by measurements with
the same identity (:class:`RecordsMismatchError` otherwise), so records are never mixed across
models or datasets. Records are written in a fixed order (records of other lists first, then this
list's order), not in completion order, so the file depends neither on the executor nor on
interruptions.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dynamic_ofa_ros.arch import SearchSpace, SubnetConfig
from dynamic_ofa_ros.errors import ArchitectureError, DofaError
from dynamic_ofa_ros.timing import atomic_write_text, device_kind
from offline_tools.executors import (
    CandidateExecutor,
    CandidateResult,
    EvaluationSetup,
    ExecutorSpec,
    ExecutorStats,
    open_executor,
)
from offline_tools.training.config import ACCURACY_FORMAT

__all__ = [
    "IDENTITY_FIELDS",
    "RUN_FIELDS",
    "AccuracyRecords",
    "MeasureError",
    "MeasureSummary",
    "RecordsMismatchError",
    "load_records",
    "measure_subnets_accuracy",
    "plot_measured_vs_predicted",
    "random_architectures",
    "read_architectures",
    "record_identity",
]

#: The fields of a record that say what its number means; a file never mixes two identities.
IDENTITY_FIELDS = ("supernet_sha256", "calibration", "validation", "backend")
#: The fields of a record about how this run went (not part of the measurement).
RUN_FIELDS = ("seconds", "cpu_s", "worker", "attempts")
_VERSION = 1


class MeasureError(DofaError):
    """The architectures or the records cannot be used."""


class RecordsMismatchError(MeasureError):
    """The record file holds measurements of another model, dataset or backend."""


def record_identity(setup: EvaluationSetup) -> dict[str, Any]:
    """What every record measured with ``setup`` carries (:data:`IDENTITY_FIELDS`)."""
    if setup.validation is None:
        raise MeasureError("measuring top-1 needs validation images")
    return {
        "supernet_sha256": setup.supernet.sha256,
        "calibration": setup.calibration.describe(),
        "validation": setup.validation.describe(),
        "backend": {
            "engine": "torch eager",
            "torch": torch.__version__.split("+")[0],
            "device": device_kind(setup.device),
            "dtype": "float32",
            "batch_size": setup.batch_size,
        },
    }


def _describe_mismatch(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    diffs = [
        f"{k} {found.get(k)!r} (now {wanted[k]!r})" for k in IDENTITY_FIELDS if found.get(k) != wanted[k]
    ]
    return "; ".join(diffs)


class AccuracyRecords:
    """A record file: read (checked against ``identity``), extended, rewritten atomically.

    Args:
        path: the JSON file (created on the first :meth:`add`).
        identity: :func:`record_identity` of this run.
        header: extra top-level fields (model name, metric, ...).
    """

    def __init__(
        self, path: str | os.PathLike[str], identity: Mapping[str, Any], header: Mapping[str, Any]
    ) -> None:
        self.path = Path(path)
        self.identity = dict(identity)
        self.header = dict(header)
        self.records: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MeasureError(f"records {self.path}: unreadable ({exc}); give another --out") from exc
        if not isinstance(data, dict) or data.get("format") != ACCURACY_FORMAT:
            raise MeasureError(f"records {self.path}: not a {ACCURACY_FORMAT} file; give another --out")
        subnets = data.get("subnets")
        if not isinstance(subnets, list):
            raise MeasureError(f"records {self.path}: no 'subnets' list")
        for i, rec in enumerate(subnets):
            if not isinstance(rec, dict) or "key" not in rec:
                raise MeasureError(
                    f"records {self.path}: subnets[{i}] is not a record of `dofa-levels measure`"
                )
            if any(rec.get(k) != self.identity[k] for k in IDENTITY_FIELDS):
                raise RecordsMismatchError(
                    f"records {self.path}: subnets[{i}] was measured with another setup: "
                    f"{_describe_mismatch(rec, self.identity)}; give another --out"
                )
            self.records[str(rec["key"])] = rec
            self._order.append(str(rec["key"]))

    def plan(self, cfgs: Iterable[SubnetConfig]) -> None:
        """Fix the file order: records of other plans first (as they were), then ``cfgs`` in order.

        So a run that was interrupted and resumed writes the same file as one that was not.
        """
        keys = list(dict.fromkeys(cfg.key() for cfg in cfgs))
        planned = set(keys)
        self._order = [k for k in self._order if k not in planned] + keys

    def add(self, result: CandidateResult, *, predicted: float | None = None) -> dict[str, Any]:
        """Record ``result`` and rewrite the file; returns the record."""
        if result.top1 is None:
            raise MeasureError(f"{result.key}: no top-1 was measured")
        rec: dict[str, Any] = {
            **result.config.to_dict(),
            "key": result.key,
            "holdout_top1": round(float(result.top1), 4),
            **self.identity,
            "seconds": {k: round(v, 4) for k, v in sorted(result.seconds.items())},
            "cpu_s": round(result.cpu_s, 4),
            "worker": result.worker,
            "attempts": result.attempts,
        }
        if predicted is not None:
            rec["predicted_top1"] = round(float(predicted), 4)
        self.records[result.key] = rec
        if result.key not in self._order:
            self._order.append(result.key)
        self.write()
        return rec

    def ordered(self) -> list[dict[str, Any]]:
        """The records in file order."""
        return [self.records[k] for k in self._order if k in self.records]

    def write(self, *, complete: bool | None = None) -> None:
        """Rewrite the file atomically (one record per line)."""
        records = self.ordered()
        head = {
            "format": ACCURACY_FORMAT,
            "version": _VERSION,
            **self.header,
            **self.identity,
            "planned": len(self._order),
            "measured": len(records),
            "complete": len(records) == len(self._order) if complete is None else complete,
        }
        lines = [json.dumps(rec, sort_keys=True, allow_nan=False) for rec in records]
        body = json.dumps(head, indent=1, allow_nan=False)[:-2]
        text = body + ',\n "subnets": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
        atomic_write_text(self.path, text)


# --------------------------------------------------------------------------------------------
# Which architectures
# --------------------------------------------------------------------------------------------


def read_architectures(path: str | os.PathLike[str]) -> list[tuple[SubnetConfig, float | None]]:
    """Architectures (and their predicted top-1 when the file has one) from a JSON file.

    Accepts a list of architectures; a family or level table (``levels``); a search report
    (its Pareto ``front``); records (``subnets``/``records``); or ``{"architectures": [...]}``.
    Duplicates (same network) are dropped, the first kept.
    """
    file = Path(path)
    try:
        data: Any = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MeasureError(f"architectures file {file} does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MeasureError(f"{file}: not valid JSON ({exc})") from exc
    predicted_key = "predicted_accuracy"
    if isinstance(data, Mapping):
        if data.get("format") == "dynamic_ofa_ros.search_report":
            predicted_key = "accuracy" if data.get("meta", {}).get("predicted") else ""
        for key in ("front", "levels", "subnets", "records", "architectures"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list) or not data:
        raise MeasureError(
            f"{file}: expected a non-empty list of architectures (or a family, report, records)"
        )
    out: list[tuple[SubnetConfig, float | None]] = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        try:
            cfg = SubnetConfig.from_dict(item, where=f"{file}[{i}]").canonical()
        except ArchitectureError as exc:
            raise MeasureError(str(exc)) from exc
        if cfg.key() in seen:
            continue
        seen.add(cfg.key())
        guess = item.get(predicted_key) if predicted_key and isinstance(item, Mapping) else None
        out.append((cfg, float(guess) if isinstance(guess, int | float) else None))
    return out


def random_architectures(space: SearchSpace, n: int, *, seed: int) -> list[SubnetConfig]:
    """``n`` distinct random architectures of ``space`` (``random.Random(seed)``; a seed gives a list)."""
    if n < 1:
        raise MeasureError(f"--random {n}: give at least 1")
    rng = random.Random(seed)
    out: dict[str, SubnetConfig] = {}
    for _ in range(100 * n):
        cfg = space.sample(rng).canonical()
        out.setdefault(cfg.key(), cfg)
        if len(out) == n:
            return list(out.values())
    raise MeasureError(f"the space has fewer than {n} distinct architectures (found {len(out)})")


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@dataclass
class MeasureSummary:
    """What :func:`measure_subnets_accuracy` did."""

    out: Path
    planned: int
    already: int
    """Candidates found in the record file (not measured again)."""
    measured: int
    stats: ExecutorStats | None
    records: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        """One summary line for the terminal."""
        head = (
            f"measure: {self.planned} planned, {self.already} already in {self.out}, {self.measured} measured"
        )
        return head if self.stats is None else f"{head}; {self.stats.summary_line()}"


def measure_subnets_accuracy(
    cfgs: Sequence[SubnetConfig],
    setup: EvaluationSetup,
    out: str | os.PathLike[str],
    *,
    executor: ExecutorSpec | CandidateExecutor | None = None,
    predicted: Mapping[str, float] | None = None,
    header: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_result: Callable[[CandidateResult], None] | None = None,
) -> MeasureSummary:
    """Measure top-1 of ``cfgs`` after BN calibration and record it in ``out`` (module docstring).

    Args:
        cfgs: the architectures (each a sub-network of ``setup.supernet``).
        setup: super-network, calibration and validation images, device, batch size.
        out: the record file; records already in it (same identity) are not measured again.
        executor: how to run (default :class:`ExecutorSpec` ``local``); an open executor (made
            with ``setup``) is used and left open, a spec is opened here and closed.
        predicted: predicted top-1 per architecture key, stored beside the measurement.
        header: extra top-level fields of the file.
        progress: show the progress bar.
        on_result: called after each new record is written.

    Returns:
        Counts, the executor's statistics and every record of the file.

    Raises:
        RecordsMismatchError: ``out`` holds records of another model, dataset or backend.
        MeasureError: no architectures, or an unreadable record file.
    """
    if not cfgs:
        raise MeasureError("no architectures to measure")
    space = setup.supernet.search_space(resolutions=setup.supernet.resolutions)
    for cfg in cfgs:
        try:
            space.check(cfg)
        except ArchitectureError as exc:
            raise MeasureError(f"{cfg.key()}: {exc}; not a sub-network of {setup.supernet.name}") from exc
    identity = record_identity(setup)
    records = AccuracyRecords(
        out, identity, {"supernet": setup.supernet.name, **_metric(setup), **(header or {})}
    )
    unique = list({c.key(): c for c in cfgs}.values())
    records.plan(unique)
    todo = [c for c in unique if c.key() not in records.records]
    summary = MeasureSummary(records.path, len(unique), len(unique) - len(todo), 0, None)
    guesses = predicted or {}
    if todo:

        def keep(result: CandidateResult) -> None:
            records.add(result, predicted=guesses.get(result.key))
            summary.measured += 1
            if on_result is not None:
                on_result(result)

        if executor is None or isinstance(executor, ExecutorSpec):
            opened = open_executor(executor or ExecutorSpec(), setup, progress=progress)
            try:
                opened.run(todo, on_result=keep)
            finally:
                opened.close()
            summary.stats = opened.stats
        else:
            executor.run(todo, on_result=keep)
            summary.stats = executor.stats
    records.write()
    summary.records = records.ordered()
    return summary


def _metric(setup: EvaluationSetup) -> dict[str, str]:
    assert setup.validation is not None
    return {
        "metric": (
            f"holdout_top1: top-1 in percent on {setup.validation.name} after BN calibration "
            f"(reset + cumulative average) on {setup.calibration.name}"
        )
    }


# --------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------


def load_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a file written by :func:`measure_subnets_accuracy` (``subnets``)."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MeasureError(f"records {file} do not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MeasureError(f"records {file}: unreadable ({exc})") from exc
    subnets = data.get("subnets") if isinstance(data, dict) else None
    if not isinstance(subnets, list):
        raise MeasureError(f"records {file}: no 'subnets' list")
    return [rec for rec in subnets if isinstance(rec, dict)]


def plot_measured_vs_predicted(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Measured top-1 against predicted top-1 of the records that have both, with y = x.

    The legend gives the RMSE, the mean offset (predicted − measured) and Spearman's rank
    correlation; points are coloured by resolution.
    """
    from offline_tools.plot import pyplot, save_png
    from offline_tools.stats import spearman_rank_correlation

    pairs = [
        (float(r["predicted_top1"]), float(r["holdout_top1"]), int(r.get("resolution", 0)))
        for r in records
        if isinstance(r.get("predicted_top1"), int | float) and isinstance(r.get("holdout_top1"), int | float)
    ]
    if len(pairs) < 2:
        raise MeasureError(
            f"{len(pairs)} record(s) have a predicted top-1; measure with --accuracy-predictor (or from a "
            "family/search report with predictions) to plot measured against predicted"
        )
    pred = [p for p, _, _ in pairs]
    meas = [m for _, m, _ in pairs]
    rmse = (sum((p - m) ** 2 for p, m in zip(pred, meas, strict=True)) / len(pairs)) ** 0.5
    offset = sum(p - m for p, m in zip(pred, meas, strict=True)) / len(pairs)
    rho = spearman_rank_correlation(pred, meas)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    points = ax.scatter(pred, meas, c=[r for _, _, r in pairs], cmap="viridis", s=14)
    fig.colorbar(points, ax=ax, label="resolution (px)")
    lo, hi = min(*pred, *meas) - 0.5, max(*pred, *meas) + 0.5
    ax.plot(
        [lo, hi],
        [lo, hi],
        "--",
        color="0.4",
        lw=1,
        label=f"y = x  (n={len(pairs)}, RMSE {rmse:.2f}, offset {offset:+.2f}, Spearman {rho:.3f})",
    )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted top-1 (%)")
    ax.set_ylabel("measured top-1 (%)")
    ax.set_title(title or "Measured against predicted top-1")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    try:
        return save_png(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
