"""Per-operator latency look-up tables for the OFA MobileNetV3 super-network.

A *latency table* gives, for every input resolution, the measured latency of
every operator a sub-network of ``ofa_mbv3_d234_e346_k357_w1.2`` can contain
(the stem convolution, each possible inverted-residual block, the head). The
predicted latency of a sub-network is the sum of its operators' mean latencies,
as in OFA (``MBv3LatencyTable``) and the Dynamic-OFA paper.

Keys follow OFA's format, with the width-1.2 channel counts, e.g.::

    Conv-input:224x224x3-output:112x112x24
    expanded_conv-input:56x56x32-output:28x28x48-expand:192-kernel:5-stride:2-idskip:0-se:1-hs:0
    Conv_1-input:7x7x192-output:7x7x1152
    AvgPool2D-input:7x7x1152-output:1x1x1152
    Conv_2-input:1x1x1152-output:1x1x1536
    Logits-input:1x1x1536-output:1000

On disk a table is a directory of ``<resolution>_lookup_table.yaml`` (OFA) or
``<resolution>_lookup_table.json`` files, each mapping key -> ``{count, mean,
std}`` (milliseconds), plus an optional ``metadata.json`` (device, execution
mode, threads, versions, and an optional fitted correction, see
:class:`LatencyCorrection`).

This module is usable without ``torch``/``ofa`` for reading, predicting and
saving; profiling and validation import them lazily. It is also a script::

    python -m offline_tools.latency_table profile --device cpu --threads 1 \\
        --resolutions 96 112 128 144 160 --out config/latency/cpu-1thread --validate 30
    python -m offline_tools.latency_table validate --table DIR --n-subnets 30
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import functools
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from dynamic_ofa_ros.arch import BLOCKS_PER_STAGE, N_STAGES, SearchSpace, SubnetConfig
from dynamic_ofa_ros.errors import DofaError
from offline_tools.errors import LatencyTableError

try:
    import resource

    _RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)
except ImportError:  # pragma: no cover - not on Unix
    _RUSAGE_THREAD = None

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn

__all__ = [
    "METADATA_FILE",
    "device_name",
    "fit_correction",
    "LatencyCorrection",
    "LatencyTable",
    "main",
    "measure_subnets",
    "MobileNetV3Geometry",
    "OperatorSpec",
    "OperatorStats",
    "profile_latency_table",
    "resolve_clock",
    "spearman_rank_correlation",
    "stabilize_cpu_allocator",
    "SubnetSamples",
    "summarize_samples",
    "validate_latency_table",
]

METADATA_FILE = "metadata.json"
"""Name of the metadata file written beside the per-resolution tables."""

TABLE_FORMAT = "dynamic_ofa_ros.latency_table"
TABLE_VERSION = 1

Mode = Literal["eager", "cuda_graph"]
MODES: tuple[str, ...] = ("eager", "cuda_graph")

_TABLE_FILE_RE = re.compile(r"^(\d+)_lookup_table\.(yaml|yml|json)$")
_OPERATOR_KINDS = ("Conv", "expanded_conv", "Conv_1", "AvgPool2D", "Conv_2", "Logits")
CLOCKS: tuple[str, ...] = ("thread_cpu", "wall")
TRIM_FRACTION = 0.5
"""Fraction of the slowest samples dropped before averaging: ``mean`` is the mean of the fastest half.

Robust to interference from other processes (on a shared machine most slow samples are calls
that were preempted or whose caches another process flushed); used for operators and
end-to-end measurements alike, so both estimate the same quantity."""

PROFILE_WARMUP = 10
PROFILE_ITERATIONS = 50
PROFILE_ROUNDS = 25
VALIDATE_WARMUP = 5
VALIDATE_ITERATIONS = 40
VALIDATE_ROUNDS = 8


# --------------------------------------------------------------------------------------------
# Operators and network geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorStats:
    """Latency statistics of one operator, in milliseconds."""

    count: int
    mean: float
    std: float

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready form ``{"count", "mean", "std"}``."""
        return {"count": self.count, "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class OperatorSpec:
    """One operator of the MobileNetV3 space, identified by its OFA key.

    ``input_shape``/``output_shape`` are ``(H, W, C)``, except the ``Logits`` output which is
    ``(n_classes,)``. The block fields (``expand`` = middle channels, ``kernel``, ``stride``,
    ``idskip``, ``se``, ``hs``) are only meaningful for ``expanded_conv``.
    """

    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    expand: int = 0
    kernel: int = 0
    stride: int = 0
    idskip: int = 0
    se: int = 0
    hs: int = 0

    @property
    def key(self) -> str:
        """The OFA look-up-table key of this operator."""
        parts = [
            self.kind,
            "input:" + "x".join(map(str, self.input_shape)),
            "output:" + "x".join(map(str, self.output_shape)),
        ]
        if self.kind == "expanded_conv":
            parts += [
                f"expand:{self.expand}",
                f"kernel:{self.kernel}",
                f"stride:{self.stride}",
                f"idskip:{self.idskip}",
                f"se:{self.se}",
                f"hs:{self.hs}",
            ]
        return "-".join(parts)

    @classmethod
    def from_key(cls, key: str) -> OperatorSpec:
        """Parse an OFA key; raise :class:`LatencyTableError` if it is not a MobileNetV3 operator key."""
        kind, _, rest = key.partition("-")
        if kind not in _OPERATOR_KINDS or not rest:
            raise LatencyTableError(
                f"{key!r} is not an OFA MobileNetV3 operator key (expected one of"
                f" {', '.join(_OPERATOR_KINDS)} followed by -input:HxWxC-output:HxWxC...)"
            )
        fields: dict[str, str] = {}
        for part in rest.split("-"):
            name, sep, value = part.partition(":")
            if not sep or name in fields:
                raise LatencyTableError(f"operator key {key!r}: malformed field {part!r}")
            fields[name] = value
        try:
            shape_in = tuple(int(v) for v in fields.pop("input").split("x"))
            shape_out = tuple(int(v) for v in fields.pop("output").split("x"))
            block = {
                name: int(fields.pop(name))
                for name in ("expand", "kernel", "stride", "idskip", "se", "hs")
                if name in fields
            }
        except (KeyError, ValueError) as exc:
            raise LatencyTableError(f"operator key {key!r}: missing or non-integer field ({exc})") from exc
        if fields:
            raise LatencyTableError(f"operator key {key!r}: unknown fields {sorted(fields)}")
        if kind == "expanded_conv" and len(block) != 6:
            raise LatencyTableError(
                f"operator key {key!r}: an expanded_conv key needs expand, kernel, stride, idskip, se and hs"
            )
        if kind != "expanded_conv" and block:
            raise LatencyTableError(f"operator key {key!r}: only expanded_conv keys have block fields")
        spec = cls(kind=kind, input_shape=shape_in, output_shape=shape_out, **block)
        if spec.key != key:
            raise LatencyTableError(f"operator key {key!r} is not in canonical form (expected {spec.key!r})")
        return spec


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` the way OFA/TF MobileNet do (never below 90 %)."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


@dataclass(frozen=True)
class MobileNetV3Geometry:
    """Channel widths, strides and block types of the OFA MobileNetV3 super-network.

    Defaults describe ``ofa_mbv3_d234_e346_k357_w1.2`` (``width_mult=1.2``, 1000 classes).
    """

    width_mult: float = 1.2
    n_classes: int = 1000
    stem_channels: int = field(init=False)
    first_block_channels: int = field(init=False)
    stage_channels: tuple[int, ...] = field(init=False)
    final_expand_channels: int = field(init=False)
    last_channels: int = field(init=False)
    stage_strides: tuple[int, ...] = (2, 2, 2, 1, 2)
    stage_hswish: tuple[int, ...] = (0, 0, 1, 1, 1)
    stage_se: tuple[int, ...] = (0, 1, 0, 1, 1)

    def __post_init__(self) -> None:
        if not self.width_mult > 0:
            raise LatencyTableError(f"width_mult={self.width_mult} must be positive")
        base = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
        widths = [make_divisible(b * self.width_mult) for b in base]
        object.__setattr__(self, "stem_channels", widths[0])
        object.__setattr__(self, "first_block_channels", widths[1])
        object.__setattr__(self, "stage_channels", tuple(widths[2:7]))
        object.__setattr__(self, "final_expand_channels", widths[7])
        object.__setattr__(self, "last_channels", widths[8])

    def block_spec(
        self, stage: int, index: int, in_channels: int, size: int, ks: int, e: float
    ) -> OperatorSpec:
        """The operator of block ``index`` (0..3) of ``stage`` for an input of ``size``, ``in_channels``."""
        out_channels = self.stage_channels[stage]
        stride = self.stage_strides[stage] if index == 0 else 1
        out_size = (size - 1) // stride + 1
        return OperatorSpec(
            kind="expanded_conv",
            input_shape=(size, size, in_channels),
            output_shape=(out_size, out_size, out_channels),
            expand=make_divisible(round(in_channels * e)),
            kernel=ks,
            stride=stride,
            idskip=int(stride == 1 and in_channels == out_channels),
            se=self.stage_se[stage],
            hs=self.stage_hswish[stage],
        )

    def stem_specs(self, resolution: int) -> tuple[OperatorSpec, OperatorSpec]:
        """The first convolution and the fixed first block at ``resolution``."""
        size = (resolution + 1) // 2
        conv = OperatorSpec("Conv", (resolution, resolution, 3), (size, size, self.stem_channels))
        c = self.stem_channels
        first = OperatorSpec(
            kind="expanded_conv",
            input_shape=(size, size, c),
            output_shape=(size, size, self.first_block_channels),
            expand=c,
            kernel=3,
            stride=1,
            idskip=int(c == self.first_block_channels),
            se=0,
            hs=0,
        )
        return conv, first

    def head_specs(self, size: int) -> tuple[OperatorSpec, ...]:
        """``Conv_1``, ``AvgPool2D``, ``Conv_2`` and ``Logits`` for a final feature map of ``size``."""
        c_in, c_fe, c_last = self.stage_channels[-1], self.final_expand_channels, self.last_channels
        return (
            OperatorSpec("Conv_1", (size, size, c_in), (size, size, c_fe)),
            OperatorSpec("AvgPool2D", (size, size, c_fe), (1, 1, c_fe)),
            OperatorSpec("Conv_2", (1, 1, c_fe), (1, 1, c_last)),
            OperatorSpec("Logits", (1, 1, c_last), (self.n_classes,)),
        )

    @staticmethod
    def stage_sizes(resolution: int, strides: Sequence[int]) -> list[int]:
        """Input feature-map size of each stage (after the stem), given the stage strides."""
        size = (resolution + 1) // 2
        sizes = []
        for stride in strides:
            sizes.append(size)
            size = (size - 1) // stride + 1
        return sizes + [size]

    def operators(self, cfg: SubnetConfig) -> list[OperatorSpec]:
        """Every operator of sub-network ``cfg``, in execution order."""
        conv, first = self.stem_specs(cfg.resolution)
        ops = [conv, first]
        size = first.output_shape[0]
        channels = self.first_block_channels
        for stage, depth in enumerate(cfg.d):
            for index in range(depth):
                block = stage * BLOCKS_PER_STAGE + index
                spec = self.block_spec(stage, index, channels, size, cfg.ks[block], cfg.e[block])
                ops.append(spec)
                size, channels = spec.output_shape[0], spec.output_shape[2]
        ops.extend(self.head_specs(size))
        return ops

    def space_operators(self, resolution: int, space: SearchSpace | None = None) -> list[OperatorSpec]:
        """Every distinct operator any sub-network of ``space`` can contain at ``resolution``."""
        space = space or SearchSpace()
        conv, first = self.stem_specs(resolution)
        ops = [conv, first]
        sizes = self.stage_sizes(resolution, self.stage_strides)
        channels = self.first_block_channels
        for stage in range(N_STAGES):
            indices = [0, 1] if max(space.d_choices) > 1 else [0]
            for index in indices:
                in_channels = channels if index == 0 else self.stage_channels[stage]
                size = sizes[stage] if index == 0 else sizes[stage + 1]
                for ks in space.ks_choices:
                    for e in space.e_choices:
                        ops.append(self.block_spec(stage, index, in_channels, size, ks, e))
            channels = self.stage_channels[stage]
        ops.extend(self.head_specs(sizes[-1]))
        unique: dict[str, OperatorSpec] = {}
        for op in ops:
            unique.setdefault(op.key, op)
        return list(unique.values())


DEFAULT_GEOMETRY = MobileNetV3Geometry()


@functools.lru_cache(maxsize=4096)
def _cached_keys(geometry: MobileNetV3Geometry, cfg: SubnetConfig) -> tuple[str, ...]:
    return tuple(op.key for op in geometry.operators(cfg))


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
                " number and offset finite; re-run `validate --fit-correction` or delete 'correction'"
                f" from {METADATA_FILE}"
            )

    def apply(self, raw_ms: float) -> float:
        """The corrected latency for an operator sum ``raw_ms``."""
        return self.scale * raw_ms + self.offset_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"scale": self.scale, "offset_ms": self.offset_ms, "n_subnets": self.n_subnets, **self.details}

    @classmethod
    def from_dict(cls, data: Any, *, where: str) -> LatencyCorrection:
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
                " `python -m offline_tools.latency_table validate --fit-correction --write`"
            ) from exc
        details = {k: v for k, v in data.items() if k not in ("scale", "offset_ms", "n_subnets")}
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
# The table
# --------------------------------------------------------------------------------------------


def _parse_entries(data: Any, *, where: str) -> dict[str, OperatorStats]:
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
                f"{where}: entry {key!r} has mean={mean}, std={std}, count={count};"
                " they must be finite and >= 0"
            )
        entries[key] = OperatorStats(count=count, mean=mean, std=std)
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


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class LatencyTable:
    """A per-resolution, per-operator latency look-up table (milliseconds).

    Build one with :meth:`load` (OFA YAML or JSON files), :func:`profile_latency_table`, or
    directly from ``{resolution: {key: OperatorStats}}``.
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
        wanted = None if resolutions is None else sorted({int(r) for r in resolutions})
        if root.is_file():
            match = _TABLE_FILE_RE.match(root.name)
            if not match:
                raise LatencyTableError(
                    f"{root}: a latency table file must be named <resolution>_lookup_table.yaml or .json"
                )
            files = {int(match.group(1)): root}
            meta_path = root.parent / METADATA_FILE
            name = str(root)
        elif root.is_dir():
            files = {}
            for child in sorted(root.iterdir()):
                match = _TABLE_FILE_RE.match(child.name)
                if not match:
                    continue
                r = int(match.group(1))
                if r in files:
                    raise LatencyTableError(
                        f"{root}: two table files for resolution {r} ({files[r].name}, {child.name});"
                        " keep one"
                    )
                files[r] = child
            if not files:
                raise LatencyTableError(
                    f"{root}: no <resolution>_lookup_table.yaml/.json files; give a latency table directory"
                    " (e.g. ../shared/ofa/latency_tables/jetson_xavier_nx_gpu) or run"
                    " `python -m offline_tools.latency_table profile --out DIR`"
                )
            meta_path = root / METADATA_FILE
            name = str(root)
        else:
            raise LatencyTableError(f"latency table {root} does not exist; give a directory or a table file")

        if wanted is not None:
            missing = [r for r in wanted if r not in files]
            if missing:
                raise LatencyTableError(
                    f"latency table {name} has no resolution {', '.join(map(str, missing))} (it has"
                    f" {_format_resolutions(files)}); profile them with `python -m"
                    f" offline_tools.latency_table profile --resolutions {' '.join(map(str, missing))} ...`"
                    " or restrict the search space to the table's resolutions"
                )
            files = {r: files[r] for r in wanted}

        metadata: dict[str, Any] = {}
        if meta_path.is_file():
            try:
                loaded = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise LatencyTableError(
                    f"{meta_path}: unreadable metadata ({exc}); fix or delete it"
                ) from exc
            if not isinstance(loaded, dict):
                raise LatencyTableError(f"{meta_path}: metadata must be a JSON object; fix or delete it")
            metadata = loaded

        entries: dict[int, dict[str, OperatorStats]] = {}
        width = float(metadata.get("width_mult", 1.2))
        geometry = MobileNetV3Geometry(width_mult=width)
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
        return cls(
            entries,
            metadata=metadata,
            sources={r: str(f) for r, f in files.items()},
            geometry=geometry,
            name=name,
        )

    # ---------------------------------------------------------------- queries
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
                " the table does not cover this search space or width — re-profile it with `python -m"
                " offline_tools.latency_table profile` for this space"
            ) from None

    def operator_keys(self, cfg: SubnetConfig) -> list[str]:
        """The keys of every operator of ``cfg`` in execution order (repeated blocks repeat)."""
        return list(_cached_keys(self.geometry, cfg))

    def predict_raw(self, cfg: SubnetConfig) -> float:
        """The plain sum of the operator means of ``cfg`` in milliseconds (no correction)."""
        entries = self._require_resolution(cfg.resolution)
        total = 0.0
        for key in _cached_keys(self.geometry, cfg):
            stats = entries.get(key)
            if stats is None:
                raise LatencyTableError(
                    f"{self._source(cfg.resolution)}: no entry for operator {key!r} needed by sub-network"
                    f" {cfg.key()}; the table does not cover this architecture — re-profile it for this"
                    " search space (`python -m offline_tools.latency_table profile`) or restrict the space"
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
        if root.exists() and not root.is_dir():
            raise LatencyTableError(f"{root} exists and is not a directory; choose another output path")
        existing = (
            [p for p in root.iterdir() if _TABLE_FILE_RE.match(p.name) or p.name == METADATA_FILE]
            if (root.is_dir())
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
            _atomic_write_text(root / name, json.dumps(data, indent=1) + "\n")
            written.add(name)
        metadata = {"format": TABLE_FORMAT, "version": TABLE_VERSION, **self.metadata}
        metadata["resolutions"] = list(self.resolutions)
        metadata.setdefault("width_mult", self.geometry.width_mult)
        _atomic_write_text(root / METADATA_FILE, json.dumps(metadata, indent=2, sort_keys=False) + "\n")
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
                " profile it (`python -m offline_tools.latency_table profile --resolutions"
                f" {resolution} ...`) or restrict the search space to the table's resolutions"
            ) from None

    def _source(self, resolution: int) -> str:
        return self._sources.get(resolution, f"{self.name} (resolution {resolution})")

    def __repr__(self) -> str:
        corr = "" if self.correction is None else f", corrected x{self.correction.scale:.3f}"
        return f"LatencyTable({self.name!r}, resolutions={list(self.resolutions)}{corr})"


def _format_resolutions(entries: Mapping[int, Any]) -> str:
    values = sorted(entries)
    return ", ".join(map(str, values)) if values else "none"


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


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


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    return ranks


def spearman_rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks; ties handled)."""
    if len(a) != len(b) or len(a) < 2:
        raise LatencyTableError("rank correlation needs two sequences of equal length >= 2")
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return float("nan")
    return cov / math.sqrt(va * vb)


def _pct_errors(predicted: Sequence[float], measured: Sequence[float]) -> list[float]:
    return [100.0 * (p - m) / m for p, m in zip(predicted, measured, strict=True)]


def _error_summary(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    errors = _pct_errors(predicted, measured)
    return {
        "mean_abs_pct_error": statistics.fmean(abs(e) for e in errors),
        "max_abs_pct_error": max(abs(e) for e in errors),
        "mean_signed_pct_error": statistics.fmean(errors),
        "spearman": spearman_rank_correlation(predicted, measured),
    }


# --------------------------------------------------------------------------------------------
# Execution environment (torch imported lazily)
# --------------------------------------------------------------------------------------------


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise LatencyTableError("profiling needs PyTorch; install the package's dependencies") from exc
    return torch


def _check_device_mode(device: str, mode: str) -> None:
    torch = _import_torch()
    if mode not in MODES:
        raise LatencyTableError(f"execution mode {mode!r} is not one of {', '.join(MODES)}")
    if device != "cpu" and not device.startswith("cuda"):
        raise LatencyTableError(f"device {device!r} is not supported; use 'cpu' or 'cuda' / 'cuda:N'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LatencyTableError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if mode == "cuda_graph" and not device.startswith("cuda"):
        raise LatencyTableError("mode 'cuda_graph' needs a CUDA device; on a CPU use --mode eager")


def device_name(device: str) -> str:
    """A human-readable name of ``device`` (CPU model and core count, or the GPU's name)."""
    if device.startswith("cuda"):
        torch = _import_torch()
        return str(torch.cuda.get_device_name(torch.device(device)))
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    torch = _import_torch()
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise LatencyTableError(f"threads={threads} must be >= 1")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _environment(device: str, mode: str, threads: int | None) -> dict[str, Any]:
    torch = _import_torch()
    try:
        from importlib.metadata import version

        ofa_version = version("ofa")
    except Exception:  # pragma: no cover - metadata missing
        ofa_version = "unknown"
    return {
        "device": "cuda" if device.startswith("cuda") else "cpu",
        "device_name": device_name(device),
        "mode": mode,
        "threads": threads,
        "dtype": "float32",
        "batch": 1,
        "torch": str(torch.__version__),
        "ofa": ofa_version,
        "python": platform.python_version(),
        "host": platform.node(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _build_operator(spec: OperatorSpec, geometry: MobileNetV3Geometry) -> nn.Module:
    """The standalone module of ``spec``, built from OFA's layer classes as in an extracted sub-network."""
    from ofa.utils import MyGlobalAvgPool2d
    from ofa.utils.layers import ConvLayer, IdentityLayer, LinearLayer, MBConvLayer, ResidualBlock
    from torch import nn

    c_in = spec.input_shape[-1]
    c_out = spec.output_shape[-1]
    layer: nn.Module
    if spec.kind == "Conv":
        layer = ConvLayer(c_in, c_out, kernel_size=3, stride=2, act_func="h_swish")
    elif spec.kind == "expanded_conv":
        expand_ratio = 1 if spec.expand == c_in else spec.expand / c_in
        conv = MBConvLayer(
            c_in,
            c_out,
            kernel_size=spec.kernel,
            stride=spec.stride,
            expand_ratio=expand_ratio,
            mid_channels=None if expand_ratio == 1 else spec.expand,
            act_func="h_swish" if spec.hs else "relu",
            use_se=bool(spec.se),
        )
        layer = ResidualBlock(conv, IdentityLayer(c_in, c_in) if spec.idskip else None)
    elif spec.kind == "Conv_1":
        layer = ConvLayer(c_in, c_out, kernel_size=1, act_func="h_swish")
    elif spec.kind == "AvgPool2D":
        layer = MyGlobalAvgPool2d(keep_dim=True)
    elif spec.kind == "Conv_2":
        layer = ConvLayer(c_in, c_out, kernel_size=1, bias=False, use_bn=False, act_func="h_swish")
    elif spec.kind == "Logits":

        class Logits(nn.Module):
            """``x.view(batch, -1)`` followed by the classifier, as in ``MobileNetV3.forward``."""

            def __init__(self) -> None:
                super().__init__()
                self.classifier = LinearLayer(c_in, geometry.n_classes, dropout_rate=0.0)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out: torch.Tensor = self.classifier(x.view(x.size(0), -1))
                return out

        layer = Logits()
    else:
        raise LatencyTableError(f"operator kind {spec.kind!r} cannot be profiled")
    return layer


def _input_shape(spec: OperatorSpec) -> tuple[int, int, int, int]:
    h, w, c = spec.input_shape
    return (1, c, h, w)


class _Runner:
    """A module with a static input, prepared for timing in one execution mode.

    CPU: one call per sample under ``torch.inference_mode()``, timed with ``perf_counter_ns``
    (wall) and ``thread_time_ns`` (the thread's CPU time).

    CUDA: after an eager warm-up on a side stream (as PyTorch requires before a capture),
    ``cuda_replays`` back-to-back calls of the module are captured into one CUDA graph
    (``mode="cuda_graph"``) — so, as inside a level's graph, no CPU launch gap separates one
    operator from the next — and a sample is one replay between two CUDA events, divided by
    ``cuda_replays``. In ``eager`` mode a sample is ``cuda_replays`` eager calls between events.
    Graphs may share one memory ``pool`` (:func:`torch.cuda.graph_pool_handle`): they never run
    concurrently and their outputs are never read, so sharing only saves memory.
    """

    def __init__(
        self,
        module: nn.Module,
        x: torch.Tensor,
        *,
        device: str,
        mode: str,
        warmup: int,
        cuda_replays: int,
        pool: Any = None,
    ) -> None:
        self.torch = _import_torch()
        self.module = module
        self.x = x
        self.cuda = device.startswith("cuda")
        self.replays = max(1, cuda_replays)
        self.graph: Any = None
        self.n_samples = 0
        self.n_preempted = 0
        """CPU samples during which the thread was involuntarily descheduled (Linux only)."""
        torch = self.torch
        if not self.cuda:
            self.warm(warmup)
            return
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(max(3, warmup)):
                    module(x)
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
            if mode == "cuda_graph":
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, pool=pool):
                    for _ in range(self.replays):
                        module(x)
                torch.cuda.synchronize()
        self.warm(max(1, warmup // self.replays))

    def _run(self) -> None:
        """One sample's work: one call on CPU; ``cuda_replays`` calls (one graph replay) on CUDA."""
        if self.graph is not None:
            self.graph.replay()
        elif self.cuda:
            for _ in range(self.replays):
                self.module(self.x)
        else:
            self.module(self.x)

    def warm(self, n: int) -> None:
        """``n`` untimed samples' worth of runs."""
        if n <= 0:
            return
        with self.torch.inference_mode():
            for _ in range(n):
                self._run()
        if self.cuda:
            self.torch.cuda.synchronize()

    def sample(self, n: int) -> tuple[list[float], list[float]]:
        """``n`` timing samples in ms: ``(wall, thread_cpu)``; on CUDA both are the CUDA-event times."""
        torch = self.torch
        if not self.cuda:
            wall_clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
            switches = _involuntary_switches
            wall: list[float] = []
            cpu: list[float] = []
            with torch.inference_mode():
                for _ in range(n):
                    s0 = switches()
                    w0, c0 = wall_clock(), cpu_clock()
                    self.module(self.x)
                    c1, w1 = cpu_clock(), wall_clock()
                    if switches() != s0:
                        self.n_preempted += 1
                    wall.append((w1 - w0) / 1e6)
                    cpu.append((c1 - c0) / 1e6)
            self.n_samples += n
            return wall, cpu
        events = []
        with torch.inference_mode():
            for _ in range(n):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                self._run()
                end.record()
                events.append((start, end))
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) / self.replays for start, end in events]
        return times, times

    def close(self) -> None:
        """Release the captured graph."""
        self.graph = None


def _involuntary_switches() -> int:
    """Involuntary context switches of the calling thread so far (0 where not available)."""
    if _RUSAGE_THREAD is None:
        return 0
    return int(resource.getrusage(_RUSAGE_THREAD).ru_nivcsw)


def _preempted_fraction(runners: Sequence[_Runner]) -> float | None:
    total = sum(r.n_samples for r in runners)
    if total == 0 or _RUSAGE_THREAD is None:
        return None
    return round(sum(r.n_preempted for r in runners) / total, 4)


@dataclass(frozen=True)
class _RunnerSettings:
    """What every :class:`_Runner` of one profiling or measuring run shares (one graph pool)."""

    device: str
    mode: str
    warmup: int
    cuda_replays: int
    pool: Any = None

    def runner(self, module: nn.Module, x: torch.Tensor) -> _Runner:
        """A runner of ``module`` on input ``x`` (already on :attr:`device`)."""
        return _Runner(
            module,
            x,
            device=self.device,
            mode=self.mode,
            warmup=self.warmup,
            cuda_replays=self.cuda_replays,
            pool=self.pool,
        )

    def operator_runner(self, spec: OperatorSpec, geometry: MobileNetV3Geometry) -> _Runner:
        """A runner of operator ``spec`` standalone: random weights, eval mode, a random input."""
        torch = _import_torch()
        module = _build_operator(spec, geometry).to(self.device).eval()
        return self.runner(module, torch.randn(_input_shape(spec), device=self.device))


def _release_runners(runners: list[_Runner], device: str) -> None:
    """Close and drop ``runners`` (the list is emptied), then return cached CUDA memory."""
    for runner in runners:
        runner.close()
    runners.clear()
    if device.startswith("cuda"):
        _import_torch().cuda.empty_cache()


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30
_allocator_state: str | None = None


def stabilize_cpu_allocator() -> str:
    """Make glibc malloc keep freed activation memory instead of returning it to the kernel.

    By default glibc serves large blocks (e.g. a 1.8 MB activation) with ``mmap`` and unmaps
    them on free, or trims the heap, so the next inference page-faults the memory back in:
    about 1,250 page faults and 2.6 of 3.9 ms for one stage-1 block at 160 px in a fresh
    process, none once the process has raised its dynamic threshold (which a process that has
    loaded the super-network usually has). Which state a process is in depends on its
    history, so profiling and measuring fix it explicitly: ``mallopt(M_MMAP_THRESHOLD, 32 MiB)``
    and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``, for the whole process, once. The engine can do the
    same for steady per-frame latency. Returns a description of the state (``"default"`` where
    ``mallopt`` is not available, e.g. not glibc).
    """
    global _allocator_state
    if _allocator_state is not None:
        return _allocator_state
    state = "default"
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            mallopt = libc.mallopt
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and (
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
            ):
                state = (
                    f"glibc mallopt: mmap_threshold={MMAP_THRESHOLD_BYTES >> 20} MiB, trim_threshold=1 GiB"
                )
        except (OSError, AttributeError):
            pass
    _allocator_state = state
    return state


def resolve_clock(device: str, threads: int | None, clock: str = "auto") -> str:
    """The clock used for timing: ``"thread_cpu"``, ``"wall"`` or ``"cuda_events"``.

    ``"auto"``: CUDA events on a GPU; on a CPU with one intra-op thread, the calling thread's CPU
    time (``time.thread_time_ns``), which equals the wall-clock latency on an otherwise idle core
    but is not inflated when other processes share the cores (it excludes time the thread is
    descheduled); with several threads, the wall clock.
    """
    if device.startswith("cuda"):
        return "cuda_events"
    if clock == "auto":
        return "thread_cpu" if threads == 1 else "wall"
    if clock not in CLOCKS:
        raise LatencyTableError(f"clock {clock!r} is not one of auto, {', '.join(CLOCKS)}")
    if clock == "thread_cpu" and threads != 1:
        raise LatencyTableError("clock 'thread_cpu' measures one thread; use it with threads=1 or use 'wall'")
    return clock


def _check_counts(warmup: int, iterations: int, rounds: int) -> None:
    """Reject counts the timing loop cannot honour (no samples, negative warm-up)."""
    if warmup < 0 or iterations < 1 or rounds < 1:
        raise LatencyTableError(
            f"warmup={warmup}, iterations={iterations}, rounds={rounds}: need >= 0, >= 1 and >= 1"
        )


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _round_robin(
    runners: Sequence[_Runner],
    *,
    warm_each_pass: Sequence[bool],
    calls: Sequence[Sequence[int]],
    bar: Any,
    what: str,
) -> list[tuple[list[float], list[float]]]:
    """Time every runner in passes over all of them; returns ``(wall, thread_cpu)`` per runner.

    ``calls[i][p]`` is the number of consecutive timed calls of runner ``i`` in pass ``p``.
    Interleaving makes slow drifts and bursts of load from other processes hit every runner
    alike instead of biasing whichever was being timed at the time.
    """
    out: list[tuple[list[float], list[float]]] = [([], []) for _ in runners]
    n_passes = max((len(c) for c in calls), default=0)
    for index in range(n_passes):
        bar.set_description(f"{what} pass {index + 1}/{n_passes}")
        for runner, warm, counts, (wall, cpu) in zip(runners, warm_each_pass, calls, out, strict=True):
            if index >= len(counts):
                continue
            if warm:
                runner.warm(1)
            w, c = runner.sample(counts[index])
            wall += w
            cpu += c
            bar.update(1)
    return out


# --------------------------------------------------------------------------------------------
# Profiling
# --------------------------------------------------------------------------------------------


def profile_latency_table(
    *,
    device: str = "cpu",
    resolutions: Iterable[int],
    mode: Mode | str = "eager",
    threads: int | None = 1,
    warmup: int = PROFILE_WARMUP,
    iterations: int = PROFILE_ITERATIONS,
    rounds: int = PROFILE_ROUNDS,
    width_mult: float = 1.2,
    space: SearchSpace | None = None,
    configs: Sequence[SubnetConfig] | None = None,
    cuda_replays: int = 10,
    clock: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> LatencyTable:
    """Measure every operator of the space standalone on ``device`` and return the table.

    Each operator is built from OFA's layer classes exactly as ``get_active_subnet`` builds it
    in an extracted sub-network (``ConvLayer``, ``ResidualBlock(MBConvLayer, IdentityLayer)``,
    ``MyGlobalAvgPool2d``, ``LinearLayer``), random weights, eval mode, batch 1, float32, and
    timed in the engine's execution mode (see :class:`_Runner`): CPU eager with ``threads``
    intra-op threads, or CUDA graphs / eager on a GPU.

    The ``iterations`` samples of each operator are taken in ``rounds`` passes over all the
    operators of all resolutions, in network order, a few consecutive calls per pass. Each
    operator therefore runs after other operators have evicted its weights from the per-core
    cache, as inside a network, and load from other processes (or a drifting clock) spreads
    over all operators and resolutions instead of biasing some. ``count``/``mean``/``std`` are
    of the fastest ``1 - TRIM_FRACTION`` of the samples (:func:`summarize_samples`).

    ``clock`` (see :func:`resolve_clock`): by default the thread's CPU time on a CPU with one
    thread, CUDA events on a GPU. ``space`` restricts the kernel/expand/depth choices (default:
    the full OFA space); ``configs``, when given, profiles only the operators those sub-networks
    use (small tables for tests and quick checks).
    """
    torch = _import_torch()
    resolutions = sorted({int(r) for r in resolutions})
    if not resolutions:
        raise LatencyTableError("no resolutions to profile; pass at least one (e.g. --resolutions 128 160)")
    _check_counts(warmup, iterations, rounds)
    device = str(device)
    _check_device_mode(device, str(mode))
    used_clock = resolve_clock(device, threads, clock)
    pick = 0 if used_clock == "wall" else 1
    allocator = stabilize_cpu_allocator() if not device.startswith("cuda") else None
    geometry = MobileNetV3Geometry(width_mult=width_mult)
    for r in resolutions:
        try:
            SubnetConfig(resolution=r, ks=(3,) * 20, e=(3,) * 20, d=(2,) * 5)
        except DofaError as exc:
            raise LatencyTableError(f"cannot profile resolution {r}: {exc}") from exc

    plan: dict[int, list[OperatorSpec]] = {}
    for r in resolutions:
        if configs is not None:
            needed: dict[str, OperatorSpec] = {}
            for cfg in configs:
                if cfg.resolution == r:
                    for spec in geometry.operators(cfg):
                        needed.setdefault(spec.key, spec)
            if needed:
                plan[r] = list(needed.values())
        else:
            plan[r] = geometry.space_operators(r, space)
    if not plan:
        raise LatencyTableError(
            "no operators to profile: no given sub-network uses the requested resolutions"
        )

    n_passes = len(_split(iterations, rounds))
    n_ops = sum(len(ops) for ops in plan.values())
    bar = _progress(n_ops * (1 + n_passes), "profile", progress)
    started = time.perf_counter()
    torch.manual_seed(seed)
    pool = torch.cuda.graph_pool_handle() if mode == "cuda_graph" else None
    settings = _RunnerSettings(
        device=device, mode=str(mode), warmup=warmup, cuda_replays=cuda_replays, pool=pool
    )
    with _torch_threads(threads):
        keys: list[tuple[int, str]] = []
        runners: list[_Runner] = []
        bar.set_description("profile: build")
        for r, ops in plan.items():
            for op in ops:
                runners.append(settings.operator_runner(op, geometry))
                keys.append((r, op.key))
                bar.update(1)
        timed = _round_robin(
            runners,
            warm_each_pass=[False] * len(runners),
            calls=[_split(iterations, rounds)] * len(runners),
            bar=bar,
            what="profile",
        )
        preempted = _preempted_fraction(runners)
        _release_runners(runners, device)
    entries: dict[int, dict[str, OperatorStats]] = {r: {} for r in plan}
    for (r, key), samples in zip(keys, timed, strict=True):
        entries[r][key] = summarize_samples(samples[pick])
    bar.close()
    metadata = _environment(device, str(mode), threads)
    metadata.update(
        {
            "width_mult": width_mult,
            "warmup": warmup,
            "iterations": iterations,
            "rounds": n_passes,
            "cuda_replays": cuda_replays if device.startswith("cuda") else None,
            "clock": used_clock,
            "allocator": allocator,
            "preempted_fraction": preempted,
            "statistic": f"mean and std of the fastest {100 - round(100 * TRIM_FRACTION)} % of the samples",
            "operators": "standalone OFA layer modules (ofa.utils.layers), random weights, eval mode",
            "subset": configs is not None,
            "profile_seconds": round(time.perf_counter() - started, 2),
            "seed": seed,
        }
    )
    return LatencyTable(entries, metadata=metadata, geometry=geometry, name=f"profiled {device}/{mode} table")


class _NullBar:
    def update(self, n: int = 1) -> None:
        """No-op."""

    def set_description(self, desc: str) -> None:
        """No-op."""

    def close(self) -> None:
        """No-op."""


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NullBar()
    from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

    return tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# End-to-end measurement and validation
# --------------------------------------------------------------------------------------------


def _build_supernet(width_mult: float) -> nn.Module:
    try:
        from dynamic_ofa_ros import ofa_compat
    except ImportError:
        ofa_compat = None  # type: ignore[assignment]
    if ofa_compat is not None and hasattr(ofa_compat, "build_ofa_mbv3"):
        net: nn.Module = ofa_compat.build_ofa_mbv3(width_mult=width_mult)
        return net.eval()
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    net = OFAMobileNetV3(
        n_classes=1000,
        width_mult=width_mult,
        ks_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4],
        dropout_rate=0.0,
    )
    return net.eval()


def _extract(supernet: nn.Module, cfg: SubnetConfig) -> nn.Module:
    try:
        from dynamic_ofa_ros import bn
    except ImportError:
        bn = None  # type: ignore[assignment]
    if bn is not None and hasattr(bn, "extract_subnet"):
        sub: nn.Module = bn.extract_subnet(supernet, cfg)
        return sub.eval()
    supernet.set_active_subnet(**cfg.ofa_kwargs())  # type: ignore[operator]
    sub = supernet.get_active_subnet(preserve_weight=True)  # type: ignore[operator]
    return sub.eval()


@dataclass
class SubnetSamples:
    """End-to-end timing samples of one sub-network (ms): wall clock and the thread's CPU time.

    On CUDA both lists hold the CUDA-event times.
    """

    config: SubnetConfig
    wall_ms: list[float] = field(default_factory=list)
    thread_cpu_ms: list[float] = field(default_factory=list)
    n_preempted: int = 0
    """Samples during which the thread was involuntarily descheduled (CPU, Linux)."""

    def samples(self, clock: str) -> list[float]:
        """The samples of ``clock`` (``"wall"``; ``"thread_cpu"`` or ``"cuda_events"``)."""
        return self.wall_ms if clock == "wall" else self.thread_cpu_ms


def measure_subnets(
    configs: Sequence[SubnetConfig],
    *,
    supernet: nn.Module | None = None,
    device: str = "cpu",
    mode: Mode | str = "eager",
    threads: int | None = 1,
    warmup: int = VALIDATE_WARMUP,
    iterations: int = VALIDATE_ITERATIONS,
    rounds: int = VALIDATE_ROUNDS,
    width_mult: float = 1.2,
    cuda_replays: int = 10,
    seed: int = 0,
    paired_operators: bool = False,
    operator_calls_per_pass: int = PROFILE_ITERATIONS // PROFILE_ROUNDS,
    clock: str = "auto",
    progress: bool = True,
) -> tuple[list[SubnetSamples], LatencyTable | None]:
    """End-to-end latency samples of each sub-network, extracted and run in the execution mode.

    Sub-networks are extracted from ``supernet`` (default: a random-weight OFA MobileNetV3; the
    weights do not change latency) with ``dynamic_ofa_ros.bn.extract_subnet`` and measured
    round-robin in ``rounds`` passes; in each pass a sub-network gets one untimed run (the
    engine runs the same level frame after frame, so its steady state is warm) and then its
    share of ``iterations`` timed runs. CPU: ``inference_mode``, ``threads`` threads; CUDA: a
    CUDA graph per sub-network in ``cuda_graph`` mode.

    With ``paired_operators``, every operator of these sub-networks is also timed standalone in
    the same passes (interleaved with the sub-networks, ``operator_calls_per_pass`` consecutive
    calls per pass as when profiling) and returned as a second table: its prediction error
    against these measurements is the predictor's own error, free of any change of machine
    load between profiling and validation.
    """
    torch = _import_torch()
    device = str(device)
    _check_device_mode(device, str(mode))
    _check_counts(warmup, iterations, rounds)
    if not device.startswith("cuda"):
        stabilize_cpu_allocator()
    torch.manual_seed(seed)
    geometry = MobileNetV3Geometry(width_mult=width_mult)
    net = supernet if supernet is not None else _build_supernet(width_mult)
    op_specs: dict[tuple[int, str], OperatorSpec] = {}
    if paired_operators:
        for cfg in configs:
            for spec in geometry.operators(cfg):
                op_specs.setdefault((cfg.resolution, spec.key), spec)
    subnet_calls = _split(iterations, rounds)
    n_passes = len(subnet_calls)
    operator_calls = [max(1, operator_calls_per_pass)] * n_passes
    n_items = len(configs) + len(op_specs)
    bar = _progress(n_items * (1 + n_passes), "measure", progress)
    pool = torch.cuda.graph_pool_handle() if mode == "cuda_graph" else None
    settings = _RunnerSettings(
        device=device, mode=str(mode), warmup=warmup, cuda_replays=cuda_replays, pool=pool
    )
    with _torch_threads(threads):
        runners: list[_Runner] = []
        bar.set_description("measure: extract")
        for cfg in configs:
            sub = _extract(net, cfg).to(device)
            x = torch.randn(1, 3, cfg.resolution, cfg.resolution, device=device)
            runners.append(settings.runner(sub, x))
            bar.update(1)
        for spec in op_specs.values():
            runners.append(settings.operator_runner(spec, geometry))
            bar.update(1)
        # sub-networks and their operators alternate within each pass
        order = list(range(len(runners)))
        random.Random(seed).shuffle(order)
        timed_shuffled = _round_robin(
            [runners[i] for i in order],
            warm_each_pass=[i < len(configs) for i in order],
            calls=[subnet_calls if i < len(configs) else operator_calls for i in order],
            bar=bar,
            what="measure",
        )
        timed: list[tuple[list[float], list[float]]] = [([], [])] * len(runners)
        for position, i in enumerate(order):
            timed[i] = timed_shuffled[position]
        preempted = [runner.n_preempted for runner in runners]
        op_preempted = _preempted_fraction(runners[len(configs) :])
        _release_runners(runners, device)
    bar.close()
    results = [
        SubnetSamples(cfg, wall, cpu, n)
        for cfg, (wall, cpu), n in zip(configs, timed, preempted, strict=False)
    ]
    paired: LatencyTable | None = None
    if paired_operators:
        used_clock = resolve_clock(device, threads, clock)
        pick = 0 if used_clock == "wall" else 1
        entries: dict[int, dict[str, OperatorStats]] = {}
        for (r, key), samples in zip(op_specs, timed[len(configs) :], strict=True):
            entries.setdefault(r, {})[key] = summarize_samples(samples[pick])
        paired = LatencyTable(
            entries,
            metadata={
                "clock": used_clock,
                "width_mult": width_mult,
                "subset": True,
                "preempted_fraction": op_preempted,
            },
            geometry=geometry,
            name="paired operator table",
        )
    return results, paired


def _calls_per_pass(metadata: Mapping[str, Any]) -> int:
    """Consecutive calls per operator and pass used when the table was profiled."""
    try:
        return max(1, int(metadata["iterations"]) // int(metadata["rounds"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return max(1, PROFILE_ITERATIONS // PROFILE_ROUNDS)


def _add_fit(
    report: dict[str, Any],
    raw: Sequence[float],
    measured: Sequence[float],
    configs: Sequence[SubnetConfig],
    seed: int,
    clock: str,
) -> None:
    if len(raw) < 3:
        raise LatencyTableError(
            "fitting a correction with a leave-one-out check needs at least 3 sub-networks"
        )
    correction = fit_correction(raw, measured)
    loo: list[float] = []
    for i in range(len(raw)):
        others = [j for j in range(len(raw)) if j != i]
        c = fit_correction([raw[j] for j in others], [measured[j] for j in others])
        loo.append(c.apply(raw[i]))
    fitted = [correction.apply(v) for v in raw]
    fit_resolutions = sorted({c.resolution for c in configs})
    report["fitted_in_sample"] = _error_summary(fitted, measured)
    report["fitted_loo"] = _error_summary(loo, measured)
    details = {
        "fitted_on": f"{len(raw)} sub-networks, seed {seed}, resolutions {fit_resolutions}",
        "clock": clock,
        "date": report["date"],
        "raw_mean_abs_pct_error": report["raw"]["mean_abs_pct_error"],
        "loo_mean_abs_pct_error": report["fitted_loo"]["mean_abs_pct_error"],
    }
    report["fitted_correction"] = LatencyCorrection(
        scale=correction.scale, offset_ms=correction.offset_ms, n_subnets=len(raw), details=details
    ).to_dict()


def validate_latency_table(
    table: LatencyTable,
    *,
    n_subnets: int = 30,
    device: str = "cpu",
    mode: Mode | str = "eager",
    threads: int | None = 1,
    seed: int = 0,
    warmup: int = VALIDATE_WARMUP,
    iterations: int = VALIDATE_ITERATIONS,
    rounds: int = VALIDATE_ROUNDS,
    space: SearchSpace | None = None,
    configs: Sequence[SubnetConfig] | None = None,
    supernet: nn.Module | None = None,
    fit: bool = False,
    paired: bool = False,
    cuda_replays: int = 10,
    clock: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure sub-networks end to end and compare them with the table's prediction.

    ``n_subnets`` random sub-networks of ``space`` (default: the full OFA space at the table's
    resolutions) drawn with ``seed``, or the given ``configs``, are measured with
    :func:`measure_subnets` in the same execution mode as profiling and summarised with the
    same statistic (:func:`summarize_samples`) and clock (``clock``, default the table's
    ``metadata["clock"]``, else :func:`resolve_clock`'s choice).

    Returns a JSON-ready dict: the environment (``device``, ``device_name``, ``mode``,
    ``threads``, versions), ``clock``, ``n_subnets``, ``seconds``, ``raw`` (the plain operator
    sum), ``raw_wall`` (the same against wall-clock time, on a CPU), ``corrected`` when the
    table has a correction, and with ``fit=True`` a ``fitted_correction`` (weighted least
    squares on these measurements, see :func:`fit_correction`), ``fitted_in_sample`` and
    ``fitted_loo`` (leave-one-out: each sub-network predicted by a correction fitted on the
    others, an honest out-of-sample estimate). Each error block has ``mean_abs_pct_error``,
    ``max_abs_pct_error``, ``mean_signed_pct_error`` (bias; negative = the table is
    optimistic) and ``spearman`` (rank correlation); ``subnets`` lists every sub-network with
    its predictions and measurements. With ``paired``, the sub-networks' operators are also
    re-timed in the same passes (see :func:`measure_subnets`) and ``paired`` holds the error of
    that same-session table: the predictor's modelling error without the drift of machine load
    between profiling and validation (large differences between ``raw`` and ``paired`` mean the
    machine was busier or quieter while profiling).
    """
    if configs is None:
        if n_subnets < 2:
            raise LatencyTableError(f"n_subnets={n_subnets}: validation needs at least 2 sub-networks")
        space = space or SearchSpace(resolutions=table.resolutions)
        rng = random.Random(seed)
        configs = [space.sample(rng) for _ in range(n_subnets)]
    elif len(configs) < 2:
        raise LatencyTableError("validation needs at least 2 sub-networks")
    device = str(device)
    used_clock = resolve_clock(device, threads, clock or str(table.metadata.get("clock", "auto")))
    raw = [table.predict_raw(cfg) for cfg in configs]  # fails early on a missing key or resolution
    started = time.perf_counter()
    results, paired_table = measure_subnets(
        configs,
        supernet=supernet,
        device=device,
        mode=mode,
        threads=threads,
        warmup=warmup,
        iterations=iterations,
        rounds=rounds,
        width_mult=table.geometry.width_mult,
        cuda_replays=cuda_replays,
        seed=seed,
        paired_operators=paired,
        operator_calls_per_pass=_calls_per_pass(table.metadata),
        clock=used_clock,
        progress=progress,
    )
    measured = [summarize_samples(r.samples(used_clock)).mean for r in results]
    measured_wall = [summarize_samples(r.wall_ms).mean for r in results]

    report: dict[str, Any] = _environment(device, str(mode), threads)
    report.update(
        {
            "table": table.name,
            "table_device": table.metadata.get("device_name"),
            "clock": used_clock,
            "allocator": _allocator_state if not device.startswith("cuda") else None,
            "n_subnets": len(configs),
            "seed": seed,
            "warmup": warmup,
            "iterations": iterations,
            "rounds": rounds,
            "statistic": f"mean of the fastest {100 - round(100 * TRIM_FRACTION)} % of the samples",
            "seconds": round(time.perf_counter() - started, 2),
            "raw": _error_summary(raw, measured),
        }
    )
    n_samples = sum(len(r.wall_ms) for r in results)
    if not device.startswith("cuda") and _RUSAGE_THREAD is not None and n_samples:
        report["preempted_fraction"] = round(sum(r.n_preempted for r in results) / n_samples, 4)
        report["table_preempted_fraction"] = table.metadata.get("preempted_fraction")
    if used_clock == "thread_cpu":
        report["raw_wall"] = _error_summary(raw, measured_wall)
    paired_raw: list[float] | None = None
    if paired_table is not None:
        paired_raw = [paired_table.predict_raw(cfg) for cfg in configs]
        report["paired"] = _error_summary(paired_raw, measured)
        report["paired_preempted_fraction"] = paired_table.metadata.get("preempted_fraction")
    corrected: list[float] | None = None
    if table.correction is not None:
        corrected = [table.correction.apply(v) for v in raw]
        report["corrected"] = _error_summary(corrected, measured)
        report["correction"] = table.correction.to_dict()
    if fit:
        try:
            _add_fit(report, raw, measured, configs, seed, used_clock)
        except LatencyTableError as exc:
            report["fit_error"] = str(exc)
    report["subnets"] = [
        {
            "arch": cfg.key(),
            "config": cfg.to_dict(),
            "predicted_raw_ms": raw[i],
            **({"predicted_corrected_ms": corrected[i]} if corrected is not None else {}),
            "measured_ms": measured[i],
            "measured_median_ms": statistics.median(results[i].samples(used_clock)),
            "measured_wall_ms": measured_wall[i],
            **({"paired_predicted_ms": paired_raw[i]} if paired_raw is not None else {}),
        }
        for i, cfg in enumerate(configs)
    ]
    return report


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m offline_tools.latency_table`` (``profile`` / ``validate``)."""
    parser = argparse.ArgumentParser(
        prog="python -m offline_tools.latency_table",
        description="Per-operator latency look-up tables for OFA MobileNetV3: profile this device, validate.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
        p.add_argument(
            "--mode", choices=MODES, default=None, help="eager (CPU default) or cuda_graph (CUDA default)"
        )
        p.add_argument(
            "--threads", type=int, default=1, help="CPU intra-op threads (default 1, the engine's)"
        )
        p.add_argument(
            "--cuda-replays",
            type=int,
            default=10,
            help="CUDA: calls per timed sample, captured into one graph (default 10)",
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--clock",
            choices=("auto", *CLOCKS),
            default=None,
            help="CPU timing clock (default auto: thread CPU time with 1 thread, else wall)",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    prof = sub.add_parser("profile", help="measure every operator of the space on this device")
    common(prof)
    prof.add_argument("--resolutions", type=int, nargs="+", required=True, help="e.g. 96 112 128 144 160")
    prof.add_argument("--out", required=True, help="output directory (<r>_lookup_table.json + metadata.json)")
    prof.add_argument("--force", action="store_true", help="overwrite an existing table in --out")
    prof.add_argument("--warmup", type=int, default=PROFILE_WARMUP)
    prof.add_argument(
        "--iterations", type=int, default=PROFILE_ITERATIONS, help="timing samples per operator"
    )
    prof.add_argument("--rounds", type=int, default=PROFILE_ROUNDS, help="passes over all operators")
    prof.add_argument("--width-mult", type=float, default=1.2)
    prof.add_argument(
        "--validate",
        type=int,
        default=0,
        metavar="N",
        help="then measure N random sub-networks end to end, fit and store a correction, report errors",
    )
    prof.add_argument(
        "--paired", action="store_true", help="with --validate: also a same-session paired check"
    )
    prof.add_argument(
        "--report", help="write the validation report JSON here (default <out>/validation.json)"
    )

    val = sub.add_parser("validate", help="measure random sub-networks end to end against a table")
    common(val)
    val.add_argument("--table", required=True, help="latency table directory")
    val.add_argument("--n-subnets", type=int, default=30)
    val.add_argument("--warmup", type=int, default=VALIDATE_WARMUP)
    val.add_argument("--iterations", type=int, default=VALIDATE_ITERATIONS, help="timed runs per sub-network")
    val.add_argument("--rounds", type=int, default=VALIDATE_ROUNDS, help="passes over the sub-networks")
    val.add_argument("--resolutions", type=int, nargs="+", help="sample only these resolutions")
    val.add_argument("--fit-correction", action="store_true", help="fit a correction on these measurements")
    val.add_argument(
        "--paired", action="store_true", help="also re-time the sub-networks' operators in the same passes"
    )
    val.add_argument(
        "--write", action="store_true", help="with --fit-correction: store it in the table's metadata"
    )
    val.add_argument("--report", help="write the full report JSON here (default: only print the summary)")
    return parser


def _default_mode(device: str, mode: str | None) -> str:
    if mode is not None:
        return mode
    return "cuda_graph" if device.startswith("cuda") else "eager"


def _print_summary(report: Mapping[str, Any]) -> None:
    def line(name: str, s: Mapping[str, float]) -> str:
        return (
            f"  {name:<22} mean |err| {s['mean_abs_pct_error']:5.1f} %"
            f"  max |err| {s['max_abs_pct_error']:5.1f} %  bias {s['mean_signed_pct_error']:+5.1f} %"
            f"  spearman {s['spearman']:.3f}"
        )

    print(
        f"validation on {report['device_name']} ({report['mode']}, threads={report['threads']}),"
        f" {report['n_subnets']} sub-networks, {report['seconds']} s:"
    )
    print(f"  clock: {report['clock']}")
    if report.get("preempted_fraction") is not None:
        print(
            f"  samples preempted by other processes: {100 * report['preempted_fraction']:.0f} % of the"
            " end-to-end runs"
            + (
                f", {100 * report['table_preempted_fraction']:.0f} % of the table's operator runs"
                if report.get("table_preempted_fraction") is not None
                else ""
            )
        )
    print(line("raw operator sum", report["raw"]))
    if "raw_wall" in report:
        print(line("raw vs wall clock", report["raw_wall"]))
    if "paired" in report:
        print(line("paired (same session)", report["paired"]))
    if "corrected" in report:
        print(line("stored correction", report["corrected"]))
    if "fit_error" in report:
        print(f"  no correction fitted: {report['fit_error']}")
    if "fitted_loo" in report:
        c = report["fitted_correction"]
        print(f"  fitted correction: {c['scale']:.4f} x sum + {c['offset_ms']:.3f} ms")
        print(line("fitted (in sample)", report["fitted_in_sample"]))
        print(line("fitted (leave-one-out)", report["fitted_loo"]))


def _validation_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "date", "n_subnets", "seed", "clock", "preempted_fraction", "raw", "raw_wall", "paired",
        "fitted_in_sample", "fitted_loo", "fit_error",
    )  # fmt: skip
    return {k: report[k] for k in keys if k in report}


def _write_report(report: Mapping[str, Any], path: Path) -> None:
    _atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def _cmd_profile(args: argparse.Namespace) -> int:
    mode = _default_mode(args.device, args.mode)
    out = Path(args.out)
    if out.is_dir() and any(_TABLE_FILE_RE.match(p.name) or p.name == METADATA_FILE for p in out.iterdir()):
        if not args.force:
            raise LatencyTableError(
                f"{out} already holds a latency table; choose another --out or pass --force"
            )
    table = profile_latency_table(
        device=args.device,
        resolutions=args.resolutions,
        mode=mode,
        threads=args.threads,
        warmup=args.warmup,
        iterations=args.iterations,
        rounds=args.rounds,
        width_mult=args.width_mult,
        cuda_replays=args.cuda_replays,
        clock=args.clock or "auto",
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(
        f"profiled {sum(len(table.keys(r)) for r in table.resolutions)} operators at resolutions"
        f" {list(table.resolutions)} in {table.metadata['profile_seconds']} s"
        f" on {table.metadata['device_name']}"
    )
    if args.validate:
        report = validate_latency_table(
            table,
            n_subnets=args.validate,
            device=args.device,
            mode=mode,
            threads=args.threads,
            seed=args.seed,
            fit=True,
            paired=args.paired,
            clock=args.clock,
            cuda_replays=args.cuda_replays,
            progress=not args.no_progress,
        )
        _print_summary(report)
        if "fitted_correction" in report:
            table = table.with_correction(
                LatencyCorrection.from_dict(report["fitted_correction"], where="fit")
            )
        table.metadata["validation"] = _validation_summary(report)
    table.save(out, overwrite=args.force)
    if args.validate:
        _write_report(report, Path(args.report) if args.report else out / "validation.json")
    print(f"wrote {out}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    mode = _default_mode(args.device, args.mode)
    table = LatencyTable.load(args.table, resolutions=args.resolutions)
    if args.write and not args.fit_correction:
        raise LatencyTableError("--write stores a fitted correction; add --fit-correction")
    report = validate_latency_table(
        table,
        n_subnets=args.n_subnets,
        device=args.device,
        mode=mode,
        threads=args.threads,
        seed=args.seed,
        warmup=args.warmup,
        iterations=args.iterations,
        rounds=args.rounds,
        fit=args.fit_correction,
        paired=args.paired,
        cuda_replays=args.cuda_replays,
        clock=args.clock,
        progress=not args.no_progress,
    )
    _print_summary(report)
    if args.report:
        _write_report(report, Path(args.report))
    if args.write:
        if "fitted_correction" not in report:
            raise LatencyTableError(f"no correction to store: {report.get('fit_error')}")
        full = LatencyTable.load(args.table)
        corrected = full.with_correction(
            LatencyCorrection.from_dict(report["fitted_correction"], where="fit")
        )
        corrected.metadata["validation"] = _validation_summary(report)
        corrected.save(args.table, overwrite=True)
        print(f"stored the correction in {Path(args.table) / METADATA_FILE}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m offline_tools.latency_table``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "profile":
            return _cmd_profile(args)
        return _cmd_validate(args)
    except DofaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
