"""The per-operator latency look-up table: read, predict, correct, write (torch-free).

A table gives, for every input resolution, the latency statistics (:class:`OperatorStats`, in
milliseconds) of every operator a sub-network can contain; the predicted latency of a
sub-network is the sum of its operators' means (:meth:`LatencyTable.predict_raw`), optionally
mapped through a fitted affine :class:`LatencyCorrection`.

On disk a table is a directory of ``<resolution>_lookup_table.yaml`` (OFA) or
``<resolution>_lookup_table.json`` files, each mapping key -> ``{count, mean, std}``, plus an
optional ``metadata.json`` (device, execution mode, threads, versions, the correction).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dynamic_ofa_ros.arch import SearchSpace, SubnetConfig
from offline_tools.errors import LatencyTableError
from offline_tools.latency.geometry import MobileNetV3Geometry, OperatorSpec, cached_operator_keys

__all__ = [
    "METADATA_FILE",
    "TABLE_FILE_RE",
    "TABLE_FORMAT",
    "TABLE_VERSION",
    "TRIM_FRACTION",
    "LatencyCorrection",
    "LatencyTable",
    "OperatorStats",
    "fit_correction",
    "holds_table",
    "summarize_samples",
]

METADATA_FILE = "metadata.json"
"""Name of the metadata file written beside the per-resolution tables."""

TABLE_FORMAT = "dynamic_ofa_ros.latency_table"
TABLE_VERSION = 1
TABLE_FILE_RE = re.compile(r"^(\d+)_lookup_table\.(yaml|yml|json)$")
"""File name of one resolution's table; group 1 is the resolution."""

TRIM_FRACTION = 0.5
"""Fraction of the slowest samples dropped before averaging: ``mean`` is the mean of the fastest half.

Robust to interference from other processes (on a shared machine most slow samples are calls
that were preempted or whose caches another process flushed); used for operators and
end-to-end measurements alike, so both estimate the same quantity."""

_PROFILE_COMMAND = "dofa-levels profile"


@dataclass(frozen=True)
class OperatorStats:
    """Latency statistics of one operator, in milliseconds."""

    count: int
    mean: float
    std: float

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready form ``{"count", "mean", "std"}``."""
        return {"count": self.count, "mean": self.mean, "std": self.std}


def summarize_samples(samples_ms: Sequence[float], *, trim: float = TRIM_FRACTION) -> OperatorStats:
    """Mean/std after dropping the slowest ``trim`` fraction (interference from other processes)."""
    if not samples_ms:
        raise LatencyTableError("no timing samples; use at least one iteration")
    ordered = sorted(samples_ms)
    keep = max(1, len(ordered) - int(len(ordered) * trim))
    kept = ordered[:keep]
    mean = statistics.fmean(kept)
    std = statistics.pstdev(kept) if len(kept) > 1 else 0.0
    return OperatorStats(count=len(kept), mean=mean, std=std)


# --------------------------------------------------------------------------------------------
# Correction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyCorrection:
    """Affine correction of the operator sum: ``predicted = scale * sum_of_means + offset_ms``.

    ``scale`` absorbs a systematic per-operator bias of standalone timing (warm caches, timer
    placement); ``offset_ms`` a per-network constant (the network's own call overhead). Fitted
    by :func:`fit_correction` on end-to-end measurements of random sub-networks.
    """

    scale: float
    offset_ms: float
    n_subnets: int = 0
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.offset_ms)):
            raise LatencyTableError(
                f"latency correction scale={self.scale} offset_ms={self.offset_ms}: scale must be a positive"
                " number and offset finite; re-run `dofa-levels validate-latency --fit-correction --write`"
                f" or delete 'correction' from {METADATA_FILE}"
            )

    def apply(self, raw_ms: float) -> float:
        """The corrected latency for an operator sum ``raw_ms``."""
        return self.scale * raw_ms + self.offset_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"scale": self.scale, "offset_ms": self.offset_ms, "n_subnets": self.n_subnets, **self.details}

    @classmethod
    def from_dict(cls, data: object, *, where: str) -> LatencyCorrection:
        """Parse the ``correction`` object of a metadata file."""
        if not isinstance(data, Mapping):
            raise LatencyTableError(f"{where}: 'correction' must be an object with scale and offset_ms")
        try:
            scale = float(data["scale"])
            offset = float(data["offset_ms"])
            n = int(data.get("n_subnets", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise LatencyTableError(
                f"{where}: 'correction' needs numeric scale and offset_ms ({exc}); re-run"
                " `dofa-levels validate-latency --fit-correction --write`"
            ) from exc
        details = {str(k): v for k, v in data.items() if k not in ("scale", "offset_ms", "n_subnets")}
        try:
            return cls(scale=scale, offset_ms=offset, n_subnets=n, details=details)
        except LatencyTableError as exc:
            raise LatencyTableError(f"{where}: {exc}") from exc


def fit_correction(raw_ms: Sequence[float], measured_ms: Sequence[float]) -> LatencyCorrection:
    """Fit ``measured ~ scale * raw + offset`` minimising the squared *relative* error.

    Weighted least squares with weights ``1 / measured**2``, so that small and large networks
    count alike (the target metric is the mean absolute percentage error). Needs at least two
    distinct raw values.
    """
    if len(raw_ms) != len(measured_ms) or len(raw_ms) < 2:
        raise LatencyTableError("fitting a latency correction needs at least two measured sub-networks")
    w = [1.0 / (m * m) for m in measured_ms]
    sw = sum(w)
    sx = sum(wi * x for wi, x in zip(w, raw_ms, strict=True))
    sy = sum(wi * y for wi, y in zip(w, measured_ms, strict=True))
    sxx = sum(wi * x * x for wi, x in zip(w, raw_ms, strict=True))
    sxy = sum(wi * x * y for wi, x, y in zip(w, raw_ms, measured_ms, strict=True))
    det = sw * sxx - sx * sx
    if det <= 1e-12 * max(sw * sxx, 1e-30):
        raise LatencyTableError(
            "cannot fit a latency correction: all sub-networks have the same predicted latency"
        )
    scale = (sw * sxy - sx * sy) / det
    offset = (sy - scale * sx) / sw
    if scale <= 0:
        raise LatencyTableError(
            f"fitted latency correction has scale {scale:.3f} <= 0: the measurements do not follow the table;"
            " re-profile on a quiet machine"
        )
    return LatencyCorrection(scale=scale, offset_ms=offset, n_subnets=len(raw_ms))


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _parse_stats(value: object, *, key: str, where: str) -> OperatorStats:
    if not isinstance(value, Mapping):
        raise LatencyTableError(f"{where}: entry {key!r} must be a mapping with count, mean and std")
    try:
        mean = float(value["mean"])
        std = float(value.get("std", 0.0))
        count = int(value.get("count", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise LatencyTableError(
            f"{where}: entry {key!r} needs a numeric 'mean' (ms) and optional count/std ({exc!r})"
        ) from exc
    if not (math.isfinite(mean) and mean >= 0 and math.isfinite(std) and std >= 0 and count >= 0):
        raise LatencyTableError(
            f"{where}: entry {key!r} has mean={mean}, std={std}, count={count}; they must be finite and >= 0"
        )
    return OperatorStats(count=count, mean=mean, std=std)


def _parse_entries(data: object, *, where: str) -> dict[str, OperatorStats]:
    if not isinstance(data, Mapping) or not data:
        raise LatencyTableError(
            f"{where}: expected a non-empty mapping of operator key -> {{count, mean, std}}; the file is"
            " malformed — re-profile or re-download it"
        )
    entries: dict[str, OperatorStats] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise LatencyTableError(f"{where}: operator key {key!r} is not a string")
        try:
            OperatorSpec.from_key(key)
        except LatencyTableError as exc:
            raise LatencyTableError(f"{where}: {exc}; is this a latency table of another network?") from None
        entries[key] = _parse_stats(value, key=key, where=where)
    return entries


def _read_table_file(path: Path) -> dict[str, OperatorStats]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LatencyTableError(f"cannot read latency table file {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise LatencyTableError(
            f"latency table file {path} is not valid {path.suffix[1:].upper()} ({exc});"
            " re-profile or replace it"
        ) from exc
    return _parse_entries(data, where=str(path))


def _table_files(root: Path) -> tuple[dict[int, Path], Path]:
    """The table files under ``root`` (a directory or one file) by resolution, and the metadata path."""
    if root.is_file():
        match = TABLE_FILE_RE.match(root.name)
        if not match:
            raise LatencyTableError(
                f"{root}: a latency table file must be named <resolution>_lookup_table.yaml or .json"
            )
        return {int(match.group(1)): root}, root.parent / METADATA_FILE
    if not root.is_dir():
        raise LatencyTableError(f"latency table {root} does not exist; give a directory or a table file")
    files: dict[int, Path] = {}
    for child in sorted(root.iterdir()):
        match = TABLE_FILE_RE.match(child.name)
        if not match:
            continue
        r = int(match.group(1))
        if r in files:
            raise LatencyTableError(
                f"{root}: two table files for resolution {r} ({files[r].name}, {child.name}); keep one"
            )
        files[r] = child
    if not files:
        raise LatencyTableError(
            f"{root}: no <resolution>_lookup_table.yaml/.json files; give a latency table directory"
            " (e.g. ../shared/ofa/latency_tables/jetson_xavier_nx_gpu) or run"
            f" `{_PROFILE_COMMAND} --out DIR`"
        )
    return files, root / METADATA_FILE


def _read_metadata(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LatencyTableError(f"{path}: unreadable metadata ({exc}); fix or delete it") from exc
    if not isinstance(loaded, dict):
        raise LatencyTableError(f"{path}: metadata must be a JSON object; fix or delete it")
    return loaded


def holds_table(directory: Path) -> bool:
    """Whether ``directory`` exists and holds a latency table file or its metadata."""
    return directory.is_dir() and any(
        TABLE_FILE_RE.match(p.name) or p.name == METADATA_FILE for p in directory.iterdir()
    )


def _format_resolutions(entries: Iterable[int]) -> str:
    values = sorted(entries)
    return ", ".join(map(str, values)) if values else "none"


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


class LatencyTable:
    """A per-resolution, per-operator latency look-up table (milliseconds).

    Build one with :meth:`load` (OFA YAML or JSON files),
    :func:`offline_tools.latency.profile.profile_latency_table`, or directly from
    ``{resolution: {key: OperatorStats}}``.
    """

    def __init__(
        self,
        entries: Mapping[int, Mapping[str, OperatorStats]],
        *,
        metadata: Mapping[str, Any] | None = None,
        sources: Mapping[int, str] | None = None,
        geometry: MobileNetV3Geometry | None = None,
        name: str = "latency table",
    ) -> None:
        if not entries:
            raise LatencyTableError(f"{name}: no resolutions; profile at least one")
        self._entries: dict[int, dict[str, OperatorStats]] = {int(r): dict(e) for r, e in entries.items()}
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._sources = {int(r): s for r, s in (sources or {}).items()}
        self.name = name
        if geometry is None:
            geometry = MobileNetV3Geometry(width_mult=float(self.metadata.get("width_mult", 1.2)))
        self.geometry = geometry
        self.correction: LatencyCorrection | None = None
        if self.metadata.get("correction") is not None:
            self.correction = LatencyCorrection.from_dict(self.metadata["correction"], where=name)

    # ---------------------------------------------------------------- reading
    @classmethod
    def load(cls, path: str | os.PathLike[str], *, resolutions: Iterable[int] | None = None) -> LatencyTable:
        """Read a table directory (or one ``<r>_lookup_table.{yaml,json}`` file).

        ``resolutions``: load only these (each must be present); default all found. Raises
        :class:`LatencyTableError` naming the file, key or resolution at fault.
        """
        root = Path(path)
        files, meta_path = _table_files(root)
        name = str(root)
        if resolutions is not None:
            wanted = sorted({int(r) for r in resolutions})
            missing = [r for r in wanted if r not in files]
            if missing:
                raise LatencyTableError(
                    f"latency table {name} has no resolution {', '.join(map(str, missing))} (it has"
                    f" {_format_resolutions(files)}); profile them with `{_PROFILE_COMMAND}"
                    f" --resolutions {' '.join(map(str, missing))} ...`"
                    " or restrict the search space to the table's resolutions"
                )
            files = {r: files[r] for r in wanted}
        metadata = _read_metadata(meta_path)
        width = float(metadata.get("width_mult", 1.2))
        geometry = MobileNetV3Geometry(width_mult=width)
        entries: dict[int, dict[str, OperatorStats]] = {}
        for r, file in files.items():
            table = _read_table_file(file)
            stem = geometry.stem_specs(r)[0].key
            if stem not in table:
                raise LatencyTableError(
                    f"{file}: no entry {stem!r}; the file name says resolution {r} but its stem"
                    f" convolution is for another resolution or width (width_mult={width}) — rename or"
                    " re-profile it"
                )
            entries[r] = table
        sources = {r: str(f) for r, f in files.items()}
        return cls(entries, metadata=metadata, sources=sources, geometry=geometry, name=name)

    # ---------------------------------------------------------------- queries
    @property
    def backend(self) -> str:
        """The execution backend the table was profiled in (``metadata["backend"]``; else torch)."""
        backend = self.metadata.get("backend")
        return backend if isinstance(backend, str) and backend else "torch"

    def require_backend(self, backend: str | None, precision: str | None = None, *, consumer: str) -> str:
        """``backend`` (``None``: the table's) when the table was profiled in it, else an error.

        A table's latencies describe the backend that measured them (eager torch and a compiled
        runtime cost operators differently), so a consumer that states another backend or
        precision than the table's gets a :class:`LatencyTableError` naming the fix.
        """
        mine = self.backend
        if backend is not None and backend != mine:
            raise LatencyTableError(
                f"{self.name} was profiled with backend {mine!r}, not {backend!r}: {consumer} would"
                f" compare it with another runtime; profile one for {backend!r}"
                f" (`{_PROFILE_COMMAND} --backend {backend} ...`) or use --backend {mine}"
            )
        recorded = str(self.metadata.get("precision", "f32"))
        if precision is not None and precision != recorded:
            raise LatencyTableError(
                f"{self.name} was profiled at precision {recorded!r}, not {precision!r}; profile one at"
                f" {precision!r} (`{_PROFILE_COMMAND} --backend {mine} --precision {precision} ...`)"
                f" or use --precision {recorded}"
            )
        return mine

    @property
    def resolutions(self) -> tuple[int, ...]:
        """The resolutions this table covers, ascending."""
        return tuple(sorted(self._entries))

    def keys(self, resolution: int) -> list[str]:
        """The operator keys stored for ``resolution``."""
        return sorted(self._require_resolution(resolution))

    def entry(self, resolution: int, key: str) -> OperatorStats:
        """The statistics of operator ``key`` at ``resolution``."""
        entries = self._require_resolution(resolution)
        try:
            return entries[key]
        except KeyError:
            raise LatencyTableError(
                f"{self._source(resolution)}: no entry for operator {key!r} (resolution {resolution});"
                " the table does not cover this search space or width — re-profile it with"
                f" `{_PROFILE_COMMAND}` for this space"
            ) from None

    def operator_keys(self, cfg: SubnetConfig) -> list[str]:
        """The keys of every operator of ``cfg`` in execution order (repeated blocks repeat)."""
        return list(cached_operator_keys(self.geometry, cfg))

    def predict_raw(self, cfg: SubnetConfig) -> float:
        """The plain sum of the operator means of ``cfg`` in milliseconds (no correction)."""
        entries = self._require_resolution(cfg.resolution)
        total = 0.0
        for key in cached_operator_keys(self.geometry, cfg):
            stats = entries.get(key)
            if stats is None:
                raise LatencyTableError(
                    f"{self._source(cfg.resolution)}: no entry for operator {key!r} needed by sub-network"
                    f" {cfg.key()}; the table does not cover this architecture — re-profile it for this"
                    f" search space (`{_PROFILE_COMMAND}`) or restrict the space"
                )
            total += stats.mean
        return total

    def predict(self, cfg: SubnetConfig, *, corrected: bool = True) -> float:
        """Predicted latency of ``cfg`` in ms: the sum of its operators' means, corrected if fitted.

        The correction (``metadata["correction"]``, see :class:`LatencyCorrection`) is applied only
        when the table has one and ``corrected`` is true; tables without one (e.g. OFA's) give the
        plain sum.
        """
        raw = self.predict_raw(cfg)
        if corrected and self.correction is not None:
            return self.correction.apply(raw)
        return raw

    def missing_keys(self, space: SearchSpace | None = None) -> dict[int, list[str]]:
        """Keys absent per resolution of ``space`` (default: the table's resolutions, full OFA choices)."""
        space = space or SearchSpace(resolutions=self.resolutions)
        missing: dict[int, list[str]] = {}
        for r in space.resolutions:
            have = self._entries.get(r)
            wanted = [op.key for op in self.geometry.space_operators(r, space)]
            gaps = wanted if have is None else [k for k in wanted if k not in have]
            if gaps:
                missing[r] = gaps
        return missing

    def check_space(self, space: SearchSpace) -> None:
        """Raise :class:`LatencyTableError` unless every sub-network of ``space`` can be predicted."""
        absent = [r for r in space.resolutions if r not in self._entries]
        if absent:
            raise LatencyTableError(
                f"{self.name} has no resolution {', '.join(map(str, absent))} (it has"
                f" {_format_resolutions(self._entries)}); profile them or restrict the search space's"
                " resolutions"
            )
        missing = self.missing_keys(space)
        if missing:
            r, keys = next(iter(missing.items()))
            raise LatencyTableError(
                f"{self._source(r)}: lacks {sum(map(len, missing.values()))} operator(s) of the search space,"
                f" e.g. {keys[0]!r}; re-profile the table for this space"
            )

    def with_correction(self, correction: LatencyCorrection | None) -> LatencyTable:
        """A copy with ``correction`` stored in its metadata (``None`` removes it)."""
        metadata = dict(self.metadata)
        if correction is None:
            metadata.pop("correction", None)
        else:
            metadata["correction"] = correction.to_dict()
        return LatencyTable(
            self._entries, metadata=metadata, sources=self._sources, geometry=self.geometry, name=self.name
        )

    def subset(self, resolutions: Iterable[int]) -> LatencyTable:
        """A copy restricted to ``resolutions`` (each must be present)."""
        wanted = sorted({int(r) for r in resolutions})
        for r in wanted:
            self._require_resolution(r)
        return LatencyTable(
            {r: self._entries[r] for r in wanted},
            metadata=self.metadata,
            sources=self._sources,
            geometry=self.geometry,
            name=self.name,
        )

    # ---------------------------------------------------------------- writing
    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``<r>_lookup_table.json`` per resolution plus ``metadata.json`` into ``directory``.

        Each file is written atomically (temporary file + rename). An existing table in
        ``directory`` is an error unless ``overwrite``; then its files for other resolutions are
        removed so the directory holds exactly this table.
        """
        try:
            return self._save(Path(directory), overwrite=overwrite)
        except OSError as exc:
            raise LatencyTableError(
                f"cannot write the latency table to {directory}: {exc.strerror or exc};"
                " choose a writable directory"
            ) from exc

    def _save(self, root: Path, *, overwrite: bool) -> Path:
        # timing imports torch; importing it here keeps reading and predicting torch-free
        from dynamic_ofa_ros.timing import atomic_write_text

        if root.exists() and not root.is_dir():
            raise LatencyTableError(f"{root} exists and is not a directory; choose another output path")
        existing = (
            [p for p in root.iterdir() if TABLE_FILE_RE.match(p.name) or p.name == METADATA_FILE]
            if root.is_dir()
            else []
        )
        if existing and not overwrite:
            raise LatencyTableError(
                f"{root} already holds a latency table ({len(existing)} files); choose another directory or"
                " overwrite it (--force / overwrite=True)"
            )
        root.mkdir(parents=True, exist_ok=True)
        written: set[str] = set()
        for r in self.resolutions:
            data = {k: v.to_dict() for k, v in sorted(self._entries[r].items())}
            name = f"{r}_lookup_table.json"
            atomic_write_text(root / name, json.dumps(data, indent=1) + "\n")
            written.add(name)
        metadata = {"format": TABLE_FORMAT, "version": TABLE_VERSION, **self.metadata}
        metadata["resolutions"] = list(self.resolutions)
        metadata.setdefault("width_mult", self.geometry.width_mult)
        atomic_write_text(root / METADATA_FILE, json.dumps(metadata, indent=2, sort_keys=False) + "\n")
        for path in existing:
            if path.name not in written and path.name != METADATA_FILE:
                path.unlink()
        return root

    # ---------------------------------------------------------------- helpers
    def _require_resolution(self, resolution: int) -> dict[str, OperatorStats]:
        try:
            return self._entries[resolution]
        except KeyError:
            raise LatencyTableError(
                f"{self.name} has no resolution {resolution} (it has {_format_resolutions(self._entries)});"
                f" profile it (`{_PROFILE_COMMAND} --resolutions {resolution} ...`) or restrict the"
                " search space to the table's resolutions"
            ) from None

    def _source(self, resolution: int) -> str:
        return self._sources.get(resolution, f"{self.name} (resolution {resolution})")

    def __repr__(self) -> str:
        corr = "" if self.correction is None else f", corrected x{self.correction.scale:.3f}"
        return f"LatencyTable({self.name!r}, resolutions={list(self.resolutions)}{corr})"
