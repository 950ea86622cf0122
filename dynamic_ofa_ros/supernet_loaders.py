"""Loading super-network weights into torch: the sources of :func:`dynamic_ofa_ros.supernet.load_supernet`.

This module imports torch (and, through :mod:`dynamic_ofa_ros.ofa_compat`, ``ofa``);
:mod:`dynamic_ofa_ros.supernet` imports it only when weights are loaded or exported, so a process
that identifies its model by checksum alone (:func:`~dynamic_ofa_ros.supernet.open_supernet`
with a warm compiled-level cache) never does. Files loaded here (OFA's ImageNet weights, a
checkpoint) are recorded in the :class:`~dynamic_ofa_ros.supernet_index.IdentityIndex`.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dynamic_ofa_ros import embedded as _embedded
from dynamic_ofa_ros.arch import SUPERNET_NAME
from dynamic_ofa_ros.errors import ModelSourceError
from dynamic_ofa_ros.ofa_compat import (
    OFA_ZOO_URL_BASE,
    build_ofa_mbv3,
    is_ofa_mbv3,
    ofa_zoo_net,
    supernet_space_lists,
)
from dynamic_ofa_ros.supernet import (
    OFA_RESOLUTIONS,
    Supernet,
    SupernetSource,
    ofa_zoo_weights_file,
    state_dict_sha256,
)
from dynamic_ofa_ros.supernet_index import FileStamp, IdentityIndex

__all__ = ["export_embedded", "from_checkpoint", "from_manifest_dir", "from_ofa_zoo", "random_supernet"]

_DOWNLOAD_TIMEOUT_S = 30.0


def _stamp(path: Path) -> FileStamp | None:
    """The file's size, time and SHA-256 before loading it (``None``: unreadable; the loader says why)."""
    try:
        return FileStamp.of(path)
    except OSError:
        return None


def _remembered(path: Path, stamp: FileStamp | None, supernet: Supernet) -> Supernet:
    """Record ``supernet``'s identity for the file's bytes (see :mod:`dynamic_ofa_ros.supernet_index`)."""
    if stamp is not None:
        IdentityIndex().record(path, stamp, SupernetSource.from_supernet(supernet).record())
    return supernet


def _move_to(net: nn.Module, device: str | torch.device) -> nn.Module:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelSourceError(
            f"device {device!r} requested but CUDA is not available here; use device='cpu'"
        )
    return net.to(dev).eval()


def _ofa_key(key: str, model_keys: set[str]) -> str | None:
    """Map an OFA checkpoint key (old or new naming, optional ``module.`` prefix) to ``model_keys``."""
    new = key.removeprefix("module.").replace(".mobile_inverted_conv.", ".conv.")
    if new in model_keys:
        return new
    for old, rep in (
        (".bn.bn.", ".bn."),
        (".conv.conv.weight", ".conv.weight"),
        (".linear.linear.", ".linear."),
        (".linear.", ".linear.linear."),
        ("bn.", "bn.bn."),
        ("conv.weight", "conv.conv.weight"),
    ):
        if old in new:
            cand = new.replace(old, rep)
            if cand in model_keys:
                return cand
    return None


def _load_weights(net: nn.Module, state: Mapping[str, Any], *, where: str) -> None:
    """Load ``state`` into ``net``; every floating tensor of ``net`` must be provided with the right shape."""
    own = net.state_dict()
    own_keys = set(own)
    merged: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelSourceError(f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor")
        target = _ofa_key(key, own_keys)
        if target is None:
            unknown.append(key)
            continue
        if tuple(value.shape) != tuple(own[target].shape):
            raise ModelSourceError(
                f"{where}: {key!r} has shape {tuple(value.shape)} but the super-network expects "
                f"{tuple(own[target].shape)} for {target!r}; this checkpoint is for another architecture"
            )
        merged[target] = value.to(own[target].dtype)
    missing = sorted(k for k in own_keys if own[k].is_floating_point() and k not in merged)
    if unknown or missing:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unknown:
            detail.append(f"{len(unknown)} unexpected (e.g. {unknown[0]!r})")
        raise ModelSourceError(
            f"{where}: the weights do not match {SUPERNET_NAME}: {', '.join(detail)}; "
            "pass a checkpoint of this OFA MobileNetV3 super-network"
        )
    for key, value in own.items():
        merged.setdefault(key, value)
    with torch.no_grad():
        # nn.Module's loader, not OFA's override (which silently keeps missing weights)
        nn.Module.load_state_dict(net, merged, strict=True)


def from_manifest_dir(folder: Path, *, source: str, device: str | torch.device) -> Supernet:
    """The super-network of an embedded-layout folder: shards verified, weights checked by checksum."""
    manifest, state = _embedded.read_state(folder)
    net = build_ofa_mbv3(
        n_classes=manifest["n_classes"],
        width_mult=float(manifest["width_mult"]),
        ks_list=tuple(manifest["ks_list"]),
        expand_ratio_list=tuple(manifest["expand_ratio_list"]),
        depth_list=tuple(manifest["depth_list"]),
    )
    _load_weights(net, state, where=str(folder / _embedded.MANIFEST_NAME))
    sha = state_dict_sha256(net)
    if sha != manifest["state_dict_sha256"]:
        raise ModelSourceError(
            f"{folder}: the loaded weights hash to {sha[:12]}..., the manifest says "
            f"{manifest['state_dict_sha256'][:12]}...; the shards and manifest are from different exports: "
            "restore the folder from the repository or re-export it"
        )
    return Supernet(
        net=_move_to(net, device),
        name=str(manifest["name"]),
        source=source,
        sha256=sha,
        resolutions=tuple(sorted(int(r) for r in manifest["resolutions"])),
        meaningful_accuracy=True,
        n_classes=int(manifest["n_classes"]),
        width_mult=float(manifest["width_mult"]),
        metadata={k: v for k, v in manifest.items() if k not in ("shards",)},
    )


def _download(url: str, target: Path) -> None:
    from tqdm import tqdm  # type: ignore[import-untyped]

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=f"download {target.name}", leave=False
            ) as bar:
                while True:
                    block = resp.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    bar.update(len(block))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def from_ofa_zoo(net_id: str, *, device: str | torch.device, download: bool) -> Supernet:
    """OFA's ImageNet super-network ``net_id``, weights from the cache (downloaded there when allowed)."""
    net = ofa_zoo_net(net_id)
    path = ofa_zoo_weights_file(net_id)
    if not path.is_file():
        url = OFA_ZOO_URL_BASE + net_id
        if not download:
            raise ModelSourceError(f"OFA weights not cached at {path} and downloading is disabled")
        try:
            _download(url, path)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise ModelSourceError(
                f"cannot download the OFA ImageNet weights from {url} ({exc}). Without internet: download "
                f"that file elsewhere and copy it to {path} (or set DOFA_CACHE to the folder holding "
                f"ofa_nets/{net_id}), or use --model embedded or a checkpoint path"
            ) from exc
    stamp = _stamp(path)
    state = _read_torch_file(path)
    _load_weights(net, state, where=str(path))
    return _remembered(
        path,
        stamp,
        Supernet(
            net=_move_to(net, device),
            name=net_id,
            source="ofa_zoo",
            sha256=state_dict_sha256(net),
            resolutions=OFA_RESOLUTIONS,
            meaningful_accuracy=True,
            metadata={"url": OFA_ZOO_URL_BASE + net_id, "file": str(path), "dataset": "ImageNet-1k"},
        ),
    )


def _read_torch_file(path: Path) -> Mapping[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        raise ModelSourceError(
            f"{path}: cannot read it with torch.load(weights_only=True) ({type(exc).__name__}: {exc}); "
            "the file is truncated, not a state dict, or needs code to unpickle (convert it to .safetensors)"
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelSourceError(
            f"{path}: expected a state dict or {{'state_dict': ...}}, got {type(obj).__name__}"
        )
    return obj


def from_checkpoint(path: Path, *, device: str | torch.device) -> Supernet:
    """The super-network of a checkpoint (``.safetensors``, ``.pth``/``.pt``) or an embedded folder."""
    meta: dict[str, Any] = {}
    if path.is_dir():
        return from_manifest_dir(path, source=str(path), device=device)
    stamp = _stamp(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            state: Mapping[str, Any] = {}
            with safe_open(str(path), framework="pt") as fh:
                raw_meta = fh.metadata() or {}
                state = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelSourceError(f"{path}: not a readable safetensors file ({exc})") from exc
        if "dynamic_ofa_ros" in raw_meta:
            try:
                meta = json.loads(raw_meta["dynamic_ofa_ros"])
            except json.JSONDecodeError:
                meta = {}
    elif path.suffix in (".pth", ".pt", ".tar", ".ckpt") or path.suffix == "":
        state = _read_torch_file(path)
    else:
        raise ModelSourceError(
            f"{path}: unknown checkpoint type {path.suffix!r}; use .safetensors or .pth/.pt"
        )
    net = build_ofa_mbv3(
        n_classes=int(meta.get("n_classes", _infer_classes(state))),
        width_mult=float(meta.get("width_mult", 1.2)),
    )
    _load_weights(net, state, where=str(path))
    resolutions = tuple(int(r) for r in meta.get("resolutions", OFA_RESOLUTIONS))
    loaded = Supernet(
        net=_move_to(net, device),
        name=str(meta.get("name", SUPERNET_NAME)),
        source=str(path),
        sha256=state_dict_sha256(net),
        resolutions=resolutions,
        meaningful_accuracy=bool(meta.get("meaningful_accuracy", True)),
        n_classes=int(meta.get("n_classes", _infer_classes(state))),
        width_mult=float(meta.get("width_mult", 1.2)),
        metadata=meta,
    )
    return _remembered(path, stamp, loaded)


def _infer_classes(state: Mapping[str, Any]) -> int:
    for key, value in state.items():
        suffixes = ("classifier.linear.weight", "classifier.linear.linear.weight")
        if key.endswith(suffixes) and isinstance(value, torch.Tensor) and value.dim() == 2:
            return int(value.shape[0])
    return 1000


def random_supernet(seed: int, *, device: str | torch.device) -> Supernet:
    """A randomly initialised super-network, deterministic per ``seed`` (accuracy meaningless)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_ofa_mbv3()
    return Supernet(
        net=_move_to(net, device),
        name=SUPERNET_NAME,
        source=f"random:{seed}",
        sha256=state_dict_sha256(net),
        resolutions=OFA_RESOLUTIONS,
        meaningful_accuracy=False,
        metadata={"note": "random weights: any accuracy measured with them is meaningless"},
    )


def export_embedded(
    net: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any],
    shard_mb: float = 15.0,
) -> dict[str, Any]:
    """:func:`dynamic_ofa_ros.supernet.export_embedded` (the public entry point, documented there)."""
    if not is_ofa_mbv3(net):
        raise ModelSourceError(
            f"export_embedded needs an OFAMobileNetV3 super-network, got {type(net).__name__}"
        )
    for key in ("resolutions", "dataset", "training"):
        if key not in metadata:
            raise ModelSourceError(f"export_embedded: metadata[{key!r}] is required")
    state: dict[str, torch.Tensor] = {}
    for key, tensor in net.state_dict().items():
        if not tensor.is_floating_point():
            continue
        values = tensor.detach().to("cpu", torch.float32)
        peak = float(values.abs().max()) if values.numel() else 0.0
        if not np.isfinite(peak) or peak > _embedded.FP16_MAX:
            raise ModelSourceError(
                f"export_embedded: {key} reaches {peak:g}, beyond float16's range; fix the training first"
            )
        state[key] = values.half().float()
    ks, e, d = supernet_space_lists(net)
    ofa_net: Any = net
    classifier = ofa_net.classifier.linear
    fields: dict[str, Any] = {
        "name": str(metadata.get("name", SUPERNET_NAME)),
        "state_dict_sha256": state_dict_sha256(state),
        "n_classes": int(classifier.out_features),
        "width_mult": float(ofa_net.width_mult),
        "ks_list": list(ks),
        "expand_ratio_list": list(e),
        "depth_list": list(d),
        "resolutions": sorted(int(r) for r in metadata["resolutions"]),
        "dataset": str(metadata["dataset"]),
        "training": dict(metadata["training"]),
    }
    for key, value in metadata.items():
        fields.setdefault(key, value)
    return _embedded.write_embedded(state, out_dir, manifest_fields=fields, shard_mb=shard_mb)
