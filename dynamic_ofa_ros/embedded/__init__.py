"""The embedded default super-network: fp16 safetensors shards + ``manifest.json``.

This folder ships the weights trained by ``offline_tools/train_supernet.py``
(see the embedded-model issue). Layout::

    manifest.json
    supernet-0000.safetensors
    supernet-0001.safetensors
    ...

``manifest.json``::

    {"format": "dynamic_ofa_ros.embedded_supernet", "version": 1,
     "name": "ofa_mbv3_d234_e346_k357_w1.2", "dtype": "float16",
     "shards": [{"file": "supernet-0000.safetensors", "sha256": "...", "bytes": 15721234, "tensors": 120}],
     "state_dict_sha256": "...",           # supernet.state_dict_sha256 of the loaded (fp32) model
     "n_classes": 1000, "width_mult": 1.2,
     "ks_list": [3, 5, 7], "expand_ratio_list": [3, 4, 6], "depth_list": [2, 3, 4],
     "resolutions": [96, 112, 128, 144, 160],   # the trained input-size range
     "dataset": "imagenette train-128px", "training": {...}}

Every floating-point tensor of the super-network's ``state_dict`` (all but the
integer ``num_batches_tracked`` counters) is stored as float16; loading converts
back to float32. Each shard's SHA-256 and size are checked before it is parsed.

This module only reads and writes that format; :mod:`dynamic_ofa_ros.supernet`
turns it into a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynamic_ofa_ros.errors import ModelSourceError
from dynamic_ofa_ros.timing import atomic_write_bytes, atomic_write_text, sha256_bytes

if TYPE_CHECKING:  # reading the manifest needs no torch; only the weights do
    import torch

__all__ = [
    "EMBEDDED_DIR",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "SHARD_PATTERN",
    "read_manifest",
    "read_state",
    "verify_embedded",
    "write_embedded",
]

EMBEDDED_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "dynamic_ofa_ros.embedded_supernet"
SHARD_PATTERN = "supernet-{:04d}.safetensors"
FP16_MAX = 65504.0

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "name": str,
    "dtype": str,
    "shards": list,
    "state_dict_sha256": str,
    "n_classes": int,
    "width_mult": (int, float),
    "ks_list": list,
    "expand_ratio_list": list,
    "depth_list": list,
    "resolutions": list,
    "dataset": str,
    "training": dict,
}


def read_manifest(directory: str | os.PathLike[str] = EMBEDDED_DIR) -> dict[str, Any]:
    """Read and validate ``manifest.json`` of an embedded-model folder.

    Args:
        directory: the embedded-model folder (default: the one shipped in this package).

    Returns:
        The manifest, every field of the format present with the right type.

    Raises:
        ModelSourceError: the file is missing, unreadable, or any field is wrong; the message
            names the field and what to do.
    """
    folder = Path(directory)
    path = folder / MANIFEST_NAME
    manifest = _load_json_object(folder, path)
    _check_fields(path, manifest)
    _check_shards(path, manifest["shards"])
    for key in ("ks_list", "expand_ratio_list", "depth_list", "resolutions"):
        if not manifest[key] or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in manifest[key]
        ):
            raise ModelSourceError(f"{path}: field {key!r} must be a non-empty list of integers")
    return manifest


def _load_json_object(folder: Path, path: Path) -> dict[str, Any]:
    """The manifest file parsed, which must be a JSON object."""
    if not path.is_file():
        if folder.resolve() == EMBEDDED_DIR:
            raise ModelSourceError(
                f"the embedded model is not in this installation yet ({path} is missing): it is produced by "
                "offline_tools/train_supernet.py (embedded-model issue). Meanwhile use --model ofa_zoo "
                "(ImageNet weights, needs internet or a cached file), a checkpoint path, or "
                "--model random with allow_random for latency-only work"
            )
        raise ModelSourceError(f"{path} is missing: {folder} is not an embedded-model folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(
            f"{path}: cannot read the manifest ({exc}); restore it from the repository"
        ) from exc
    if not isinstance(manifest, dict):
        raise ModelSourceError(f"{path}: the manifest must be a JSON object")
    return manifest


def _check_fields(path: Path, manifest: dict[str, Any]) -> None:
    """Every required field present with its type; format, version and dtype supported."""
    for key, kind in _REQUIRED.items():
        if key not in manifest:
            raise ModelSourceError(
                f"{path}: field {key!r} is missing; re-export with supernet.export_embedded"
            )
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise ModelSourceError(
                f"{path}: field {key!r} has the wrong type ({type(manifest[key]).__name__})"
            )
    if manifest["format"] != MANIFEST_FORMAT:
        raise ModelSourceError(f"{path}: format is {manifest['format']!r}, expected {MANIFEST_FORMAT!r}")
    if manifest["version"] != 1:
        raise ModelSourceError(
            f"{path}: manifest version {manifest['version']} is not supported (this code reads version 1); "
            "update dynamic_ofa_ros"
        )
    if manifest["dtype"] not in ("float16", "float32"):
        raise ModelSourceError(f"{path}: dtype {manifest['dtype']!r} must be float16 or float32")


def _check_shards(path: Path, shards: list[Any]) -> None:
    """At least one shard, each with a plain file name, a checksum and a size."""
    if not shards:
        raise ModelSourceError(f"{path}: the manifest lists no shards")
    for i, shard in enumerate(shards):
        if (
            not isinstance(shard, dict)
            or not isinstance(shard.get("file"), str)
            or not isinstance(shard.get("sha256"), str)
            or not isinstance(shard.get("bytes"), int)
        ):
            raise ModelSourceError(
                f"{path}: shards[{i}] needs 'file' (str), 'sha256' (str) and 'bytes' (int)"
            )
        if "/" in shard["file"] or "\\" in shard["file"] or shard["file"].startswith("."):
            raise ModelSourceError(f"{path}: shards[{i}].file {shard['file']!r} must be a plain file name")


def _read_shard(folder: Path, shard: dict[str, Any]) -> bytes:
    """A shard's bytes, after checking its size and SHA-256 against the manifest (nothing parsed)."""
    path = folder / str(shard["file"])
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelSourceError(
            f"embedded-model shard {path} is missing (listed in {folder / MANIFEST_NAME}); restore it "
            "from the repository (git checkout / git lfs pull) or re-export the model"
        ) from exc
    except OSError as exc:
        raise ModelSourceError(f"cannot read embedded-model shard {path}: {exc}") from exc
    if len(data) != shard["bytes"] or sha256_bytes(data) != shard["sha256"]:
        raise ModelSourceError(
            f"embedded-model shard {path} is corrupt or truncated ({len(data)} bytes, manifest says "
            f"{shard['bytes']}; SHA-256 differs from the manifest): restore it from the repository"
        )
    return data


def verify_embedded(directory: str | os.PathLike[str] = EMBEDDED_DIR) -> dict[str, Any]:
    """The manifest, after every shard's size and SHA-256 was checked (hashing only: no torch).

    The weights are then exactly those the manifest's ``state_dict_sha256`` was computed from
    at export, so that checksum identifies the model without loading it.

    Raises:
        ModelSourceError: as :func:`read_manifest`, or a shard is missing, truncated or modified.
    """
    folder = Path(directory)
    manifest = read_manifest(folder)
    for shard in manifest["shards"]:
        _read_shard(folder, shard)
    return manifest


def read_state(
    directory: str | os.PathLike[str] = EMBEDDED_DIR,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(manifest, state)``: every shard verified (size, SHA-256) and merged, tensors as float32."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    folder = Path(directory)
    manifest = read_manifest(folder)
    state: dict[str, torch.Tensor] = {}
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        data = _read_shard(folder, shard)
        try:
            tensors = st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise ModelSourceError(
                f"embedded-model shard {path} is not a valid safetensors file: {exc}"
            ) from exc
        for key, tensor in tensors.items():
            if key in state:
                raise ModelSourceError(f"embedded-model shard {path}: tensor {key!r} appears in two shards")
            state[key] = tensor.float() if tensor.is_floating_point() else tensor
    return manifest, state


def write_embedded(
    state: Mapping[str, torch.Tensor],
    out_dir: str | os.PathLike[str],
    *,
    manifest_fields: Mapping[str, Any],
    shard_mb: float = 15.0,
    dtype: str = "float16",
) -> dict[str, Any]:
    """Write ``state`` (floating tensors only) as shards of at most ``shard_mb`` MiB + the manifest.

    ``manifest_fields`` supplies every manifest field except ``format``, ``version``,
    ``dtype`` and ``shards``. The write is ordered so that a crash never leaves a
    manifest pointing at mismatched shards: the old manifest is removed first, shards
    are written atomically, stale shards are deleted and the new manifest is written
    last (atomically). Returns the manifest.
    """
    if shard_mb <= 0:
        raise ModelSourceError(f"shard_mb={shard_mb} must be positive")
    import torch

    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    from safetensors.torch import save as st_save

    limit = int(shard_mb * 1024 * 1024)
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").to(torch_dtype).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes + 1024 > limit:
            groups.append({})
            size = 0
        groups[-1][key] = tensor
        size += nbytes
    blobs = []
    for i, group in enumerate(groups):
        blob = st_save(group, metadata={"format": MANIFEST_FORMAT, "shard": str(i)})
        if len(blob) > limit:
            raise ModelSourceError(
                f"shard {i} would be {len(blob) / 2**20:.1f} MiB, above shard_mb={shard_mb}: raise shard_mb"
            )
        blobs.append((SHARD_PATTERN.format(i), blob, len(group)))
    manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "version": 1}
    manifest.update(
        {k: v for k, v in manifest_fields.items() if k not in ("format", "version", "shards", "dtype")}
    )
    manifest["dtype"] = dtype
    manifest["shards"] = [
        {"file": name, "sha256": sha256_bytes(blob), "bytes": len(blob), "tensors": n}
        for name, blob, n in blobs
    ]
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST_NAME
    manifest_path.unlink(missing_ok=True)
    for name, blob, _ in blobs:
        atomic_write_bytes(folder / name, blob)
    keep = {name for name, _, _ in blobs}
    for stale in folder.glob("supernet-*.safetensors"):
        if stale.name not in keep:
            stale.unlink()
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest
