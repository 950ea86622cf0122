"""Train the embedded OFA MobileNetV3 super-network on Imagenette (one GPU run, ~11 minutes).

The network is the ImageNet super-network's architecture (``ofa_mbv3_d234_e346_k357_w1.2``:
width 1.2, kernel {3,5,7}, expand {3,4,6}, depth {2,3,4}, 1000-class head); the 10 Imagenette
classes are trained as their ImageNet-1k indices, so predictions are ImageNet labels.

Pipeline (every stage writes into ``--out``; a failing stage never loses the earlier ones):

1. **data** -- both training zips are decoded once (threads) into one ``uint8`` tensor
   ``N x 3 x 128 x 128`` on the device; a seeded, class-stratified split holds out
   ``holdout_images`` (never trained on; the search measures accuracy on them) and designates
   ``calib_images`` other training images for BN calibration (``split.json``).
2. **train** -- sandwich rule with in-place distillation: per step the largest sub-network learns
   from the labels (label smoothing), the smallest and ``n_random_subnets`` random ones from the
   largest's soft outputs; kernel, expand, depth and resolution are all elastic. One resolution
   per step (cycled through ``resolutions``), augmentation on the device, NCHW, bf16 autocast on
   CUDA. The LR schedule (warm-up + cosine) runs over the planned epochs but is *time-aware*:
   progress is ``max(step fraction, time fraction)``, so when the wall clock would overrun the
   budget the cosine still reaches its end and the run stops early (recorded) instead of dying.
3. **final** -- weights are rounded to fp16 (the shipped precision), BN is recalibrated per
   sub-network, hold-out top-1 of a few reference sub-networks is recorded.
4. **export** -- fp16 safetensors shards (<= ``shard_mb``) + ``manifest.json``.
5. **measure** -- BN recalibration + hold-out top-1 of a structured sweep and N seeded random
   sub-networks, within the remaining time -> ``subnet_accuracy.json`` (the measured accuracy
   data set the offline search fits its predictor on).

A run longer than one call (``--checkpoint-dir``, ``--resume``): the cosine is then step-based over
the planned epochs in every call (one schedule across calls), the time budget only ends a call, and
each call writes an atomic safetensors + JSON checkpoint when training stops; see
"Training longer than one call" in ``docs/training.md``.

Run ``python offline_tools/train_supernet.py --help``; the recipe is in ``docs/training.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_T_START = time.monotonic()  # run as a script, the time budget counts from here (before importing torch)
_AS_SCRIPT = __name__ == "__main__"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SUPERNET_NAME, SearchSpace, SubnetConfig  # noqa: E402
from dynamic_ofa_ros.bn import calibrate_bn  # noqa: E402
from dynamic_ofa_ros.preprocess import to_input_batch  # noqa: E402
from dynamic_ofa_ros.supernet import export_embedded  # noqa: E402

# Imagenette wnid -> ImageNet-1k class index (see ../shared/README.md).
IMAGENETTE_TO_IMAGENET: dict[str, int] = {
    "n01440764": 0,
    "n02102040": 217,
    "n02979186": 482,
    "n03000684": 491,
    "n03028079": 497,
    "n03394916": 566,
    "n03417042": 569,
    "n03425413": 571,
    "n03445777": 574,
    "n03888257": 701,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLIT_FORMAT = "dynamic_ofa_ros.imagenette_split"
ACCURACY_FORMAT = "dynamic_ofa_ros.subnet_accuracy"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SPLIT_FILE = "split.json"
ACCURACY_FILE = "subnet_accuracy.json"
METRICS_FILE = "train_metrics.json"
LOG_FILE = "train_log.jsonl"


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainConfig:
    """Every knob of a run; ``config/train_supernet.json`` holds the defaults used for the release."""

    seed: int = 0
    # data / split
    image_size: int = 128  # decoded images are resized to this if they differ (Imagenette 128 px zips: no-op)
    holdout_images: int = 1000
    calib_images: int = 2000
    split_seed: int = 0
    decode_threads: int = 16
    # model
    dropout_rate: float = 0.1
    bn_momentum: float = 0.1
    zero_init_residual_bn: bool = True
    # schedule
    epochs: int = 50
    batch_size: int = 256
    max_steps_per_epoch: int = 0  # 0 = full epochs (tests use a small number)
    resolutions: list[int] = field(default_factory=lambda: [96, 112, 128, 144, 160])
    n_random_subnets: int = 2
    optimizer: str = "sgd"  # "sgd" (nesterov) | "adamw"
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 2.0
    min_lr_ratio: float = 0.0
    time_aware_schedule: bool = True
    label_smoothing: float = 0.1
    kd_ratio: float = 1.0  # students: kd_ratio * KD(teacher soft) + (1 - kd_ratio) * CE(labels)
    grad_clip_norm: float = 5.0  # 0 disables
    # augmentation (on the device)
    aug_scale_min: float = 0.25
    aug_ratio_min: float = 3.0 / 4.0
    aug_ratio_max: float = 4.0 / 3.0
    aug_flip: bool = True
    aug_color_jitter: float = 0.2  # brightness / contrast / saturation factor range 1 +- x
    # numerics
    bf16_autocast: bool = True  # CUDA only; CPU runs fp32
    channels_last: bool = False  # measured: cuDNN's first call per new shape is ~10x slower
    cudnn_benchmark: bool = False  # autotuning every one of hundreds of shapes costs more than it saves
    pointwise_matmul: bool = True  # 1x1 convs of the dynamic ops as cuBLAS matmuls (no cuDNN plan per shape)
    # time budget (seconds are taken from the whole process, import included)
    time_budget_min: float = 11.0
    post_reserve_s: float = 150.0  # kept for final eval + export + measurement
    end_margin_s: float = 10.0  # the measurement stops this long before the budget ends
    # evaluation
    eval_every_epochs: int = 10  # quick largest/smallest check during training; 0 = never
    final_calib_images: int = 2000  # rounded down to whole batches
    measure_calib_images: int = 1024  # rounded down to whole batches
    measure_subnets: int = 300
    measure_sweep: str = "full"  # "full" (uniform ks/e/d x resolution) | "extremes" | "none"
    measure_flush_every: int = 25
    # export
    shard_mb: int = 15

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"comment", "_comment"})
        if unknown:
            raise ValueError(f"{where}: unknown config keys {unknown}; known: {sorted(names)}")
        cfg = cls(**{k: v for k, v in data.items() if k in names})
        cfg.validate(where=where)
        return cfg

    def validate(self, *, where: str = "config") -> None:
        if not self.resolutions or any(int(r) < 32 or int(r) % 4 for r in self.resolutions):
            raise ValueError(f"{where}: resolutions {self.resolutions} must be multiples of 4, >= 32")
        self.resolutions = sorted({int(r) for r in self.resolutions})
        if self.batch_size < 2:
            raise ValueError(f"{where}: batch_size must be >= 2 (BN in train mode)")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"{where}: optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")
        if self.measure_sweep not in ("full", "extremes", "none"):
            raise ValueError(f"{where}: measure_sweep must be 'full', 'extremes' or 'none'")
        if self.epochs < 1 or self.holdout_images < 1 or self.calib_images < 1:
            raise ValueError(f"{where}: epochs, holdout_images and calib_images must be >= 1")
        if not 0.0 <= self.kd_ratio <= 1.0:
            raise ValueError(f"{where}: kd_ratio must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: Path | None, overrides: Sequence[str]) -> TrainConfig:
    """Defaults, then the JSON file, then ``key=value`` overrides (values parsed as JSON)."""
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a JSON object")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        try:
            data[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            data[key.strip()] = value
    return TrainConfig.from_mapping(data, where=str(path or "defaults"))


# --------------------------------------------------------------------------------------------
# small utilities


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def elapsed_s() -> float:
    return time.monotonic() - _T_START


class RunLog:
    """JSON-lines event log (flushed per line, so a crash keeps everything before it)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")

    def event(self, kind: str, **data: Any) -> None:
        record = {"event": kind, "t": round(elapsed_s(), 3), **data}
        self._fh.write(json.dumps(record, sort_keys=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def say(msg: str) -> None:
    print(f"[{elapsed_s():6.1f}s] {msg}", flush=True)


def _cudnn_version() -> int | None:
    try:
        return int(torch.backends.cudnn.version())  # type: ignore[no-untyped-call]
    except Exception:
        return None


def environment_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": _cudnn_version(),
        "numpy": np.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is present wherever ofa is
        info["torchvision"] = None
    try:
        from importlib.metadata import version

        info["ofa"] = version("ofa")
    except Exception:
        info["ofa"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_capability"] = list(torch.cuda.get_device_capability(device))
    return info


def git_info(repo: Path) -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


# --------------------------------------------------------------------------------------------
# data: listing, split, decode


@dataclass(frozen=True)
class ImageEntry:
    """One image of the training zips: ImageFolder path inside its zip, class, ImageNet label."""

    name: str  # e.g. "train/n01440764/ILSVRC2012_val_00000293.JPEG"
    wnid: str
    label: int
    zip_index: int


def list_zip_images(zip_paths: Sequence[Path]) -> list[ImageEntry]:
    """Every image of the ImageFolder zips (``<split>/<wnid>/<file>``), sorted by name."""
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
                if wnid not in IMAGENETTE_TO_IMAGENET:
                    raise ValueError(f"{zpath}: {member!r}: folder {wnid!r} is not an Imagenette class")
                if member in entries:
                    raise ValueError(
                        f"{zpath}: {member!r} also appears in {zip_paths[entries[member].zip_index]}"
                    )
                entries[member] = ImageEntry(member, wnid, IMAGENETTE_TO_IMAGENET[wnid], zi)
    if not entries:
        raise ValueError(f"no images found in {[str(p) for p in zip_paths]}")
    return [entries[name] for name in sorted(entries)]


def _largest_remainder(total: int, sizes: Mapping[str, int]) -> dict[str, int]:
    n = sum(sizes.values())
    raw = {k: total * v / n for k, v in sizes.items()}
    quota = {k: int(math.floor(x)) for k, x in raw.items()}
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
    holdout, calib = split["holdout"], split["calibration"]
    per_class: dict[str, dict[str, int]] = {}
    for key, names in (("holdout", holdout), ("calibration", calib)):
        for name in names:
            per_class.setdefault(name.split("/")[-2], {"holdout": 0, "calibration": 0})[key] += 1
    return {
        "format": SPLIT_FORMAT,
        "version": 1,
        "seed": seed,
        "algorithm": "offline_tools.train_supernet.make_split (per-class seeded shuffle, largest remainder)",
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
        "classes": {w: IMAGENETTE_TO_IMAGENET[w] for w in sorted({e.wnid for e in entries})},
        "per_class": dict(sorted(per_class.items())),
        "usage": "holdout: never trained on (accuracy for the search); calibration: BN statistics "
        "(also trained on); first K calibration names = the K-image calibration set",
        "holdout": list(holdout),
        "calibration": list(calib),
    }


def load_split(path: Path) -> dict[str, Any]:
    """Read and check a split manifest written by this script."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
        raise ValueError(f"{path}: not a {SPLIT_FORMAT} file")
    if set(data["holdout"]) & set(data["calibration"]):
        raise ValueError(f"{path}: hold-out and calibration overlap")
    return data


def _decode_one(data: bytes, size: int) -> tuple[np.ndarray, bool]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
        resized = rgb.size != (size, size)
        if resized:
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8), resized


def decode_images(
    zip_paths: Sequence[Path], entries: Sequence[ImageEntry], *, size: int, threads: int
) -> tuple[Tensor, int]:
    """Decode every entry into a ``uint8`` tensor ``N x 3 x size x size`` (CPU); also the resize count."""
    blobs: list[bytes] = []
    zfs = [zipfile.ZipFile(p) for p in zip_paths]
    try:
        for e in entries:
            blobs.append(zfs[e.zip_index].read(e.name))
    finally:
        for zf in zfs:
            zf.close()
    out = np.empty((len(entries), size, size, 3), dtype=np.uint8)
    n_resized = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for i, (arr, resized) in enumerate(pool.map(lambda b: _decode_one(b, size), blobs, chunksize=64)):
            out[i] = arr
            n_resized += int(resized)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), n_resized


# --------------------------------------------------------------------------------------------
# preprocessing and augmentation (on the device)


def _mean_std(device: torch.device) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return mean, std


def eval_preprocess(images_u8: Tensor, resolution: int) -> Tensor:
    """The runtime's preprocessing (``dynamic_ofa_ros.preprocess.to_input_batch``) of an ``N x 3 x H x W``
    uint8 batch on its device: bilinear antialiased resize to ``r x r``, ImageNet mean/std."""
    return to_input_batch(images_u8.permute(0, 2, 3, 1), resolution=resolution, device=images_u8.device)


def augment(images_u8: Tensor, resolution: int, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
    """Random resized crop + flip + colour jitter, batched on the images' device; normalised output.

    The crop is an affine ``grid_sample`` at the source resolution (or directly at ``resolution`` when
    that is larger), then an antialiased resize down, so small resolutions are not aliased.
    """
    b, _, h, w = images_u8.shape
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
        x = x * bright
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)
        x = (x - gray.mean(dim=(2, 3), keepdim=True)) * contrast + gray.mean(dim=(2, 3), keepdim=True)
        gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        x = ((x - gray) * sat + gray).clamp(0, 1)
    mean, std = _mean_std(dev)
    return (x - mean) / std


# --------------------------------------------------------------------------------------------
# model


def build_supernet(cfg: TrainConfig) -> tuple[nn.Module, str]:
    """The OFA MobileNetV3 super-network (random weights) through ``ofa_compat.build_ofa_mbv3``."""
    try:
        from dynamic_ofa_ros.ofa_compat import build_ofa_mbv3
    except ImportError:  # pragma: no cover - only if the core package is broken at run time
        from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

        net: nn.Module = OFAMobileNetV3(
            n_classes=1000,
            width_mult=1.2,
            ks_list=[3, 5, 7],
            expand_ratio_list=[3, 4, 6],
            depth_list=[2, 3, 4],
            dropout_rate=cfg.dropout_rate,
        )
        source = "ofa.OFAMobileNetV3 (dynamic_ofa_ros.ofa_compat not importable)"
    else:
        net = build_ofa_mbv3(
            n_classes=1000,
            width_mult=1.2,
            ks_list=(3, 5, 7),
            expand_ratio_list=(3, 4, 6),
            depth_list=(2, 3, 4),
            dropout_rate=cfg.dropout_rate,
        )
        source = "dynamic_ofa_ros.ofa_compat.build_ofa_mbv3"
    ofa_net: Any = net
    if ofa_net.classifier.linear.out_features != 1000 or ofa_net.width_mult != 1.2:
        raise RuntimeError(f"{source}: expected the 1000-class width-1.2 OFAMobileNetV3")
    return net, source


def init_weights(net: nn.Module, *, zero_init_residual_bn: bool, bn_momentum: float) -> None:
    """OFA's ``he_fout`` initialisation (as ``ofa.utils.init_models``), optionally BigNAS' zero-init.

    With ``zero_init_residual_bn`` the last BN of every block with an identity shortcut starts at
    gamma = 0, so each residual branch starts as the identity (stabilises elastic depth from scratch).
    """
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1.0)
            m.bias.data.zero_()
            m.momentum = bn_momentum
        elif isinstance(m, nn.Linear):
            stdv = 1.0 / math.sqrt(m.weight.size(1))
            m.weight.data.uniform_(-stdv, stdv)
            if m.bias is not None:
                m.bias.data.zero_()
    if zero_init_residual_bn:
        for block in getattr(net, "blocks", []):
            if getattr(block, "shortcut", None) is None:
                continue
            point_linear = getattr(block.conv, "point_linear", None)
            bn_mod = getattr(point_linear, "bn", None) if point_linear is not None else None
            bn = getattr(bn_mod, "bn", bn_mod)
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.data.zero_()


def _is_pointwise(weight: Tensor, stride: Any, padding: Any, dilation: Any, groups: int) -> bool:
    def all_eq(v: Any, target: int) -> bool:
        return all(int(x) == target for x in (v if isinstance(v, (tuple, list)) else (v,)))

    return (
        weight.dim() == 4
        and weight.shape[-1] == 1
        and weight.shape[-2] == 1
        and groups == 1
        and not isinstance(padding, str)
        and all_eq(stride, 1)
        and all_eq(padding, 0)
        and all_eq(dilation, 1)
    )


class PointwiseMatmulFunctional:
    """``torch.nn.functional`` for OFA's dynamic ops, with 1x1 convolutions computed as matmuls.

    Why: the elastic network meets hundreds of distinct 1x1 convolution shapes (10 block kinds x 3
    expand ratios x expand/project x 5 resolutions, plus the SE layers), and cuDNN's first call for
    each new shape costs ~1 s (plan building, measured on the H100). A 1x1 convolution in NCHW is
    ``W[O,C] @ x[b,C,H*W]`` for each b -- a cuBLAS strided-batched GEMM whose first call costs
    milliseconds. Same mathematics, same weights; depth-wise convolutions (native CUDA kernels in
    NCHW, not cuDNN) and everything else go to ``torch.nn.functional`` unchanged.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(F, name)

    @staticmethod
    def conv2d(
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None = None,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
    ) -> Tensor:
        if input.dim() != 4 or not _is_pointwise(weight, stride, padding, dilation, groups):
            return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
        b, c, h, w = input.shape
        o = weight.shape[0]
        w2 = weight.reshape(o, c)
        if h == 1 and w == 1:
            return F.linear(input.reshape(b, c), w2, bias).reshape(b, o, 1, 1)
        dev_type = input.device.type
        if torch.is_autocast_enabled(dev_type):
            # cast before expanding: autocast would materialise the expanded (b, o, c) weight
            w2 = w2.to(torch.get_autocast_dtype(dev_type))
        # explicit bmm with a stride-0 batch of W: no activation copies (torch.matmul would fold
        # W @ x into a transposed mm and copy the activations twice when x requires grad)
        y = torch.bmm(w2.unsqueeze(0).expand(b, o, c), input.reshape(b, c, h * w)).view(b, o, h, w)
        if bias is not None:
            y = y + bias.to(y.dtype).view(1, o, 1, 1)
        return y


@contextlib.contextmanager
def pointwise_as_matmul(enabled: bool) -> Iterator[bool]:
    """Route the 1x1 convolutions of ofa's dynamic ops through :class:`PointwiseMatmulFunctional`."""
    if not enabled:
        yield False
        return
    from ofa.imagenet_classification.elastic_nn.modules import dynamic_op

    previous = dynamic_op.F
    dynamic_op.F = PointwiseMatmulFunctional()
    try:
        yield True
    finally:
        dynamic_op.F = previous


def set_subnet(net: nn.Module, cfg: SubnetConfig) -> None:
    net.set_active_subnet(**cfg.ofa_kwargs())  # type: ignore[operator]


def param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv / linear weights only (not BN, biases, OFA's kernel-transform matrices)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith("_matrix") or ".bn." in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def bn_modules(net: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


def round_to_fp16_(net: nn.Module) -> None:
    """Round every floating parameter/buffer to fp16 and back: train-time numbers = shipped weights."""
    with torch.no_grad():
        for t in list(net.parameters()) + list(net.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(torch.float16).to(t.dtype))


# --------------------------------------------------------------------------------------------
# training


class Schedule:
    """Linear warm-up then cosine; progress = max(step fraction, wall-clock fraction) when time-aware."""

    def __init__(
        self,
        cfg: TrainConfig,
        total_steps: int,
        warmup_steps: int,
        train_budget_s: float,
        *,
        time_aware: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.total = max(1, total_steps)
        self.warmup = min(max(0, warmup_steps), self.total - 1)
        self.budget = train_budget_s
        # a resumable run passes False: its cosine must span the planned steps of all calls, not
        # the wall clock of one call (see docs/training.md, "Training longer than one call")
        self.time_aware = cfg.time_aware_schedule if time_aware is None else time_aware

    def progress(self, step: int, train_elapsed: float) -> float:
        by_step = (step - self.warmup) / max(1, self.total - self.warmup) if step >= self.warmup else 0.0
        if not self.time_aware:
            return by_step
        by_time = train_elapsed / self.budget if self.budget > 0 else 1.0
        return max(by_step, by_time)

    def lr(self, step: int, train_elapsed: float) -> float:
        peak = self.cfg.lr
        if step < self.warmup:
            return peak * (step + 1) / self.warmup
        p = min(1.0, self.progress(step, train_elapsed))
        low = peak * self.cfg.min_lr_ratio
        return low + (peak - low) * 0.5 * (1.0 + math.cos(math.pi * p))


def kd_loss(student_logits: Tensor, teacher_prob: Tensor) -> Tensor:
    """Cross-entropy against the teacher's soft distribution (= KL up to the teacher's entropy)."""
    return -(teacher_prob * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


@dataclass
class Context:
    """Everything the stages share."""

    cfg: TrainConfig
    device: torch.device
    net: nn.Module
    space: SearchSpace
    images: Tensor  # uint8 N x 3 x S x S on the device
    labels: Tensor  # int64 N on the device
    train_idx: Tensor  # int64 on the device
    calib_idx: Tensor  # int64 on the device, in split order
    holdout_idx: Tensor  # int64 on the device
    log: RunLog
    budget_s: float

    def autocast(self) -> AbstractContextManager[Any]:
        if self.device.type == "cuda" and self.cfg.bf16_autocast:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def remaining_s(self) -> float:
        return self.budget_s - elapsed_s()


# --------------------------------------------------------------------------------------------
# checkpoints (a resumable run: --checkpoint-dir / --resume)

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


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: missing, corrupted, or from another config or data."""


@dataclass
class Checkpoint:
    """A verified checkpoint folder (every file matched its SHA-256) and its JSON."""

    folder: Path
    meta: dict[str, Any]

    def tensors(self, group: str) -> dict[str, Tensor]:
        """All tensors of one group (``model``, ``optimizer``, ``rng``) from its shards, on the CPU."""
        from safetensors.torch import load_file

        out: dict[str, Tensor] = {}
        for name in self.meta["tensor_files"][group]:
            out.update(load_file(str(self.folder / name)))
        return out


@dataclass
class Resumable:
    """What a resumable run (``--checkpoint-dir`` and/or ``--resume``) adds to :func:`train`."""

    checkpoint_dir: Path | None
    checkpoint: Checkpoint | None
    stop_after_steps: int | None
    run_info: dict[str, Any]  # data identity, git, seeds, sources: copied into the checkpoint JSON


def _py_state_to_json(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_state_from_json(data: Sequence[Any]) -> tuple[Any, ...]:
    version, internal, gauss = data
    return (int(version), tuple(int(x) for x in internal), gauss)


def _numpy_state_to_json() -> dict[str, Any]:
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


def _numpy_state_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
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
        tensor_files = {
            group: _save_sharded(t, tmp, group, CHECKPOINT_SHARD_BYTES) for group, t in groups.items()
        }
        files: dict[str, dict[str, Any]] = {}
        for fname in sorted(f for names in tensor_files.values() for f in names):
            os.chmod(tmp / fname, 0o644)  # as the other outputs (safetensors may create 0600)
            _fsync_path(tmp / fname)
            files[fname] = {"sha256": sha256_file(tmp / fname), "bytes": (tmp / fname).stat().st_size}
        atomic_write_json(tmp / CHECKPOINT_JSON, {**meta, "tensor_files": tensor_files, "files": files})
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        _fsync_path(tmp)
        os.rename(tmp, final)
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
    atomic_write_json(root / CHECKPOINT_LATEST, pointer)
    _fsync_path(root)
    for old in root.glob("step-*"):  # keep the new one and the one before it (a fallback)
        if old.name not in (name, previous):
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*"):  # temporary folders of writes that crashed
        shutil.rmtree(stale, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> Checkpoint:
    """Find, read and verify the checkpoint of ``--resume path`` (no tensor is parsed yet).

    ``path`` is a ``--checkpoint-dir`` folder (its ``LATEST.json`` names the checkpoint) or one
    ``step-*`` folder. Every file's SHA-256 is checked against ``checkpoint.json`` (and that JSON's
    against ``LATEST.json``); any problem raises :class:`CheckpointError` naming the file.
    """
    pointer = path / CHECKPOINT_LATEST
    expected_sha: str | None = None
    if pointer.is_file():
        try:
            data = json.loads(pointer.read_text(encoding="utf-8"))
            folder = path / str(data["checkpoint"])
            expected_sha = str(data["checkpoint_json_sha256"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{pointer}: unreadable ({exc!r}); pass one step-* folder to --resume"
            ) from exc
    elif (path / CHECKPOINT_JSON).is_file():
        folder = path
    else:
        raise CheckpointError(
            f"{path}: no checkpoint (neither {CHECKPOINT_LATEST} nor {CHECKPOINT_JSON}); "
            "pass the folder that --checkpoint-dir wrote"
        )
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
        raise CheckpointError(f"{meta_path}: SHA-256 differs from the one in {pointer}; {advice}")
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


def train(ctx: Context, metrics: dict[str, Any], resumable: Resumable | None = None) -> None:
    """Sandwich-rule training with in-place distillation (stage 2 of the module docstring).

    ``resumable`` (``--checkpoint-dir`` / ``--resume``) changes three things: the cosine runs over
    the planned steps alone (one schedule across all calls; the clock only ends a call), a
    checkpoint's state is restored before the first step, and one is written when the call stops.
    Without it the run is the time-aware single call it always was.
    """
    cfg, net, dev = ctx.cfg, ctx.net, ctx.device
    bsz = cfg.batch_size
    n_train = int(ctx.train_idx.numel())
    steps_per_epoch = n_train // bsz
    if steps_per_epoch < 1:
        raise ValueError(f"training set ({n_train} images) is smaller than one batch ({bsz})")
    if cfg.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    t_train0 = elapsed_s()
    train_budget = max(1.0, ctx.budget_s - cfg.post_reserve_s - t_train0)
    sched = Schedule(
        cfg, total_steps, warmup_steps, train_budget, time_aware=False if resumable is not None else None
    )
    groups = param_groups(net, cfg.weight_decay)
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    params = [p for g in groups for p in g["params"]]
    space = ctx.space
    largest_arch, smallest_arch = space.largest(), space.smallest()
    py_rng = random.Random(cfg.seed + 17)
    cpu_gen = torch.Generator().manual_seed(cfg.seed + 29)
    dev_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 31)
    resolutions = cfg.resolutions
    info: dict[str, Any] = {
        "steps_per_epoch": steps_per_epoch,
        "planned_epochs": cfg.epochs,
        "planned_steps": total_steps,
        "warmup_steps": sched.warmup,
        "train_budget_s": round(train_budget, 1),
        "train_images": n_train,
    }
    metrics["training"] = {**info, "epochs": [], "stopped_early": False, "stop_reason": None}
    step = 0
    start_epoch, start_pos = 0, 0  # the first step's epoch and index within it
    carry: dict[str, Any] = {"loss_sum": [0.0, 0.0], "steps": 0, "seconds": 0.0}  # a paused epoch
    if resumable is not None:
        info["schedule"] = "step-based warm-up + cosine over planned_steps (resumable; the clock ends calls)"
        info["resumed_from"] = str(resumable.checkpoint.folder) if resumable.checkpoint else None
        if resumable.checkpoint is not None:
            restored = _restore_training(
                resumable.checkpoint,
                {
                    "total_steps": total_steps,
                    "steps_per_epoch": steps_per_epoch,
                    "warmup_steps": sched.warmup,
                },
                opt,
                py_rng,
                cpu_gen,
                dev_gen,
                dev,
            )
            step, start_epoch, start_pos, carry = restored
            metrics["training"]["epochs"] = list(resumable.checkpoint.meta["epoch_records"])
            info["resumed_at_step"] = step
        metrics["training"].update(info)
    ctx.log.event("train_start", **info)
    say(
        f"train: {n_train} images, {steps_per_epoch} steps/epoch x {cfg.epochs} epochs, "
        f"res {resolutions}, budget {train_budget:.0f}s"
        + (f", resumed at step {step}/{total_steps}" if resumable and resumable.checkpoint else "")
    )
    start_step = step
    net.train()
    stop_reason: str | None = None
    paused = False  # resumable: the call ended before the schedule did (a checkpoint continues it)
    epoch, pos = start_epoch, start_pos
    epoch_gen_state = cpu_gen.get_state()
    for epoch in range(start_epoch, cfg.epochs):
        # a checkpoint taken inside this epoch redraws the epoch's permutation from this state
        epoch_gen_state = cpu_gen.get_state()
        t_ep = time.monotonic()
        perm = ctx.train_idx[torch.randperm(n_train, generator=cpu_gen).to(dev)]
        loss_sum = torch.zeros(2, device=dev)
        n_steps = 0
        first, carried_s = 0, 0.0
        if epoch == start_epoch and start_pos > 0:  # resumed inside this epoch
            first, carried_s = start_pos, float(carry["seconds"])
            loss_sum = torch.tensor(carry["loss_sum"], dtype=torch.float32, device=dev)
            n_steps = int(carry["steps"])
        pos = first
        lr = 0.0
        for s in range(first, steps_per_epoch):
            train_elapsed = elapsed_s() - t_train0
            if resumable is not None:
                if resumable.stop_after_steps is not None and step - start_step >= resumable.stop_after_steps:
                    stop_reason, paused = f"--stop-after-steps {resumable.stop_after_steps} reached", True
                    break
                if train_elapsed >= train_budget:
                    stop_reason, paused = "time budget of this call reached (resumable run)", True
                    break
            else:
                if step >= sched.warmup and sched.progress(step, train_elapsed) >= 1.0:
                    stop_reason = "time budget: cosine schedule completed on the wall clock"
                    break
                if train_elapsed >= train_budget:
                    stop_reason = "time budget exhausted during warm-up"
                    break
            lr = sched.lr(step, train_elapsed)
            for g in opt.param_groups:
                g["lr"] = lr
            res = resolutions[step % len(resolutions)]
            idx = perm[s * bsz : (s + 1) * bsz]
            x = augment(ctx.images[idx], res, cfg, dev_gen)
            y = ctx.labels[idx]
            students = [smallest_arch] + [space.sample(py_rng) for _ in range(cfg.n_random_subnets)]
            opt.zero_grad(set_to_none=True)
            set_subnet(net, largest_arch)
            with ctx.autocast():
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            loss.backward()  # type: ignore[no-untyped-call]
            teacher = F.softmax(logits.detach().float(), dim=1)
            del logits
            loss_sum[0] += loss.detach()
            for arch in students:
                set_subnet(net, arch)
                with ctx.autocast():
                    out = net(x).float()
                s_loss = cfg.kd_ratio * kd_loss(out, teacher)
                if cfg.kd_ratio < 1.0:
                    s_loss = s_loss + (1.0 - cfg.kd_ratio) * F.cross_entropy(
                        out, y, label_smoothing=cfg.label_smoothing
                    )
                s_loss.backward()  # type: ignore[no-untyped-call]
                loss_sum[1] += s_loss.detach() / len(students)
                del out
            if cfg.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
            opt.step()
            step += 1
            n_steps += 1
            pos = s + 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        ep_time = time.monotonic() - t_ep + carried_s
        losses = (loss_sum / max(1, n_steps)).tolist()
        if resumable is not None and pos < steps_per_epoch:
            # paused inside the epoch: its sums go into the checkpoint, and the call that completes
            # the epoch records it (so each epoch is recorded once, whole)
            carry = {"loss_sum": loss_sum.tolist(), "steps": n_steps, "seconds": ep_time}
            if not all(math.isfinite(v) for v in losses):
                stop_reason, paused = "non-finite loss", False
            break
        record = {
            "epoch": epoch + 1,
            "steps": n_steps,
            "global_step": step,
            "lr": round(lr, 6),
            "loss_largest": round(losses[0], 5),
            "loss_students": round(losses[1], 5),
            "epoch_s": round(ep_time, 2),
            "s_per_step": round(ep_time / max(1, n_steps), 4),
            "elapsed_s": round(elapsed_s(), 1),
            "progress": round(min(1.0, sched.progress(step, elapsed_s() - t_train0)), 4),
        }
        if n_steps and cfg.eval_every_epochs > 0 and (epoch + 1) % cfg.eval_every_epochs == 0:
            record["check"] = quick_check(ctx)
            net.train()
        if n_steps:
            metrics["training"]["epochs"].append(record)
            ctx.log.event("epoch", **record)
            check = record.get("check")
            check_txt = " " + " ".join(f"{k}={v:.1f}" for k, v in check.items()) if check else ""
            say(
                f"ep {epoch + 1}/{cfg.epochs} lr {lr:.4f} L {losses[0]:.3f} KD {losses[1]:.3f} "
                f"{ep_time:.1f}s ({ep_time / max(1, n_steps):.3f}s/step) "
                f"p={record['progress']:.2f}{check_txt}"
            )
        if not all(math.isfinite(v) for v in losses):
            stop_reason = "non-finite loss"
        if stop_reason:
            break
    metrics["training"].update(
        {
            "steps_done": step,
            "epochs_done": round(step / steps_per_epoch, 2),
            "stopped_early": step < total_steps,
            "stop_reason": stop_reason,
            "train_s": round(elapsed_s() - t_train0, 1),
        }
    )
    if resumable is not None:
        metrics["training"]["paused"] = paused
    if step < total_steps:
        say(f"train: stopped early after {step}/{total_steps} steps ({stop_reason})")
    ctx.log.event("train_end", **{k: v for k, v in metrics["training"].items() if k != "epochs"})
    if resumable is None or resumable.checkpoint_dir is None:
        return
    if stop_reason == "non-finite loss":
        # the weights are no longer finite: keep the previous checkpoint as the one to resume
        metrics["warnings"].append("no checkpoint written: non-finite loss")
        say("train: no checkpoint written (non-finite loss)")
        return
    if not paused:  # the schedule is complete: the position is the end of the last epoch
        epoch, pos, epoch_gen_state = cfg.epochs, 0, cpu_gen.get_state()
        carry = {"loss_sum": [0.0, 0.0], "steps": 0, "seconds": 0.0}
    elif pos == 0:  # paused before the epoch's first step
        carry = {"loss_sum": [0.0, 0.0], "steps": 0, "seconds": 0.0}
    t_ck = elapsed_s()
    rng_tensors = {
        "torch_cpu": torch.get_rng_state(),
        "cpu_gen_epoch_start": epoch_gen_state,
        "dev_gen": dev_gen.get_state(),
    }
    if dev.type == "cuda":
        rng_tensors["torch_cuda"] = torch.cuda.get_rng_state(dev)
    opt_tensors, opt_meta = optimizer_state_to_files(opt)
    model_tensors = {
        k: (v.detach().to("cpu", dtype=torch.float32) if v.is_floating_point() else v.detach().cpu()).clone()
        for k, v in net.state_dict().items()
    }
    previous_calls = list(resumable.checkpoint.meta["calls"]) if resumable.checkpoint else []
    this_call = {
        "call": len(previous_calls) + 1,
        "start_step": start_step,
        "end_step": step,
        "train_s": metrics["training"]["train_s"],
        "stop_reason": stop_reason,
        "budget_s": ctx.budget_s,
        "device": str(dev),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    calls = [*previous_calls, this_call]
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "supernet": SUPERNET_NAME,
        "global_step": step,
        "epoch": epoch,  # 0-based index of the epoch the next step belongs to
        "step_in_epoch": pos,
        "epoch_partial": carry,
        "schedule": {
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "warmup_steps": sched.warmup,
            "planned_epochs": cfg.epochs,
            "complete": step >= total_steps,
            "rule": "warm-up + cosine over total_steps; step-based in every call of a resumable run",
        },
        "epoch_records": metrics["training"]["epochs"],
        "config": cfg.to_dict(),
        "device_type": dev.type,
        "rng": {
            "python_global": _py_state_to_json(random.getstate()),
            "numpy_global": _numpy_state_to_json(),
            "python_sampler": _py_state_to_json(py_rng.getstate()),
            "tensors": sorted(rng_tensors),  # in the "rng" safetensors shard
        },
        "optimizer": opt_meta,
        **resumable.run_info,
        "calls": calls,
        "timings": {"train_s_all_calls": round(sum(float(c["train_s"]) for c in calls), 1)},
    }
    folder = write_checkpoint(
        resumable.checkpoint_dir, {"model": model_tensors, "optimizer": opt_tensors, "rng": rng_tensors}, meta
    )
    metrics["training"]["checkpoint"] = {"folder": str(folder), "seconds": round(elapsed_s() - t_ck, 1)}
    ctx.log.event("checkpoint", folder=str(folder), global_step=step, complete=step >= total_steps)
    say(f"train: checkpoint at step {step}/{total_steps} -> {folder} ({elapsed_s() - t_ck:.1f}s)")


def _restore_training(
    checkpoint: Checkpoint,
    schedule: Mapping[str, int],
    opt: torch.optim.Optimizer,
    py_rng: random.Random,
    cpu_gen: torch.Generator,
    dev_gen: torch.Generator,
    dev: torch.device,
) -> tuple[int, int, int, dict[str, Any]]:
    """Load optimizer and RNG states; return (global step, epoch, index in the epoch, paused-epoch sums)."""
    meta = checkpoint.meta
    diffs = [
        f"{k}: checkpoint {meta['schedule'].get(k)}, now {v}"
        for k, v in schedule.items()
        if meta["schedule"].get(k) != v
    ]
    if diffs:
        raise CheckpointError(
            f"the schedule differs from the checkpoint's ({'; '.join(diffs)}): the training data or the "
            "config changed; resume with the same --data and config, or start a new run without --resume"
        )
    if meta["device_type"] != dev.type:
        raise CheckpointError(
            f"the checkpoint was written on {meta['device_type']}, this run is on {dev.type}: the random "
            "generators differ per device type; resume on the same kind of device (--device)"
        )
    try:
        opt.load_state_dict(optimizer_state_from_files(checkpoint.tensors("optimizer"), meta["optimizer"]))
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"the optimizer state does not fit this network/config ({exc})") from exc
    rng = checkpoint.tensors("rng")
    random.setstate(_py_state_from_json(meta["rng"]["python_global"]))
    np.random.set_state(_numpy_state_from_json(meta["rng"]["numpy_global"]))
    torch.set_rng_state(rng["torch_cpu"])
    if dev.type == "cuda":
        torch.cuda.set_rng_state(rng["torch_cuda"], dev)
    py_rng.setstate(_py_state_from_json(meta["rng"]["python_sampler"]))
    cpu_gen.set_state(rng["cpu_gen_epoch_start"])
    dev_gen.set_state(rng["dev_gen"])
    return (
        int(meta["global_step"]),
        int(meta["epoch"]),
        int(meta["step_in_epoch"]),
        dict(meta["epoch_partial"]),
    )


# --------------------------------------------------------------------------------------------
# BN calibration and hold-out accuracy on the super-network


def _batches(idx: Tensor, bsz: int, n: int) -> list[Tensor]:
    """``n`` rounded down to whole batches (at least one, possibly partial, batch)."""
    n = min(n, int(idx.numel()))
    whole = (n // bsz) * bsz
    if whole == 0:
        return [idx[:n]]
    return [idx[i : i + bsz] for i in range(0, whole, bsz)]


def _padded_batches(idx: Tensor, bsz: int) -> list[tuple[Tensor, int]]:
    """All of ``idx`` in batches of exactly ``bsz`` (the last one padded; valid count returned)."""
    n = int(idx.numel())
    out: list[tuple[Tensor, int]] = []
    for i in range(0, n, bsz):
        chunk = idx[i : i + bsz]
        valid = int(chunk.numel())
        if valid < bsz and n >= bsz:
            chunk = torch.cat([chunk, idx[: bsz - valid]])
        out.append((chunk, valid))
    return out


def calibrate_and_eval(ctx: Context, arch: SubnetConfig, n_calib: int) -> float:
    """Reset BN, cumulative-average statistics on ``n_calib`` calibration images, hold-out top-1 (%).

    Runs on the super-network with ``arch`` active (``dynamic_ofa_ros.bn.calibrate_bn``: reset,
    momentum=None, BN layers in train mode, no grad): OFA's ``DynamicBatchNorm2d`` updates the active
    slice of each BN's running statistics in place, so this equals calibrating the extracted
    sub-network (tested), without copying weights per sub-network. Batches have the training batch
    size, so cuDNN meets no new convolution shapes. The network is left in eval mode.
    """
    net, cfg = ctx.net, ctx.cfg
    set_subnet(net, arch)

    def calib_batches() -> Iterator[Tensor]:
        for chunk in _batches(ctx.calib_idx, cfg.batch_size, n_calib):
            yield eval_preprocess(ctx.images[chunk], arch.resolution)

    with ctx.autocast():
        calibrate_bn(net, calib_batches())
    net.eval()
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    with torch.no_grad():
        for chunk, valid in _padded_batches(ctx.holdout_idx, cfg.batch_size):
            with ctx.autocast():
                logits = net(eval_preprocess(ctx.images[chunk], arch.resolution))
            pred = logits[:valid].argmax(dim=1)
            correct += (pred == ctx.labels[chunk[:valid]]).sum()
    return 100.0 * int(correct.item()) / int(ctx.holdout_idx.numel())


def quick_check(ctx: Context) -> dict[str, float]:
    """Largest@max and smallest@min hold-out top-1 with recalibrated BN (a learning-curve probe)."""
    hi, lo = max(ctx.cfg.resolutions), min(ctx.cfg.resolutions)
    largest = dataclasses.replace(ctx.space.largest(), resolution=hi)
    smallest = dataclasses.replace(ctx.space.smallest(), resolution=lo)
    n = ctx.cfg.measure_calib_images
    return {f"L{hi}": calibrate_and_eval(ctx, largest, n), f"S{lo}": calibrate_and_eval(ctx, smallest, n)}


def reference_subnets(space: SearchSpace, seed: int) -> list[tuple[str, SubnetConfig]]:
    res = space.resolutions
    hi, lo = max(res), min(res)
    mid = 128 if 128 in res else res[len(res) // 2]
    largest, smallest = space.largest(), space.smallest()
    rng = random.Random(seed + 101)
    refs = [
        (f"largest@{hi}", dataclasses.replace(largest, resolution=hi)),
        (f"largest@{mid}", dataclasses.replace(largest, resolution=mid)),
        (f"smallest@{hi}", dataclasses.replace(smallest, resolution=hi)),
        (f"smallest@{lo}", dataclasses.replace(smallest, resolution=lo)),
    ]
    for i in range(3):
        arch = space.sample(rng)
        refs.append((f"random{i + 1}@{arch.resolution}", arch))
    return refs


def measurement_plan(space: SearchSpace, cfg: TrainConfig) -> list[tuple[str, SubnetConfig]]:
    """Structured sweep first (uniform ks/e/d per resolution, or only the extremes), then random."""
    plan: list[tuple[str, SubnetConfig]] = []
    seen: set[str] = set()

    def add(kind: str, arch: SubnetConfig) -> None:
        if arch.key() not in seen:
            seen.add(arch.key())
            plan.append((kind, arch))

    if cfg.measure_sweep != "none":
        for r in space.resolutions:
            add("sweep", dataclasses.replace(space.smallest(), resolution=r))
            add("sweep", dataclasses.replace(space.largest(), resolution=r))
    sweep: list[SubnetConfig] = []
    if cfg.measure_sweep == "full":
        for d in space.d_choices:
            for k in space.ks_choices:
                for e in space.e_choices:
                    for r in space.resolutions:
                        arch = SubnetConfig(r, (k,) * N_BLOCKS, (e,) * N_BLOCKS, (d,) * N_STAGES)
                        if arch.key() not in seen and arch.key() not in {a.key() for a in sweep}:
                            sweep.append(arch)
    rng = random.Random(cfg.seed + 1009)
    randoms: list[SubnetConfig] = []
    keys = seen | {a.key() for a in sweep}
    tries = 0
    while len(randoms) < cfg.measure_subnets and tries < cfg.measure_subnets * 20 + 100:
        tries += 1
        arch = space.sample(rng)
        if arch.key() not in keys:
            keys.add(arch.key())
            randoms.append(arch)
    # interleave the rest of the sweep with the random ones, so a run cut short keeps both kinds
    tagged = [((i + 1) / len(sweep), "sweep", a) for i, a in enumerate(sweep)]
    tagged += [((i + 1) / len(randoms), "random", a) for i, a in enumerate(randoms)]
    for _, kind, arch in sorted(tagged, key=lambda t: (t[0], t[1] == "sweep")):
        add(kind, arch)
    return plan


def measure(ctx: Context, out_dir: Path, metrics: dict[str, Any], split_seed: int) -> None:
    cfg = ctx.cfg
    plan = measurement_plan(ctx.space, cfg)
    deadline = ctx.budget_s - cfg.end_margin_s
    n_calib = len(_batches(ctx.calib_idx, cfg.batch_size, cfg.measure_calib_images))
    n_calib_images = sum(
        int(b.numel()) for b in _batches(ctx.calib_idx, cfg.batch_size, cfg.measure_calib_images)
    )
    results: list[dict[str, Any]] = []
    header = {
        "format": ACCURACY_FORMAT,
        "version": 1,
        "supernet": SUPERNET_NAME,
        "metric": "holdout_top1 in percent (0-100), ImageNet labels of the 10 Imagenette classes",
        "split_file": SPLIT_FILE,
        "split_seed": split_seed,
        "holdout_images": int(ctx.holdout_idx.numel()),
        "calibration_images": n_calib_images,
        "calibration": "first K names of split.json 'calibration'; BN reset + cumulative average",
        "preprocess": "bilinear antialiased resize 128->r of [0,1] RGB, ImageNet mean/std",
        "weights": "fp16-rounded (as shipped)",
        "numerics": "bf16 autocast" if ctx.device.type == "cuda" and cfg.bf16_autocast else "fp32",
        "device": str(ctx.device),
        "planned": len(plan),
    }
    t0 = elapsed_s()

    def flush(complete: bool) -> None:
        doc = {
            **header,
            "complete": complete,
            "measured": len(results),
            "seconds": round(elapsed_s() - t0, 1),
        }
        doc["subnets"] = results
        atomic_write_json(out_dir / ACCURACY_FILE, doc)

    say(
        f"measure: {len(plan)} sub-networks planned ({n_calib} calibration batches each), "
        f"{ctx.remaining_s():.0f}s left"
    )
    stopped = True
    try:
        for i, (kind, arch) in enumerate(plan):
            if elapsed_s() >= deadline:
                break
            top1 = calibrate_and_eval(ctx, arch, cfg.measure_calib_images)
            results.append(
                {**arch.to_dict(), "holdout_top1": round(top1, 2), "kind": kind, "key": arch.key()}
            )
            if (i + 1) % cfg.measure_flush_every == 0:
                flush(False)
        else:
            stopped = False
    finally:
        flush(not stopped)  # an exception keeps what was measured (marked incomplete)
    secs = elapsed_s() - t0
    metrics["measure"] = {
        "planned": len(plan),
        "measured": len(results),
        "stopped_early": stopped,
        "seconds": round(secs, 1),
        "s_per_subnet": round(secs / max(1, len(results)), 3),
    }
    ctx.log.event("measure_end", **metrics["measure"])
    say(
        f"measure: {len(results)}/{len(plan)} sub-networks in {secs:.0f}s"
        + (" (stopped at the budget)" if stopped else "")
    )


# --------------------------------------------------------------------------------------------
# export


def export(ctx: Context, out_dir: Path, metadata: Mapping[str, Any], metrics: dict[str, Any]) -> None:
    """Write the embedded layout with the core's ``export_embedded`` (the one exporter)."""
    cpu_net = copy.deepcopy(ctx.net).cpu().eval()
    set_subnet(cpu_net, ctx.space.largest())
    export_embedded(cpu_net, out_dir, shard_mb=ctx.cfg.shard_mb, metadata=dict(metadata))
    files = sorted(p.name for p in out_dir.iterdir() if p.suffix == ".safetensors")
    exporter = "dynamic_ofa_ros.supernet.export_embedded"
    metrics["export"] = {"exporter": exporter, "files": [*files, "manifest.json"]}
    ctx.log.event("export", **metrics["export"])
    say(f"export: {', '.join(files)}")


# --------------------------------------------------------------------------------------------
# main


def _resumable_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    training = metrics.get("training", {})
    return {
        "resumed_from": training.get("resumed_from"),
        "resumed_at_step": training.get("resumed_at_step"),
        "paused": training.get("paused"),
        "checkpoint": training.get("checkpoint", {}).get("folder"),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="train_supernet",
        description="Train the embedded OFA MobileNetV3 super-network on Imagenette (see docs/training.md).",
    )
    p.add_argument(
        "--data", type=Path, nargs="+", required=True, help="ImageFolder zips (train-128px-part*.zip)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (flat; created)")
    p.add_argument("--config", type=Path, default=None, help="JSON config (config/train_supernet.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--time-budget-min", type=float, default=None, help="wall-clock budget of the whole run")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--measure-subnets", type=int, default=None, help="random sub-networks to measure")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="resumable run: write a checkpoint here when training stops (step-based cosine over the "
        "planned epochs; the time budget only ends this call)",
    )
    p.add_argument(
        "--resume", type=Path, default=None, help="continue the run of this --checkpoint-dir (same config)"
    )
    p.add_argument(
        "--stop-after-steps",
        type=int,
        default=None,
        metavar="N",
        help="end this call's training after N steps (needs --checkpoint-dir; for splitting a run)",
    )
    args = p.parse_args(argv)
    if args.stop_after_steps is not None and (args.checkpoint_dir is None or args.stop_after_steps < 0):
        p.error("--stop-after-steps needs --checkpoint-dir and N >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    global _T_START
    if not _AS_SCRIPT:  # called in-process (tests): the budget counts from this call
        _T_START = time.monotonic()
    args = parse_args(argv)
    overrides = list(args.set)
    for key, value in (
        ("time_budget_min", args.time_budget_min),
        ("epochs", args.epochs),
        ("measure_subnets", args.measure_subnets),
        ("seed", args.seed),
    ):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    cfg = load_config(args.config, overrides)
    checkpoint: Checkpoint | None = None
    if args.resume is not None:
        try:  # before any work: a wrong or damaged checkpoint fails in seconds
            checkpoint = read_checkpoint(args.resume)
            check_resume_config(checkpoint, cfg)
        except CheckpointError as exc:
            raise SystemExit(f"train_supernet: --resume {args.resume}: {exc}") from exc
    with pointwise_as_matmul(cfg.pointwise_matmul):
        return _run(args, cfg, argv, checkpoint)


def _run(
    args: argparse.Namespace,
    cfg: TrainConfig,
    argv: Sequence[str] | None,
    checkpoint: Checkpoint | None = None,
) -> int:
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available")

    def resume_failed(what: str) -> SystemExit:
        return SystemExit(f"train_supernet: --resume {args.resume}: {what}")

    if checkpoint is not None and checkpoint.meta["device_type"] != device.type:
        raise resume_failed(
            f"written on {checkpoint.meta['device_type']}, this run is on {device.type}; the random "
            "generators differ per device type: resume on the same kind of device (--device)"
        )
    budget_s = cfg.time_budget_min * 60.0
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    log = RunLog(out_dir / LOG_FILE)
    repo = Path(__file__).resolve().parent.parent
    metrics: dict[str, Any] = {
        "command": [sys.executable, *sys.argv] if argv is None else ["train_supernet", *argv],
        "cwd": os.getcwd(),
        "config": cfg.to_dict(),
        "config_file": str(args.config) if args.config else None,
        "environment": environment_info(device),
        "git": git_info(repo),
        # the device copy of the tree may have no .git: identify the code and config by content too
        "source_sha256": {
            "offline_tools/train_supernet.py": sha256_file(Path(__file__).resolve()),
            "config": sha256_file(args.config) if args.config else None,
        },
        "seeds": {"seed": cfg.seed, "split_seed": cfg.split_seed, "python/numpy/torch": cfg.seed},
        "timings": {},
        "warnings": [],
        "status": "running",
    }
    env = metrics["environment"]
    say(
        f"device {device} ({env.get('gpu', platform.processor() or 'cpu')}), torch {env['torch']}, "
        f"cudnn {env['cudnn']}, budget {budget_s:.0f}s"
    )
    log.event(
        "start", command=metrics["command"], config=metrics["config"], environment=env, git=metrics["git"]
    )
    errors: list[str] = []

    def stage_failed(stage: str, exc: BaseException) -> None:
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        errors.append(f"{stage}: {exc!r}")
        log.event("error", stage=stage, error=repr(exc), traceback=tb[-4000:])

    def write_metrics(status: str) -> None:
        metrics["status"] = status
        metrics["errors"] = errors
        metrics["timings"]["total_s"] = round(elapsed_s(), 1)
        atomic_write_json(out_dir / METRICS_FILE, metrics)

    # ---- data (no recovery possible without it)
    t = elapsed_s()
    zip_paths = [Path(p) for p in args.data]
    entries = list_zip_images(zip_paths)
    split = make_split(
        [e.name for e in entries], seed=cfg.split_seed, n_holdout=cfg.holdout_images, n_calib=cfg.calib_images
    )
    split_doc = split_manifest(split, entries, zip_paths, cfg.split_seed)
    atomic_write_json(out_dir / SPLIT_FILE, split_doc)
    # the data's identity for a resumable run: the split manifest holds the zips' SHA-256 and every name
    split_sha256 = hashlib.sha256(json.dumps(split_doc, sort_keys=True).encode("utf-8")).hexdigest()
    if checkpoint is not None and checkpoint.meta["data"]["split_sha256"] != split_sha256:
        raise resume_failed(
            f"the training data differ from the checkpoint's (split manifest SHA-256 "
            f"{checkpoint.meta['data']['split_sha256'][:16]}..., now {split_sha256[:16]}...; checkpoint zips "
            f"{checkpoint.meta['data']['zips']}): pass the same --data zips, "
            "or start a new run without --resume"
        )
    images_cpu, n_resized = decode_images(zip_paths, entries, size=cfg.image_size, threads=cfg.decode_threads)
    position = {e.name: i for i, e in enumerate(entries)}
    holdout_set = set(split["holdout"])
    train_list = [i for i, e in enumerate(entries) if e.name not in holdout_set]
    labels = torch.tensor([e.label for e in entries], dtype=torch.int64)
    images = images_cpu.to(device)
    del images_cpu
    metrics["data"] = {
        "zips": [p.name for p in zip_paths],
        "images": len(entries),
        "train": len(train_list),
        "holdout": len(split["holdout"]),
        "calibration": len(split["calibration"]),
        "resized_on_decode": n_resized,
        "tensor": list(images.shape),
        "tensor_mib": round(images.numel() / 2**20, 1),
    }
    metrics["timings"]["data_s"] = round(elapsed_s() - t, 1)
    log.event("data", **metrics["data"], seconds=metrics["timings"]["data_s"])
    say(
        f"data: {len(entries)} images ({len(train_list)} train, {len(split['holdout'])} hold-out, "
        f"{len(split['calibration'])} calibration) decoded in {metrics['timings']['data_s']}s"
    )

    # ---- model
    t = elapsed_s()
    net, built_by = build_supernet(cfg)
    init_weights(net, zero_init_residual_bn=cfg.zero_init_residual_bn, bn_momentum=cfg.bn_momentum)
    net.to(device)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    if checkpoint is not None:
        try:
            load_model_state(net, checkpoint)
        except CheckpointError as exc:
            raise resume_failed(str(exc)) from exc
    metrics["model"] = {
        "name": SUPERNET_NAME,
        "built_by": built_by,
        "parameters": sum(p.numel() for p in net.parameters()),
        "init": "he_fout" + (" + zero-init residual BN gamma" if cfg.zero_init_residual_bn else ""),
    }
    metrics["timings"]["model_s"] = round(elapsed_s() - t, 1)
    space = SearchSpace(resolutions=tuple(cfg.resolutions))

    def to_dev(idx: list[int]) -> Tensor:
        return torch.tensor(idx, dtype=torch.int64).to(device)

    ctx = Context(
        cfg=cfg,
        device=device,
        net=net,
        space=space,
        images=images,
        labels=labels.to(device),
        train_idx=to_dev(train_list),
        calib_idx=to_dev([position[n] for n in split["calibration"]]),
        holdout_idx=to_dev([position[n] for n in split["holdout"]]),
        log=log,
        budget_s=budget_s,
    )
    write_metrics("training")
    resumable: Resumable | None = None
    if args.checkpoint_dir is not None or checkpoint is not None:
        resumable = Resumable(
            checkpoint_dir=args.checkpoint_dir,
            checkpoint=checkpoint,
            stop_after_steps=args.stop_after_steps,
            run_info={
                "data": {
                    "split_sha256": split_sha256,
                    "zips": [{"file": x["file"], "sha256": x["sha256"]} for x in split_doc["sources"]],
                    "n_images": len(entries),
                    "n_train": len(train_list),
                },
                "seeds": metrics["seeds"],
                "git": metrics["git"],
                "source_sha256": metrics["source_sha256"],
                "command": metrics["command"],
            },
        )

    # ---- train
    t = elapsed_s()
    try:
        train(ctx, metrics, resumable)
    except CheckpointError as exc:  # a checkpoint that does not fit: nothing sensible to export
        raise resume_failed(str(exc)) from exc
    except Exception as exc:
        stage_failed("train", exc)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    metrics["timings"]["train_s"] = round(elapsed_s() - t, 1)
    write_metrics("evaluating")

    # ---- final accuracies on the shipped (fp16-rounded) weights
    t = elapsed_s()
    round_to_fp16_(net)
    final: dict[str, Any] = {}
    try:
        for name, arch in reference_subnets(space, cfg.seed):
            final[name] = {"holdout_top1": round(calibrate_and_eval(ctx, arch, cfg.final_calib_images), 2)}
            final[name]["arch"] = arch.to_dict()
        # the exported BN statistics are the largest sub-network's at the largest resolution
        calibrate_and_eval(ctx, dataclasses.replace(space.largest(), resolution=max(cfg.resolutions)), 10**9)
    except Exception as exc:
        stage_failed("final_eval", exc)
    n_final_calib = sum(
        int(b.numel()) for b in _batches(ctx.calib_idx, cfg.batch_size, cfg.final_calib_images)
    )
    metrics["final_holdout_top1"] = {k: v["holdout_top1"] for k, v in final.items()}
    metrics["final_eval"] = {
        "calibration_images": n_final_calib,
        "holdout_images": int(ctx.holdout_idx.numel()),
    }
    metrics["timings"]["final_eval_s"] = round(elapsed_s() - t, 1)
    log.event("final", accuracies=metrics["final_holdout_top1"], **metrics["final_eval"])
    say("holdout top-1: " + ", ".join(f"{k} {v['holdout_top1']:.1f}" for k, v in final.items()))

    # ---- export
    t = elapsed_s()
    set_subnet(net, space.largest())
    net.eval()
    metadata = {
        "resolutions": list(cfg.resolutions),
        "dataset": "imagenette train-128px (fast.ai Imagenette: 10 ImageNet classes, ImageNet-1k labels)",
        "dataset_details": {
            "zips": metrics["data"]["zips"],
            "images": len(entries),
            "trained_on": len(train_list),
            "split_file": "embedded_split.json",
            "class_to_imagenet": IMAGENETTE_TO_IMAGENET,
        },
        "bn_statistics": f"largest sub-network at {max(cfg.resolutions)} px "
        "(per-level BN statistics come from the level tables)",
        "training": {
            "script": "offline_tools/train_supernet.py",
            "config": cfg.to_dict(),
            "command": metrics["command"],
            "git": metrics["git"],
            "source_sha256": metrics["source_sha256"],
            "seeds": metrics["seeds"],
            "environment": env,
            "steps": metrics.get("training", {}).get("steps_done"),
            "epochs_done": metrics.get("training", {}).get("epochs_done"),
            "stopped_early": metrics.get("training", {}).get("stopped_early"),
            "timings_s": dict(metrics["timings"]),
            **({"resumable": _resumable_summary(metrics)} if resumable is not None else {}),
        },
        "holdout_top1": {
            **metrics["final_holdout_top1"],
            "holdout_images": int(ctx.holdout_idx.numel()),
            "calibration_images": n_final_calib,
        },
    }
    try:
        export(ctx, out_dir, metadata, metrics)
    except Exception as exc:
        stage_failed("export", exc)
    metrics["timings"]["export_s"] = round(elapsed_s() - t, 1)
    write_metrics("measuring")

    # ---- measurement
    t = elapsed_s()
    try:
        measure(ctx, out_dir, metrics, cfg.split_seed)
    except Exception as exc:
        stage_failed("measure", exc)
    metrics["timings"]["measure_s"] = round(elapsed_s() - t, 1)
    if device.type == "cuda":
        metrics["cuda_max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    status = "failed" if errors else "ok"
    write_metrics(status)
    log.event("end", status=status, errors=errors, total_s=round(elapsed_s(), 1))
    log.close()
    files = sorted(p.name for p in out_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    big = [
        f"{p.name} {p.stat().st_size / 2**20:.1f} MiB"
        for p in out_dir.iterdir()
        if p.stat().st_size > 16 * 2**20
    ]
    say(f"done ({status}) in {elapsed_s():.0f}s: {len(files)} files in {out_dir}: {', '.join(files)}")
    if big:
        say(f"WARNING: files over 16 MiB: {big}")
    if errors:
        say(f"ERRORS: {errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
