"""Level tables: the per-device family of sub-networks with their pre-calibrated BN statistics.

File format version 1 (see ``docs/ARCHITECTURE.md`` and ``docs/runtime.md``):
``<name>.json`` plus, beside it, ``<name>.bn.safetensors`` holding float32 tensors
``level<N>/<module path>.running_mean|running_var`` (module paths as in the
extracted sub-network). The JSON records the BN file's name and SHA-256.

:func:`load_level_table` validates everything and raises :class:`LevelTableError`
with a path-like location (``levels[3].ks: ...``) and what to do.
:func:`save_level_table` runs the same validation and writes atomically (BN file
first, then the JSON that names its checksum).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SearchSpace, SubnetConfig
from dynamic_ofa_ros.backends.header import check_profiling
from dynamic_ofa_ros.errors import ArchitectureError, LevelTableError, UnknownLevelError
from dynamic_ofa_ros.level_bn import BNStatistics, as_arrays, bn_file_bytes, check_bn_shapes, read_bn_file
from dynamic_ofa_ros.timing import atomic_write_bytes, atomic_write_text, sha256_bytes

if TYPE_CHECKING:
    import torch

    from dynamic_ofa_ros.supernet import Supernet, SupernetSource

__all__ = [
    "TABLE_FORMAT",
    "BNStatistics",
    "TABLE_VERSION",
    "Level",
    "LevelTable",
    "bn_path_for",
    "check_table_supernet",
    "load_level_table",
    "save_level_table",
]

TABLE_FORMAT = "dynamic_ofa_ros.level_table"
TABLE_VERSION = 1
_LEVEL_FIELDS = (
    "level",
    "resolution",
    "ks",
    "e",
    "d",
    "latency_ms",
    "latency_p95_ms",
    "accuracy",
    "predicted_accuracy",
    "accuracy_dataset",
    "macs_m",
)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Level:
    """One level: its architecture, profiled latency and accuracy.

    ``latency_ms``/``latency_p95_ms`` are the p50/p95 latency profiled on the table's
    device; ``accuracy`` is measured top-1 in percent on ``accuracy_dataset`` (``None``
    when not measured, e.g. a search family or random weights); ``predicted_accuracy``
    is a predictor's estimate in percent, if any; ``macs_m`` are millions of MACs.
    ``extra`` keeps unknown JSON fields so that a load/save round trip preserves them.
    """

    level: int
    config: SubnetConfig
    latency_ms: float
    latency_p95_ms: float | None = None
    accuracy: float | None = None
    predicted_accuracy: float | None = None
    accuracy_dataset: str | None = None
    macs_m: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> int:
        """The level's input size in pixels."""
        return self.config.resolution

    @property
    def rank_accuracy(self) -> float | None:
        """Measured accuracy if present, else the predicted one (what orders the levels)."""
        return self.accuracy if self.accuracy is not None else self.predicted_accuracy

    def to_dict(self) -> dict[str, Any]:
        """The level's JSON object (field order as in the format description)."""
        out: dict[str, Any] = {"level": self.level}
        out.update(self.config.to_dict())
        out.update(
            {
                "latency_ms": self.latency_ms,
                "latency_p95_ms": self.latency_p95_ms,
                "accuracy": self.accuracy,
                "predicted_accuracy": self.predicted_accuracy,
                "accuracy_dataset": self.accuracy_dataset,
                "macs_m": self.macs_m,
            }
        )
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


@dataclass
class LevelTable:
    """A device's level table. ``bn`` maps level number → BN state (``None`` for a family).

    ``supernet`` is ``{"name", "source", "sha256", "meaningful_accuracy"?}``;
    ``profiling`` describes how latencies were measured (``mode``, ``threads``,
    ``dtype``, ``batch``, ``warmup``, ``iterations``, ``torch``, ``date`` ...);
    ``calibration`` how the BN statistics were computed (``dataset``, ``images``).
    A loaded table's ``bn`` is a :class:`BNStatistics` (NumPy arrays; ``bn[n]`` gives torch
    tensors); a table built in memory may hold plain dicts of tensors. :meth:`bn_arrays` reads
    either without torch for a loaded table.
    """

    device: str
    device_name: str
    profiling: dict[str, Any]
    supernet: dict[str, Any]
    calibration: dict[str, Any]
    levels: list[Level]
    bn: Mapping[int, dict[str, torch.Tensor]] | None = None
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def numbers(self) -> list[int]:
        """The level numbers, 1..N."""
        return [lv.level for lv in self.levels]

    @property
    def meaningful_accuracy(self) -> bool:
        """``False`` when the table was built from random weights (accuracy fields are meaningless)."""
        return bool(self.supernet.get("meaningful_accuracy", True))

    def level(self, number: int) -> Level:
        """The level numbered ``number``; :class:`UnknownLevelError` otherwise."""
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= len(self.levels):
            raise UnknownLevelError(
                f"level {number!r} is not in this table (levels 1..{len(self.levels)}); pick one of those"
            )
        return self.levels[number - 1]

    def bn_arrays(self, level: int) -> dict[str, np.ndarray]:
        """Level ``level``'s BN statistics as float32 NumPy arrays (no torch for a loaded table)."""
        if self.bn is None:
            raise LevelTableError(f"{self.path or 'level table'}: has no BN statistics (a search family)")
        if isinstance(self.bn, BNStatistics):
            return self.bn.arrays(level)
        return as_arrays(self.bn[level])

    def to_json_dict(self, *, bn_file: str | None = None, bn_sha256: str | None = None) -> dict[str, Any]:
        """The JSON object of the table (``bn_file``/``bn_sha256`` as given)."""
        out: dict[str, Any] = {
            "format": TABLE_FORMAT,
            "version": TABLE_VERSION,
            "device": self.device,
            "device_name": self.device_name,
            "profiling": dict(self.profiling),
            "supernet": dict(self.supernet),
            "calibration": dict(self.calibration),
            "bn_file": bn_file,
            "bn_sha256": bn_sha256,
        }
        for key, value in self.extra.items():
            out.setdefault(key, value)
        out["levels"] = [lv.to_dict() for lv in self.levels]
        return out


def bn_path_for(table_path: str | os.PathLike[str]) -> Path:
    """``config/levels/cpu.json`` → ``config/levels/cpu.bn.safetensors``."""
    path = Path(table_path)
    return path.with_name(f"{path.stem}.bn.safetensors")


# ----------------------------------------------------------------------------------------- parsing


def _fail(where: str, message: str) -> LevelTableError:
    return LevelTableError(f"{where}: {message}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _optional_number(item: Mapping[str, object], key: str, where: str) -> float | None:
    """``item[key]`` as a float, None when absent or null; raises unless it is a finite number."""
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or not _is_number(value):
        raise _fail(f"{where}.{key}", f"{value!r} is not a finite number")
    return float(value)


def _required_number(item: Mapping[str, object], key: str, where: str) -> float:
    value = _optional_number(item, key, where)
    if value is None:
        raise _fail(f"{where}.{key}", "missing; it must be a number")
    return value


def _int_list(item: Mapping[str, Any], key: str, length: int, where: str) -> list[int]:
    value = item.get(key)
    if not isinstance(value, list):
        raise _fail(f"{where}.{key}", f"expected a list of {length} integers, got {type(value).__name__}")
    if len(value) != length:
        raise _fail(f"{where}.{key}", f"expected {length} integers, got {len(value)}")
    for i, v in enumerate(value):
        if not isinstance(v, int) or isinstance(v, bool):
            raise _fail(f"{where}.{key}[{i}]", f"{v!r} is not an integer")
    return list(value)


def _parse_level(item: object, index: int, space: SearchSpace | None, file: str) -> Level:
    where = f"{file}: levels[{index}]"
    if not isinstance(item, dict):
        raise _fail(where, f"expected an object, got {type(item).__name__}")
    number = item.get("level")
    if not isinstance(number, int) or isinstance(number, bool):
        raise _fail(f"{where}.level", f"{number!r} is not an integer")
    if number != index + 1:
        raise _fail(
            f"{where}.level", f"is {number}; levels must be numbered 1..N in file order (fastest first)"
        )
    resolution = item.get("resolution")
    if not isinstance(resolution, int) or isinstance(resolution, bool):
        raise _fail(f"{where}.resolution", f"{resolution!r} is not an integer number of pixels")
    ks = _int_list(item, "ks", N_BLOCKS, where)
    e = _int_list(item, "e", N_BLOCKS, where)
    d = _int_list(item, "d", N_STAGES, where)
    try:
        config = SubnetConfig(resolution=resolution, ks=tuple(ks), e=tuple(e), d=tuple(d))
        if space is not None:
            space.check(config)
    except ArchitectureError as exc:
        raise _fail(where, f"{exc}; the level is outside the super-network's search space") from exc
    latency = _required_number(item, "latency_ms", where)
    if latency <= 0:
        raise _fail(f"{where}.latency_ms", f"{latency} must be positive (milliseconds)")
    p95 = _optional_number(item, "latency_p95_ms", where)
    if p95 is not None and p95 < latency:
        raise _fail(f"{where}.latency_p95_ms", f"{p95} is below latency_ms={latency} (the p50)")
    accuracy = _optional_number(item, "accuracy", where)
    predicted = _optional_number(item, "predicted_accuracy", where)
    for key, value in (("accuracy", accuracy), ("predicted_accuracy", predicted)):
        if value is not None and not 0.0 <= value <= 100.0:
            raise _fail(f"{where}.{key}", f"{value} must be a top-1 percentage within 0..100")
    dataset = item.get("accuracy_dataset")
    if dataset is not None and not isinstance(dataset, str):
        raise _fail(f"{where}.accuracy_dataset", f"{dataset!r} must be a string or null")
    if accuracy is not None and not dataset:
        raise _fail(f"{where}.accuracy_dataset", "must name the data set the accuracy was measured on")
    macs = _optional_number(item, "macs_m", where)
    if macs is not None and macs <= 0:
        raise _fail(f"{where}.macs_m", f"{macs} must be positive (millions of MACs)")
    extra = {k: v for k, v in item.items() if k not in _LEVEL_FIELDS}
    return Level(
        level=number,
        config=config,
        latency_ms=latency,
        latency_p95_ms=p95,
        accuracy=accuracy,
        predicted_accuracy=predicted,
        accuracy_dataset=dataset,
        macs_m=macs,
        extra=extra,
    )


def _check_order(levels: Sequence[Level], file: str) -> None:
    seen: dict[str, int] = {}
    for i, lv in enumerate(levels):
        key = lv.config.key()
        if key in seen:
            raise _fail(
                f"{file}: levels[{i}]",
                f"is the same network as levels[{seen[key]}]; every level must be a different sub-network",
            )
        seen[key] = i
    for i in range(1, len(levels)):
        low, high = levels[i - 1], levels[i]
        if not high.latency_ms > low.latency_ms:
            raise _fail(
                f"{file}: levels[{i}]",
                f"level {high.level} ({high.latency_ms:g} ms) is not slower than level {low.level} "
                f"({low.latency_ms:g} ms); levels must be sorted by strictly increasing latency_ms",
            )
    ranked = [lv.rank_accuracy for lv in levels]
    if all(a is None for a in ranked):
        return
    if any(a is None for a in ranked):
        missing = next(i for i, a in enumerate(ranked) if a is None)
        raise _fail(
            f"{file}: levels[{missing}]",
            "has neither accuracy nor predicted_accuracy while other levels do; give every level one",
        )
    for i in range(1, len(levels)):
        low_acc, high_acc = ranked[i - 1], ranked[i]
        assert low_acc is not None and high_acc is not None
        if not high_acc > low_acc:
            raise _fail(
                f"{file}: levels[{i}]",
                f"level {levels[i].level} ({high_acc:g} %) is not more accurate than level "
                f"{levels[i - 1].level} ({low_acc:g} %); levels must be sorted by strictly increasing "
                "accuracy (keep only the Pareto front)",
            )


def _parse_header(data: object, file: str) -> dict[str, Any]:
    """The table's top-level object with every header field checked (levels are parsed later)."""
    if not isinstance(data, dict):
        raise _fail(file, f"the table must be a JSON object, got {type(data).__name__}")
    if data.get("format") != TABLE_FORMAT:
        raise _fail(f"{file}: format", f"is {data.get('format')!r}, expected {TABLE_FORMAT!r}")
    version = data.get("version")
    if version != TABLE_VERSION or isinstance(version, bool):
        raise _fail(
            f"{file}: version",
            f"{version!r} is not supported (this code reads version {TABLE_VERSION}); "
            "rebuild the table with this version's dofa-levels",
        )
    for key in ("device", "device_name"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise _fail(f"{file}: {key}", "must be a non-empty string")
    for key in ("profiling", "supernet", "calibration"):
        if not isinstance(data.get(key), dict):
            raise _fail(f"{file}: {key}", f"must be an object, got {type(data.get(key)).__name__}")
    problem = check_profiling(data["profiling"])  # backend fields; absent in tables profiled in torch
    if problem is not None:
        raise _fail(f"{file}: profiling", problem)
    _check_supernet_identity(data["supernet"], file)
    _check_bn_reference(data.get("bn_file"), data.get("bn_sha256"), file)
    levels = data.get("levels")
    if not isinstance(levels, list) or not levels:
        raise _fail(f"{file}: levels", "must be a non-empty list")
    return data


def _check_supernet_identity(supernet: Mapping[str, object], file: str) -> None:
    if not isinstance(supernet.get("name"), str):
        raise _fail(f"{file}: supernet.name", "must be a string")
    sha = supernet.get("sha256")
    if not isinstance(sha, str) or not _HEX64.match(sha):
        raise _fail(f"{file}: supernet.sha256", f"{sha!r} is not a 64-digit lower-case hex SHA-256")
    if "meaningful_accuracy" in supernet and not isinstance(supernet["meaningful_accuracy"], bool):
        raise _fail(f"{file}: supernet.meaningful_accuracy", "must be true or false")


def _check_bn_reference(bn_file: object, bn_sha: object, file: str) -> None:
    """``bn_file`` is a relative file name with its SHA-256, or both are null (a family)."""
    if bn_file is not None:
        if (
            not isinstance(bn_file, str)
            or not bn_file
            or os.path.isabs(bn_file)
            or ".." in Path(bn_file).parts
        ):
            raise _fail(f"{file}: bn_file", f"{bn_file!r} must be a file name relative to the table")
        if not isinstance(bn_sha, str) or not _HEX64.match(bn_sha):
            raise _fail(f"{file}: bn_sha256", f"{bn_sha!r} is not a 64-digit lower-case hex SHA-256")
    elif bn_sha is not None:
        raise _fail(f"{file}: bn_sha256", "is set but bn_file is null")


def _check_supernet(header: Mapping[str, Any], supernet: Supernet | SupernetSource, file: str) -> None:
    want = header["supernet"]
    if want["sha256"] != supernet.sha256:
        raise _fail(
            file,
            f"this table was built for supernet {want['name']} from {want.get('source', '?')} "
            f"(sha256 {want['sha256'][:16]}...), the loaded model is {supernet.name} from {supernet.source} "
            f"(sha256 {supernet.sha256[:16]}...); rebuild with dofa-levels build or pass the matching model",
        )


def check_table_supernet(table: LevelTable, supernet: Supernet | SupernetSource) -> None:
    """Raise :class:`LevelTableError` unless ``table`` was built for ``supernet`` (same weights checksum)."""
    _check_supernet({"supernet": table.supernet}, supernet, str(table.path or "level table"))


def _kind(device: str) -> str:
    """``"cuda:1"`` -> ``"cuda"``: tables are per device kind."""
    return str(device).split(":", 1)[0].strip().lower()


def _validate(
    data: object,
    *,
    file: str,
    supernet: Supernet | SupernetSource | None,
    expected_device: str | None,
) -> tuple[dict[str, Any], list[Level]]:
    header = _parse_header(data, file)
    if expected_device is not None and _kind(header["device"]) != _kind(expected_device):
        raise _fail(
            f"{file}: device",
            f"this table was profiled on {header['device']!r} ({header['device_name']}), but it is used on "
            f"{expected_device!r}; load config/levels/{_kind(expected_device)}.json or build one there "
            f"(dofa-levels build --device {_kind(expected_device)})",
        )
    if supernet is not None:
        _check_supernet(header, supernet, file)
    space = (
        supernet.search_space()
        if supernet is not None
        else SearchSpace(resolutions=tuple(range(32, 1025, 4)))
    )
    levels = [_parse_level(item, i, space, file) for i, item in enumerate(header["levels"])]
    _check_order(levels, file)
    return header, levels


def load_level_table(
    path: str | os.PathLike[str],
    *,
    supernet: Supernet | SupernetSource | None = None,
    require_bn: bool = True,
    expected_device: str | None = None,
) -> LevelTable:
    """Load and validate a level table; raise :class:`LevelTableError` naming the place and the fix.

    Checked: JSON structure and types; levels numbered 1..N and strictly increasing in
    latency and in accuracy (measured, else predicted); each architecture in the
    search space (of ``supernet`` when given); the BN file's presence and SHA-256;
    every BN tensor's key set and shape against the architecture (when ``supernet``
    is given, without extracting sub-networks); the super-network checksum; the
    device (``expected_device``). A family file (``"bn_file": null``) loads only with
    ``require_bn=False``; its :attr:`LevelTable.bn` is ``None``.
    """
    file_path = Path(path)
    file = str(file_path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise LevelTableError(
            f"level table {file} not found; build one with dofa-levels build (or pass an existing table)"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise LevelTableError(f"cannot read level table {file}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LevelTableError(
            f"{file}: line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})"
        ) from exc
    header, levels = _validate(data, file=file, supernet=supernet, expected_device=expected_device)
    bn: BNStatistics | None = None
    if header.get("bn_file") is None:
        if require_bn:
            raise _fail(
                file,
                "this is a level family without BN statistics (bn_file is null, as written by dofa-levels "
                "search); calibrate it with dofa-levels calibrate before running it",
            )
    else:
        bn = read_bn_file(file_path.parent / header["bn_file"], header["bn_sha256"], levels, file)
        check_bn_shapes(levels, {n: bn.arrays(n) for n in bn}, supernet, file)
    known = {
        "format",
        "version",
        "device",
        "device_name",
        "profiling",
        "supernet",
        "calibration",
        "bn_file",
        "bn_sha256",
        "levels",
    }
    return LevelTable(
        device=header["device"],
        device_name=header["device_name"],
        profiling=dict(header["profiling"]),
        supernet=dict(header["supernet"]),
        calibration=dict(header["calibration"]),
        levels=levels,
        bn=bn,
        path=file_path,
        extra={k: v for k, v in header.items() if k not in known},
    )


def _compact_json(obj: object) -> str:
    text = json.dumps(obj, indent=2, allow_nan=False)
    # one line per list of numbers (ks/e/d), which keeps tables readable
    return re.sub(
        r"\[\s+([-0-9.eE+,\s]+?)\s+\]",
        lambda m: "[" + ", ".join(part.strip() for part in m.group(1).split(",")) + "]",
        text,
    )


def save_level_table(
    table: LevelTable, path: str | os.PathLike[str], *, supernet: Supernet | SupernetSource | None = None
) -> Path:
    """Validate ``table`` and write it to ``path`` (+ ``<stem>.bn.safetensors`` when it has BN).

    Both files are written atomically, the BN file first; a crash in between leaves the
    previous JSON, whose ``bn_sha256`` then no longer matches (detected on load). With
    ``supernet`` the same checks as :func:`load_level_table` run against it. Returns the
    JSON path.
    """
    file_path = Path(path)
    file = str(file_path)
    if file_path.suffix != ".json":
        raise LevelTableError(f"{file}: a level table must be a .json file")
    bn_file: str | None = None
    bn_sha: str | None = None
    blob: bytes | None = None
    arrays: dict[int, dict[str, np.ndarray]] = {}
    if table.bn is not None:
        for lv in table.levels:
            if lv.level not in table.bn:
                raise _fail(file, f"no BN statistics for level {lv.level}; calibrate every level")
            arrays[lv.level] = table.bn_arrays(lv.level)
        extra_levels = set(table.bn) - set(table.numbers)
        if extra_levels:
            raise _fail(
                file, f"BN statistics for level(s) {sorted(extra_levels)}, which the table does not have"
            )
        blob = bn_file_bytes(arrays, {"format": TABLE_FORMAT + ".bn", "version": str(TABLE_VERSION)})
        bn_file = bn_path_for(file_path).name
        bn_sha = sha256_bytes(blob)
    data = table.to_json_dict(bn_file=bn_file, bn_sha256=bn_sha)
    try:
        text = _compact_json(data) + "\n"
    except ValueError as exc:
        raise _fail(file, f"the table holds a NaN or infinite number ({exc}); fix the measurement") from exc
    header, levels = _validate(json.loads(text), file=file, supernet=supernet, expected_device=None)
    if table.bn is not None:
        check_bn_shapes(levels, arrays, supernet, file)
    if blob is not None:
        atomic_write_bytes(bn_path_for(file_path), blob)
    atomic_write_text(file_path, text)
    return file_path
