"""A level table's BN statistics: the ``<name>.bn.safetensors`` file, read and checked without torch.

The file holds float32 tensors ``level<N>/<module path>.running_mean|running_var``.
:func:`read_bn_file` verifies its SHA-256 against the table, reads it with ``safetensors.numpy``
and returns a :class:`BNStatistics`: NumPy arrays per level, which give torch tensors on
indexing (``table.bn[n][key]``, as before) and arrays through :meth:`BNStatistics.arrays`, so a
process that runs compiled levels from the cache never imports torch for its table.
:func:`check_bn_shapes` is the table's check of those arrays (finite, non-negative variances,
the architecture's keys and shapes); :func:`bn_file_bytes` writes the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.errors import LevelTableError
from dynamic_ofa_ros.timing import sha256_bytes

if TYPE_CHECKING:
    import torch

    from dynamic_ofa_ros.levels import Level

__all__ = [
    "BNStatistics",
    "ShapeSource",
    "as_arrays",
    "bn_file_bytes",
    "check_bn_shapes",
    "read_bn_file",
]

BN_KEY = re.compile(r"^level(\d+)/(.+\.(?:running_mean|running_var))$")
_HEADER_BYTES = 8


class ShapeSource(Protocol):
    """What the shape check needs from a super-network (a ``Supernet`` or a ``SupernetSource``)."""

    def expected_bn_shapes(self, config: SubnetConfig) -> dict[str, tuple[int, ...]]:
        """BN state keys and shapes of ``config``'s extracted sub-network."""


class BNStatistics(Mapping[int, dict[str, "torch.Tensor"]]):
    """Per-level BN statistics as read from a BN file: float32 NumPy arrays.

    ``stats[n]`` is level ``n``'s state as torch tensors (sharing the arrays' memory; this
    imports torch), the type :attr:`~dynamic_ofa_ros.levels.LevelTable.bn` always had;
    :meth:`arrays` gives the arrays themselves without torch.
    """

    def __init__(self, arrays: Mapping[int, Mapping[str, np.ndarray]]) -> None:
        self._arrays = {int(n): dict(state) for n, state in arrays.items()}

    def __getitem__(self, level: int) -> dict[str, torch.Tensor]:
        import torch

        return {key: torch.from_numpy(value) for key, value in self._arrays[level].items()}

    def __iter__(self) -> Iterator[int]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def arrays(self, level: int) -> dict[str, np.ndarray]:
        """Level ``level``'s statistics as float32 arrays (KeyError for another level)."""
        return dict(self._arrays[level])


def as_arrays(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A BN state (torch tensors or arrays) as C-contiguous float32 NumPy arrays."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        # a tensor means torch is loaded already
        array = value if isinstance(value, np.ndarray) else value.detach().to("cpu").float().numpy()
        out[key] = np.ascontiguousarray(array, dtype=np.float32)
    return out


def _fail(where: str, message: str) -> LevelTableError:
    return LevelTableError(f"{where}: {message}")


def _header_dtypes(data: bytes) -> dict[str, str]:
    """Tensor name -> safetensors dtype (``F32``, ``BF16``...) from the file's JSON header."""
    size = int.from_bytes(data[:_HEADER_BYTES], "little")
    header = json.loads(data[_HEADER_BYTES : _HEADER_BYTES + size])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return {
        str(k): str(v.get("dtype")) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
    }


def _group(
    arrays: Mapping[str, np.ndarray], levels: Sequence[Level], where: str
) -> dict[int, dict[str, np.ndarray]]:
    groups: dict[int, dict[str, np.ndarray]] = {lv.level: {} for lv in levels}
    for key, array in arrays.items():
        match = BN_KEY.match(key)
        if match is None:
            raise _fail(where, f"tensor {key!r} is not named level<N>/<module>.running_mean|running_var")
        number = int(match.group(1))
        if number not in groups:
            raise _fail(where, f"tensor {key!r} belongs to level {number}, which the table does not have")
        groups[number][match.group(2)] = array
    for number, group in groups.items():
        if not group:
            raise _fail(where, f"no BN statistics for level {number}; recalibrate (dofa-levels calibrate)")
    return groups


def read_bn_file(path: Path, sha: str, levels: Sequence[Level], file: str) -> BNStatistics:
    """The BN file beside table ``file``: SHA-256 checked, float32, a group per level (LevelTableError)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise _fail(
            file,
            f"its BN file {path} is missing; copy it beside the table or rebuild (dofa-levels calibrate)",
        ) from exc
    except OSError as exc:
        raise _fail(file, f"cannot read its BN file {path}: {exc}") from exc
    actual = sha256_bytes(data)
    if actual != sha:
        raise _fail(
            file,
            f"BN file {path.name} has sha256 {actual[:16]}..., the table expects {sha[:16]}... (truncated, "
            "modified or from another build): restore both files from the same build or rebuild the table",
        )
    where = f"{file}: {path.name}"
    try:
        dtypes = _header_dtypes(data)
        for key, dtype in dtypes.items():
            if dtype != "F32":
                raise _fail(where, f"tensor {key!r} is {dtype}, expected float32 (F32)")
        arrays = st_load(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        if isinstance(exc, LevelTableError):
            raise
        raise _fail(file, f"BN file {path.name} is not a valid safetensors file ({exc}); rebuild") from exc
    return BNStatistics(_group(arrays, levels, where))


def check_bn_shapes(
    table_levels: Sequence[Level],
    arrays: Mapping[int, Mapping[str, np.ndarray]],
    supernet: ShapeSource | None,
    where: str,
) -> None:
    """Finite values and non-negative variances; with ``supernet`` also every key and shape per level."""
    for i, lv in enumerate(table_levels):
        loc = f"{where}: levels[{i}] (level {lv.level})"
        state = arrays[lv.level]
        for key, array in state.items():
            if not bool(np.isfinite(array).all()):
                raise _fail(loc, f"BN tensor {key!r} has NaN/inf values")
            if key.endswith(".running_var") and bool((array < 0).any()):
                raise _fail(loc, f"BN tensor {key!r} has negative values")
        if supernet is None:
            continue
        expected = supernet.expected_bn_shapes(lv.config)
        missing = sorted(set(expected) - set(state))
        if missing:
            raise _fail(
                loc, f"BN statistics for {missing[0]!r} are missing ({len(missing)} tensors); rebuild"
            )
        extra = sorted(set(state) - set(expected))
        if extra:
            raise _fail(loc, f"BN tensor {extra[0]!r} does not exist in this architecture; rebuild the table")
        for key, shape in expected.items():
            if tuple(state[key].shape) != shape:
                raise _fail(
                    loc,
                    f"BN tensor {key!r} has shape {tuple(state[key].shape)}, the architecture needs {shape}; "
                    "the BN file does not belong to these levels: rebuild the table",
                )


def bn_file_bytes(arrays: Mapping[int, Mapping[str, np.ndarray]], metadata: Mapping[str, str]) -> bytes:
    """The BN file's bytes: ``level<N>/<key>`` float32 tensors plus ``metadata``."""
    from safetensors.numpy import save as st_save

    flat = {
        f"level{number}/{key}": np.ascontiguousarray(array, dtype=np.float32)
        for number, state in arrays.items()
        for key, array in state.items()
    }
    return bytes(st_save(flat, metadata=dict(metadata)))
