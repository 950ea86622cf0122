"""Checkpoints of a resumable run (``--checkpoint-dir`` / ``--resume``): write, find, verify, compare.

A checkpoint is a folder ``step-NNNNNNN-<random>/`` of safetensors shards (groups ``model``,
``optimizer``, ``rng``; at most 15 MiB each) and ``checkpoint.json`` (everything else, with the
SHA-256 of every file). ``LATEST.json`` beside it names the newest one and holds its JSON's SHA-256.
No pickle: reading one parses JSON and safetensors only.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dynamic_ofa_ros.arch import SUPERNET_NAME
from dynamic_ofa_ros.timing import sha256_file, write_json
from offline_tools.training.config import TrainConfig, TrainSetupError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_JSON",
    "CHECKPOINT_LATEST",
    "CHECKPOINT_SHARD_BYTES",
    "PER_CALL_KEYS",
    "Checkpoint",
    "CheckpointError",
    "Resumable",
    "check_resume_config",
    "load_model_state",
    "model_state_to_files",
    "numpy_state_from_json",
    "numpy_state_to_json",
    "optimizer_state_from_files",
    "optimizer_state_to_files",
    "py_state_from_json",
    "py_state_to_json",
    "read_checkpoint",
    "restore_global_rngs",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "dynamic_ofa_ros.train_checkpoint"
CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_LATEST = "LATEST.json"
CHECKPOINT_SHARD_BYTES = 15 * 2**20
# Config keys that may differ between the calls of one resumable run: they decide where a call
# stops and what it does after training, never the training trajectory.
PER_CALL_KEYS = frozenset(
    {
        "time_budget_min",
        "post_reserve_s",
        "end_margin_s",
        "decode_threads",
        "final_calib_images",
        "measure_subnets",
        "measure_sweep",
        "measure_flush_every",
    }
)


class CheckpointError(TrainSetupError):
    """A checkpoint that cannot be resumed: missing, corrupted, or from another config or data."""


@dataclass
class Checkpoint:
    """A verified checkpoint folder (every file matched its SHA-256) and its JSON."""

    folder: Path
    meta: dict[str, Any]  # checkpoint.json

    def tensors(self, group: str) -> dict[str, Tensor]:
        """All tensors of one group (``model``, ``optimizer``, ``rng``) from its shards, on the CPU."""
        from safetensors.torch import load_file

        out: dict[str, Tensor] = {}
        for name in self.meta["tensor_files"][group]:
            out.update(load_file(str(self.folder / name)))
        return out


@dataclass
class Resumable:
    """What a resumable run (``--checkpoint-dir`` and/or ``--resume``) adds to training."""

    checkpoint_dir: Path | None
    checkpoint: Checkpoint | None
    stop_after_steps: int | None
    run_info: dict[str, Any]  # data identity, git, seeds, sources: copied into the checkpoint JSON


def py_state_to_json(state: tuple[Any, ...]) -> list[Any]:
    """``random.getstate()`` as JSON (version, the 625 ints, gauss)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def py_state_from_json(data: Sequence[Any]) -> tuple[Any, ...]:
    """The inverse of :func:`py_state_to_json`, for ``random.setstate``."""
    version, internal, gauss = data
    return (int(version), tuple(int(x) for x in internal), gauss)


def numpy_state_to_json() -> dict[str, Any]:
    """NumPy's global generator state (``np.random.get_state(legacy=False)``) as JSON."""
    state = np.random.get_state(legacy=False)
    if not isinstance(state, dict):  # pragma: no cover - legacy=False always returns a dict
        raise TypeError("numpy returned a legacy RNG state")
    inner = state["state"]
    return {
        "bit_generator": state["bit_generator"],
        "state": {"key": [int(x) for x in inner["key"]], "pos": int(inner["pos"])},
        "has_gauss": int(state["has_gauss"]),
        "gauss": float(state["gauss"]),
    }


def numpy_state_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`numpy_state_to_json`, for ``np.random.set_state``."""
    inner = data["state"]
    return {**data, "state": {"key": np.asarray(inner["key"], dtype=np.uint32), "pos": int(inner["pos"])}}


def _fsync_path(path: Path) -> None:
    # save_file does not fsync; a directory is fsynced so that the renames inside it are durable
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_sharded(tensors: Mapping[str, Tensor], folder: Path, prefix: str, max_bytes: int) -> list[str]:
    """``tensors`` as ``<prefix>-NNNN.safetensors`` files of at most ``max_bytes`` each; their names."""
    from safetensors.torch import save_file

    limit = max_bytes - 2**20  # headroom for each file's JSON header (names, shapes, offsets)
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > limit:
            raise ValueError(f"checkpoint: tensor {name} ({nbytes} bytes) exceeds one shard ({limit} bytes)")
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    names: list[str] = []
    for i, shard in enumerate(shards):
        fname = f"{prefix}-{i:04d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": CHECKPOINT_FORMAT})
        names.append(fname)
    return names


def _latest_name(root: Path) -> str | None:
    try:
        data = json.loads((root / CHECKPOINT_LATEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("checkpoint") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _write_folder(
    tmp: Path, final: Path, groups: Mapping[str, Mapping[str, Tensor]], meta: Mapping[str, Any]
) -> None:
    """Shards + ``checkpoint.json`` into ``tmp``, fsynced, then ``tmp`` renamed to ``final``."""
    tensor_files = {
        group: _save_sharded(tensors, tmp, group, CHECKPOINT_SHARD_BYTES) for group, tensors in groups.items()
    }
    files: dict[str, dict[str, Any]] = {}
    for fname in sorted(f for names in tensor_files.values() for f in names):
        os.chmod(tmp / fname, 0o644)  # as the other outputs (safetensors may create 0600)
        _fsync_path(tmp / fname)
        files[fname] = {"sha256": sha256_file(tmp / fname), "bytes": (tmp / fname).stat().st_size}
    write_json(tmp / CHECKPOINT_JSON, {**meta, "tensor_files": tensor_files, "files": files})
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700
    _fsync_path(tmp)
    os.rename(tmp, final)


def write_checkpoint(root: Path, groups: Mapping[str, Mapping[str, Tensor]], meta: Mapping[str, Any]) -> Path:
    """Write a checkpoint under ``root`` atomically and make it the one ``--resume root`` loads.

    The files go into a hidden temporary folder that is renamed to ``step-NNNNNNN-<random>`` once
    complete (a rename is atomic); then ``LATEST.json`` (names it and holds its JSON's SHA-256) is
    replaced with ``os.replace``. A crash at any point leaves the previous checkpoint loadable.
    Keeps the new checkpoint and the one before it. Returns the new folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{int(meta['global_step']):07d}-{secrets.token_hex(3)}"  # unique: a step can be saved twice
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    final = root / name
    try:
        _write_folder(tmp, final, groups, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    previous = _latest_name(root)
    pointer = {
        "format": CHECKPOINT_FORMAT,
        "checkpoint": name,
        "checkpoint_json_sha256": sha256_file(final / CHECKPOINT_JSON),
        "global_step": int(meta["global_step"]),
    }
    write_json(root / CHECKPOINT_LATEST, pointer)
    _fsync_path(root)
    for old in root.glob("step-*"):  # keep the new one and the one before it (a fallback)
        if old.name not in (name, previous):
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*"):  # temporary folders of writes that crashed
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _find_folder(path: Path) -> tuple[Path, str | None]:
    """The checkpoint folder ``--resume path`` means, and its JSON's SHA-256 from ``LATEST.json``."""
    pointer = path / CHECKPOINT_LATEST
    if pointer.is_file():
        try:
            data = json.loads(pointer.read_text(encoding="utf-8"))
            return path / str(data["checkpoint"]), str(data["checkpoint_json_sha256"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{pointer}: unreadable ({exc!r}); pass one step-* folder to --resume"
            ) from exc
    if (path / CHECKPOINT_JSON).is_file():
        return path, None
    raise CheckpointError(
        f"{path}: no checkpoint (neither {CHECKPOINT_LATEST} nor {CHECKPOINT_JSON}); "
        "pass the folder that --checkpoint-dir wrote"
    )


def read_checkpoint(path: Path) -> Checkpoint:
    """Find, read and verify the checkpoint of ``--resume path`` (no tensor is parsed yet).

    ``path`` is a ``--checkpoint-dir`` folder (its ``LATEST.json`` names the checkpoint) or one
    ``step-*`` folder. Every file's SHA-256 is checked against ``checkpoint.json`` (and that JSON's
    against ``LATEST.json``); any problem raises :class:`CheckpointError` naming the file.
    """
    folder, expected_sha = _find_folder(path)
    fallback = sorted(p.name for p in folder.parent.glob("step-*") if p != folder)
    advice = (
        "the file is corrupted or was changed: resume from an intact checkpoint"
        + (f" (an older one is kept: --resume {folder.parent / fallback[-1]})" if fallback else "")
        + ", or start a new run without --resume"
    )
    meta_path = folder / CHECKPOINT_JSON
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing; {advice}")
    if expected_sha is not None and sha256_file(meta_path) != expected_sha:
        raise CheckpointError(
            f"{meta_path}: SHA-256 differs from the one in {path / CHECKPOINT_LATEST}; {advice}"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc}); {advice}") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != 1:
        raise CheckpointError(f"{meta_path}: not a version-1 {CHECKPOINT_FORMAT} file")
    for fname, info in meta["files"].items():
        fpath = folder / fname
        if not fpath.is_file():
            raise CheckpointError(f"{fpath}: missing; {advice}")
        digest = sha256_file(fpath)
        if digest != info["sha256"]:
            raise CheckpointError(
                f"{fpath}: SHA-256 mismatch (file {digest[:16]}..., "
                f"{CHECKPOINT_JSON} {info['sha256'][:16]}...); {advice}"
            )
    return Checkpoint(folder=folder, meta=meta)


def check_resume_config(checkpoint: Checkpoint, cfg: TrainConfig) -> None:
    """Raise :class:`CheckpointError` listing every config key (except ``PER_CALL_KEYS``) that differs."""
    saved: dict[str, Any] = checkpoint.meta.get("config", {})
    now = cfg.to_dict()
    missing = "<absent>"
    diffs = [
        f"{key}: checkpoint {saved.get(key, missing)!r}, now {now.get(key, missing)!r}"
        for key in sorted(set(saved) | set(now))
        if key not in PER_CALL_KEYS and saved.get(key, missing) != now.get(key, missing)
    ]
    if checkpoint.meta.get("supernet") != SUPERNET_NAME:
        diffs.append(f"supernet: checkpoint {checkpoint.meta.get('supernet')!r}, now {SUPERNET_NAME!r}")
    if diffs:
        raise CheckpointError(
            f"the config differs from the checkpoint's ({checkpoint.folder / CHECKPOINT_JSON}): "
            + "; ".join(diffs)
            + ". A resumed run continues one schedule, so pass the same --config, --set, --epochs and "
            "--seed as the first call (only " + ", ".join(sorted(PER_CALL_KEYS)) + " may change between "
            "calls), or start a new run without --resume"
        )


def load_model_state(net: nn.Module, checkpoint: Checkpoint) -> None:
    """Copy the checkpoint's fp32 model state into ``net`` (same names and shapes required)."""
    state = checkpoint.tensors("model")
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"the network differs from the checkpoint's: {len(missing)} tensors missing {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}, {len(shapes)} of another shape {shapes[:3]}; "
            "the checkpoint comes from another architecture or code version: start a new run without --resume"
        )
    net.load_state_dict(state)  # copies into the existing tensors (device and dtype kept)


def model_state_to_files(net: nn.Module) -> dict[str, Tensor]:
    """``net``'s state as CPU tensors to save, floating-point ones as fp32 copies."""
    return {
        k: (v.detach().to("cpu", dtype=torch.float32) if v.is_floating_point() else v.detach().cpu()).clone()
        for k, v in net.state_dict().items()
    }


def optimizer_state_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``opt.state_dict()`` into tensors (``<param index>.<key>``) and a JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"type": type(opt).__name__, "param_groups": groups, "scalars": scalars}


def optimizer_state_from_files(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`optimizer_state_to_files`: a state dict for ``load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, _, key = name.partition(".")
        state.setdefault(int(idx), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def restore_global_rngs(meta: Mapping[str, Any], rng: Mapping[str, Tensor], device: torch.device) -> None:
    """Python's, NumPy's and torch's global generators (CPU, and CUDA on a CUDA run) from a checkpoint."""
    random.setstate(py_state_from_json(meta["rng"]["python_global"]))
    np.random.set_state(numpy_state_from_json(meta["rng"]["numpy_global"]))
    torch.set_rng_state(rng["torch_cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(rng["torch_cuda"], device)
