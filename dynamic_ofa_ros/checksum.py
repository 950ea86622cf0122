r"""The weights checksum, in NumPy: the one definition behind ``supernet.state_dict_sha256``.

Version 1: SHA-256 over the header ``b"dynamic_ofa_ros.state_dict_sha256.v1\\n"`` followed, for
every **floating-point** entry in sorted key order (integer entries such as
``num_batches_tracked`` are skipped), by ``key.encode("utf-8") + b"\\n" +
",".join(shape).encode() + b"\\n"`` and the values converted to float32, C-contiguous,
little-endian. :func:`dynamic_ofa_ros.supernet.state_dict_sha256` (modules and torch tensors)
converts each tensor to such an array and calls :func:`entries_sha256`, so a level's BN
statistics or a super-network hash the same with and without torch: the compiled-level cache
key and a table's ``supernet.sha256`` are computed here in a process that never imports torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["HASH_HEADER", "array_state_sha256", "entries_sha256"]

HASH_HEADER = b"dynamic_ofa_ros.state_dict_sha256.v1\n"


def entries_sha256(entries: Iterable[tuple[str, np.ndarray]]) -> str:
    """The checksum of ``(key, float32 values)`` pairs given in sorted key order (hex SHA-256).

    The caller has already dropped non-floating entries and sorted the keys; each array is
    hashed as C-contiguous little-endian float32.
    """
    digest = hashlib.sha256(HASH_HEADER)
    for key, values in entries:
        array = np.ascontiguousarray(values, dtype="<f4")
        digest.update(key.encode("utf-8") + b"\n" + ",".join(str(s) for s in array.shape).encode() + b"\n")
        digest.update(array.tobytes())
    return digest.hexdigest()


def array_state_sha256(state: Mapping[str, np.ndarray]) -> str:
    """The weights checksum of a state dict of NumPy arrays (see the module docstring).

    Args:
        state: parameter/buffer name -> array; integer and boolean arrays are skipped, like
            torch's integer buffers.

    Returns:
        The 64-digit hex SHA-256, equal to ``state_dict_sha256`` of the same values as tensors.
    """
    return entries_sha256(
        (key, state[key]) for key in sorted(state) if np.issubdtype(np.asarray(state[key]).dtype, np.floating)
    )
