"""Training data: the zips' images, the hold-out/calibration split, decoding, augmentation on the device.

Images live in ImageFolder zips (``<split>/<wnid>/<file>``, Imagenette's ``train-128px-part*.zip``);
labels are the ImageNet-1k indices of the Imagenette classes
(:data:`offline_tools.datasets.IMAGENETTE_WNIDS`). Decoding is Pillow's
(:func:`offline_tools.datasets.decode_rgb_square`); evaluation preprocessing is the runtime's
(:func:`dynamic_ofa_ros.preprocess.to_input_batch`).
"""

from __future__ import annotations

import json
import math
import random
import zipfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dynamic_ofa_ros.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_input_batch
from dynamic_ofa_ros.timing import sha256_bytes, sha256_file
from offline_tools.datasets import IMAGENETTE_WNIDS, decode_rgb_square
from offline_tools.training.config import SPLIT_FORMAT, TrainConfig

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageEntry",
    "augment",
    "decode_images",
    "eval_preprocess",
    "list_zip_images",
    "load_split",
    "make_split",
    "split_manifest",
    "split_sha256",
]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class ImageEntry:
    """One image of the training zips: ImageFolder path inside its zip, class, ImageNet label."""

    name: str  # e.g. "train/n01440764/ILSVRC2012_val_00000293.JPEG"
    wnid: str
    label: int
    zip_index: int


def list_zip_images(zip_paths: Sequence[Path]) -> list[ImageEntry]:
    """Every image of the ImageFolder zips (``<split>/<wnid>/<file>``), sorted by name.

    Raises ``ValueError`` for an image outside an Imagenette class folder, a name found in two
    zips, or no images at all.
    """
    entries: dict[str, ImageEntry] = {}
    for zi, zpath in enumerate(zip_paths):
        with zipfile.ZipFile(zpath) as zf:
            for member in zf.namelist():
                if member.endswith("/") or not member.lower().endswith(IMAGE_SUFFIXES):
                    continue
                parts = member.split("/")
                if len(parts) < 2:
                    raise ValueError(f"{zpath}: {member!r} is not in a <wnid>/ folder")
                wnid = parts[-2]
                if wnid not in IMAGENETTE_WNIDS:
                    raise ValueError(f"{zpath}: {member!r}: folder {wnid!r} is not an Imagenette class")
                if member in entries:
                    raise ValueError(
                        f"{zpath}: {member!r} also appears in {zip_paths[entries[member].zip_index]}"
                    )
                entries[member] = ImageEntry(member, wnid, IMAGENETTE_WNIDS[wnid], zi)
    if not entries:
        raise ValueError(f"no images found in {[str(p) for p in zip_paths]}")
    return [entries[name] for name in sorted(entries)]


def _largest_remainder(total: int, sizes: Mapping[str, int]) -> dict[str, int]:
    n = sum(sizes.values())
    raw = {k: total * v / n for k, v in sizes.items()}
    quota = {k: math.floor(x) for k, x in raw.items()}
    left = total - sum(quota.values())
    for k in sorted(sizes, key=lambda c: (-(raw[c] - quota[c]), c))[:left]:
        quota[k] += 1
    return quota


def make_split(names: Sequence[str], *, seed: int, n_holdout: int, n_calib: int) -> dict[str, list[str]]:
    """Deterministic class-stratified split of ImageFolder paths (pure Python, any machine).

    Per class (sorted by wnid) the sorted names are shuffled with ``random.Random(seed)``;
    the first ``q_holdout`` go to ``holdout``, the next ``q_calib`` to ``calibration``, where the
    per-class quotas are the largest-remainder apportionment of the totals by class size. The
    calibration images stay in the training set; the hold-out images never do. ``holdout`` is
    returned sorted; ``calibration`` in a seeded interleaved order, so its first K names are a
    stratified K-image calibration set.
    """
    by_class: dict[str, list[str]] = {}
    for name in names:
        by_class.setdefault(name.split("/")[-2], []).append(name)
    total = sum(len(v) for v in by_class.values())
    if n_holdout + n_calib > total:
        raise ValueError(f"split: {n_holdout} hold-out + {n_calib} calibration > {total} images")
    sizes = {c: len(v) for c, v in by_class.items()}
    q_hold = _largest_remainder(n_holdout, sizes)
    q_cal = _largest_remainder(n_calib, sizes)
    rng = random.Random(seed)
    holdout: list[str] = []
    calib: list[str] = []
    for wnid in sorted(by_class):
        members = sorted(by_class[wnid])
        rng.shuffle(members)
        if q_hold[wnid] + q_cal[wnid] > len(members):
            raise ValueError(f"split: class {wnid} has only {len(members)} images")
        holdout += members[: q_hold[wnid]]
        calib += members[q_hold[wnid] : q_hold[wnid] + q_cal[wnid]]
    rng.shuffle(calib)
    return {"holdout": sorted(holdout), "calibration": calib}


def split_manifest(
    split: Mapping[str, list[str]], entries: Sequence[ImageEntry], zip_paths: Sequence[Path], seed: int
) -> dict[str, Any]:
    """The ``split.json`` document: seed, zips (with SHA-256), per-class counts and both name lists."""
    holdout, calib = split["holdout"], split["calibration"]
    per_class: dict[str, dict[str, int]] = {}
    for key, names in (("holdout", holdout), ("calibration", calib)):
        for name in names:
            per_class.setdefault(name.split("/")[-2], {"holdout": 0, "calibration": 0})[key] += 1
    return {
        "format": SPLIT_FORMAT,
        "version": 1,
        "seed": seed,
        "algorithm": "offline_tools.training.data.make_split (per-class seeded shuffle, largest remainder)",
        "sources": [
            {
                "file": p.name,
                "images": sum(1 for e in entries if e.zip_index == i),
                "sha256": sha256_file(p),
            }
            for i, p in enumerate(zip_paths)
        ],
        "n_images": len(entries),
        "n_train": len(entries) - len(holdout),
        "classes": {w: IMAGENETTE_WNIDS[w] for w in sorted({e.wnid for e in entries})},
        "per_class": dict(sorted(per_class.items())),
        "usage": "holdout: never trained on (accuracy for the search); calibration: BN statistics "
        "(also trained on); first K calibration names = the K-image calibration set",
        "holdout": list(holdout),
        "calibration": list(calib),
    }


def split_sha256(manifest: Mapping[str, Any]) -> str:
    """The data's identity for a resumable run: SHA-256 of the split manifest as sorted-key JSON.

    The manifest holds the zips' SHA-256 and every name, so equal digests mean equal data.
    """
    return sha256_bytes(json.dumps(manifest, sort_keys=True).encode("utf-8"))


def load_split(path: Path) -> dict[str, Any]:
    """Read and check a split manifest written by :func:`split_manifest`."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
        raise ValueError(f"{path}: not a {SPLIT_FORMAT} file")
    if set(data["holdout"]) & set(data["calibration"]):
        raise ValueError(f"{path}: hold-out and calibration overlap")
    return data


def decode_images(
    zip_paths: Sequence[Path], entries: Sequence[ImageEntry], *, size: int, threads: int
) -> tuple[Tensor, int]:
    """Decode every entry into a ``uint8`` tensor ``N x 3 x size x size`` (CPU); also the resize count."""
    blobs: list[bytes] = []
    zfs = [zipfile.ZipFile(p) for p in zip_paths]
    try:
        blobs.extend(zfs[e.zip_index].read(e.name) for e in entries)
    finally:
        for zf in zfs:
            zf.close()
    out = np.empty((len(entries), size, size, 3), dtype=np.uint8)
    n_resized = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        decoded = pool.map(lambda b: decode_rgb_square(b, size), blobs, chunksize=64)
        for i, (arr, resized) in enumerate(decoded):
            out[i] = arr
            n_resized += int(resized)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), n_resized


def eval_preprocess(images_u8: Tensor, resolution: int) -> Tensor:
    """The runtime's preprocessing of an ``N x 3 x H x W`` uint8 batch on its device.

    ``dynamic_ofa_ros.preprocess.to_input_batch``: bilinear antialiased resize to ``r x r``,
    ImageNet mean/std.
    """
    return to_input_batch(images_u8.permute(0, 2, 3, 1), resolution=resolution, device=images_u8.device)


def _color_jitter(x: Tensor, bright: Tensor, contrast: Tensor, sat: Tensor) -> Tensor:
    """Brightness, contrast, saturation factors (per image) on ``[0, 1]`` RGB."""
    x = x * bright
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)
    x = (x - gray.mean(dim=(2, 3), keepdim=True)) * contrast + gray.mean(dim=(2, 3), keepdim=True)
    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return ((x - gray) * sat + gray).clamp(0, 1)


def augment(images_u8: Tensor, resolution: int, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
    """Random resized crop + flip + colour jitter, batched on the images' device; normalised output.

    The crop is an affine ``grid_sample`` at the source resolution (or directly at ``resolution`` when
    that is larger), then an antialiased resize down, so small resolutions are not aliased.
    """
    b, _, h, _ = images_u8.shape
    dev = images_u8.device

    def uniform(lo: float, hi: float) -> Tensor:
        return torch.rand(b, device=dev, generator=gen) * (hi - lo) + lo

    area = uniform(cfg.aug_scale_min, 1.0)
    log_ratio = uniform(math.log(cfg.aug_ratio_min), math.log(cfg.aug_ratio_max))
    ratio = torch.exp(log_ratio)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, device=dev, generator=gen) * 2 - 1) * (1 - sw)
    cy = (torch.rand(b, device=dev, generator=gen) * 2 - 1) * (1 - sh)
    flip_draw = torch.rand(b, device=dev, generator=gen)
    if cfg.aug_flip:
        sw = torch.where(flip_draw < 0.5, -sw, sw)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = sw
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = cy
    out_size = max(resolution, h)
    grid = F.affine_grid(theta, [b, 3, out_size, out_size], align_corners=False)
    x = F.grid_sample(
        images_u8.float().div_(255.0), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    if out_size != resolution:
        x = F.interpolate(
            x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
        )
    j = cfg.aug_color_jitter
    # always draw, so the random stream does not depend on the options
    bright = uniform(1 - j, 1 + j).view(b, 1, 1, 1)
    contrast = uniform(1 - j, 1 + j).view(b, 1, 1, 1)
    sat = uniform(1 - j, 1 + j).view(b, 1, 1, 1)
    if j > 0:
        x = _color_jitter(x, bright, contrast, sat)
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    return (x - mean) / std
