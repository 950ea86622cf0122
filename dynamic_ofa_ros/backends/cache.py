"""On-disk cache of exported levels: one folder per (model, level, BN, exporter, backend, precision).

Location: ``$DOFA_CACHE_DIR`` when set, else ``compiled/`` in the package's cache folder
(``$DOFA_CACHE``, else ``$XDG_CACHE_HOME/dynamic_ofa_ros``, else
``~/.cache/dynamic_ofa_ros``; see :func:`dynamic_ofa_ros.supernet.cache_dir`).

An entry is ``<backend>-<digest>/`` holding ``model.onnx`` and ``manifest.json``; the digest
is the SHA-256 of the :class:`CacheKey` (super-network SHA-256, architecture key, SHA-256 of the
level's BN tensors, exporter version, backend and its version, precision), so anything that
changes the artefact names another folder. The manifest repeats the key and lists every
file's size and SHA-256; :meth:`ArtefactCache.get` verifies them on every load and rebuilds
an entry that is incomplete, corrupt or not what its name claims -- a cache entry is never
trusted. Entries are written into a temporary folder (each file atomically, the manifest
last) and renamed into place, so a crash or a concurrent writer never exposes half an entry.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from dynamic_ofa_ros.timing import atomic_write_bytes, atomic_write_text, sha256_file

__all__ = ["MANIFEST", "MODEL_FILE", "ArtefactCache", "CacheKey", "CachedLevel", "cache_root"]

MODEL_FILE = "model.onnx"
MANIFEST = "manifest.json"
_FORMAT = "dynamic_ofa_ros.compiled_level"
_VERSION = 1


def cache_root() -> Path:
    """Where compiled-level artefacts live (see the module docstring)."""
    env = os.environ.get("DOFA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from dynamic_ofa_ros.supernet import cache_dir

    return cache_dir() / "compiled"


@dataclass(frozen=True, kw_only=True)
class CacheKey:
    """Everything an exported level depends on."""

    supernet_sha256: str
    architecture: str
    bn_sha256: str
    exporter: str
    backend: str
    backend_version: str
    precision: str

    def digest(self) -> str:
        """SHA-256 of the key's canonical JSON."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def folder_name(self) -> str:
        """The entry's folder: ``<backend>-<first 32 hex digits of the digest>``."""
        return f"{self.backend}-{self.digest()[:32]}"


@dataclass(frozen=True)
class CachedLevel:
    """A verified entry: the ONNX file and its ``origin`` (``"hit"``, ``"built"``, ``"rebuilt: ..."``)."""

    model: Path
    origin: str

    @property
    def hit(self) -> bool:
        """Whether the entry was already on disk and intact."""
        return self.origin == "hit"


class ArtefactCache:
    """The cache folder ``root`` (default :func:`cache_root`); see the module docstring."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()

    def entry(self, key: CacheKey) -> Path:
        """The folder of ``key``'s entry (it may not exist)."""
        return self.root / key.folder_name()

    def problem(self, key: CacheKey) -> str | None:
        """Why ``key``'s entry cannot be used (``"missing"``, a corrupt file, ...), ``None`` if it can."""
        folder = self.entry(key)
        if not folder.is_dir():
            return "missing"
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"unreadable manifest ({exc})"
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            return "not a compiled-level manifest"
        if manifest.get("version") != _VERSION or manifest.get("key") != asdict(key):
            return "manifest of another version or key"
        files = manifest.get("files")
        if not isinstance(files, dict) or MODEL_FILE not in files:
            return f"manifest lists no {MODEL_FILE}"
        for name, meta in files.items():
            path = folder / str(name)
            if not isinstance(meta, dict) or not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != meta.get("bytes") or sha256_file(path) != meta.get("sha256"):
                return f"{name} does not match its SHA-256 (corrupt or modified)"
        return None

    def get(self, key: CacheKey, build: Callable[[], bytes]) -> CachedLevel:
        """The verified entry of ``key``; ``build()`` (the ONNX bytes) runs only when it is unusable."""
        problem = self.problem(key)
        if problem is None:
            return CachedLevel(self.entry(key) / MODEL_FILE, "hit")
        self._write(key, build())
        again = self.problem(key)
        if again is not None:
            raise OSError(f"compiled-level cache {self.entry(key)}: written but unusable ({again})")
        return CachedLevel(
            self.entry(key) / MODEL_FILE, "built" if problem == "missing" else f"rebuilt: {problem}"
        )

    def _write(self, key: CacheKey, model: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.entry(key)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.root))
        try:
            atomic_write_bytes(staging / MODEL_FILE, model)
            manifest = {
                "format": _FORMAT,
                "version": _VERSION,
                "key": asdict(key),
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "files": {
                    MODEL_FILE: {"bytes": len(model), "sha256": hashlib.sha256(model).hexdigest()},
                },
            }
            atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1) + "\n")
            if final.exists():  # unusable (checked by the caller): move it aside, then replace it
                trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=self.root))
                with contextlib.suppress(OSError):
                    final.rename(trash / "entry")
                shutil.rmtree(trash, ignore_errors=True)
            try:
                staging.rename(final)
            except OSError:
                # another process put a complete entry there first; ours is the same, drop it
                if self.problem(key) is not None:
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
