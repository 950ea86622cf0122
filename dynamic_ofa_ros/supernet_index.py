"""Identities of weight files already loaded once: file size + SHA-256 -> the super-network's identity.

A checkpoint (``.pth``, ``.safetensors``) or OFA's ImageNet file is identified by the checksum of
its *loaded* weights (:func:`~dynamic_ofa_ros.supernet.state_dict_sha256`), which needs torch.
When :func:`~dynamic_ofa_ros.supernet.load_supernet` has loaded such a file it records here the
file's size and SHA-256 with the identity it found (name, checksum, resolutions, layout, ...).
:func:`~dynamic_ofa_ros.supernet.open_supernet` then identifies the same bytes by hashing the file
(no torch), so with a warm compiled-level cache the weights are never loaded.

The index is ``supernet-index.json`` in the compiled-level cache
(:func:`~dynamic_ofa_ros.backends.cache.cache_root`). It is never trusted blindly: the file
carries the SHA-256 of its entries and is ignored (then rewritten by the next load) when that
does not match or the file cannot be read or parsed; an entry is used only for a file of the
same size and SHA-256, and only if its fields have the expected types. A record is written only
when the file did not change while it was loaded (size and modification time before and after),
atomically; the :data:`MAX_ENTRIES` most recently recorded files are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from dynamic_ofa_ros.timing import atomic_write_text, sha256_file

__all__ = ["INDEX_FILE", "MAX_ENTRIES", "FileStamp", "IdentityIndex"]

INDEX_FILE = "supernet-index.json"
#: At most this many files are remembered (the most recently recorded ones).
MAX_ENTRIES = 32
_FORMAT = "dynamic_ofa_ros.supernet_index"
_VERSION = 1
_IDENTITY_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "sha256": str,
    "resolutions": list,
    "meaningful_accuracy": bool,
    "n_classes": int,
    "width_mult": (int, float),
    "ks_list": list,
    "expand_ratio_list": list,
    "depth_list": list,
    "metadata": dict,
}


@dataclass(frozen=True)
class FileStamp:
    """A file's size, modification time and SHA-256 at one moment."""

    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileStamp:
        """Stat and hash ``path`` (raises OSError when it cannot be read)."""
        before = os.stat(path)
        digest = sha256_file(path)
        return cls(size=before.st_size, mtime_ns=before.st_mtime_ns, sha256=digest)

    def unchanged(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` still has this size and modification time."""
        try:
            now = os.stat(path)
        except OSError:
            return False
        return now.st_size == self.size and now.st_mtime_ns == self.mtime_ns


def _entries_sha256(entries: dict[str, Any]) -> str:
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _recorded(record: object) -> float:
    """When an entry was recorded (0 for an entry without a time)."""
    when = record.get("recorded") if isinstance(record, dict) else None
    return float(when) if isinstance(when, (int, float)) and not isinstance(when, bool) else 0.0


def _valid_identity(identity: object) -> TypeGuard[dict[str, Any]]:
    if not isinstance(identity, dict):
        return False
    for key, kind in _IDENTITY_TYPES.items():
        value = identity.get(key)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            return False
    lists = (identity[k] for k in ("resolutions", "ks_list", "expand_ratio_list", "depth_list"))
    return all(
        items and all(isinstance(v, int) and not isinstance(v, bool) for v in items) for items in lists
    )


class IdentityIndex:
    """The index file in ``root`` (default: the compiled-level cache); see the module docstring."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            from dynamic_ofa_ros.backends.cache import cache_root

            root = cache_root()
        self.path = Path(root) / INDEX_FILE

    def _entries(self) -> dict[str, Any]:
        """The verified entries (file SHA-256 -> record); empty when the file is absent or untrustworthy."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("version") != _VERSION:
            return {}
        entries = data.get("entries")
        if not isinstance(entries, dict) or data.get("entries_sha256") != _entries_sha256(entries):
            return {}
        return entries

    def lookup(self, stamp: FileStamp) -> dict[str, Any] | None:
        """The identity recorded for a file of ``stamp``'s size and SHA-256, else ``None``."""
        record = self._entries().get(stamp.sha256)
        if not isinstance(record, dict) or record.get("bytes") != stamp.size:
            return None
        identity = record.get("identity")
        return dict(identity) if _valid_identity(identity) else None

    def record(self, path: str | os.PathLike[str], stamp: FileStamp, identity: dict[str, Any]) -> bool:
        """Remember ``identity`` for the bytes ``stamp`` describes, if ``path`` did not change since.

        Returns whether it was written; a cache folder that cannot be written is not an error
        (the next start loads the weights again).
        """
        if not stamp.unchanged(path) or not _valid_identity(identity):
            return False
        entries = self._entries()
        entries.pop(stamp.sha256, None)
        entries[stamp.sha256] = {"bytes": stamp.size, "identity": identity, "recorded": time.time()}
        by_age = sorted(entries, key=lambda k: _recorded(entries[k]), reverse=True)
        entries = {k: entries[k] for k in by_age[:MAX_ENTRIES]}
        data = {
            "format": _FORMAT,
            "version": _VERSION,
            "entries": entries,
            "entries_sha256": _entries_sha256(entries),
        }
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
            return True
        return False
