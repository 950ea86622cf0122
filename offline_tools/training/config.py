"""Every knob of a training run (:class:`TrainConfig`) and the names of the files a run writes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamic_ofa_ros.errors import DofaError

__all__ = [
    "ACCURACY_FILE",
    "ACCURACY_FORMAT",
    "LOG_FILE",
    "METRICS_FILE",
    "SPLIT_FILE",
    "SPLIT_FORMAT",
    "TrainConfig",
    "TrainSetupError",
    "load_config",
]

SPLIT_FORMAT = "dynamic_ofa_ros.imagenette_split"
ACCURACY_FORMAT = "dynamic_ofa_ros.subnet_accuracy"
SPLIT_FILE = "split.json"
ACCURACY_FILE = "subnet_accuracy.json"
METRICS_FILE = "train_metrics.json"
LOG_FILE = "train_log.jsonl"


class TrainSetupError(DofaError, ValueError):
    """A run that cannot start (an unusable device, a checkpoint that does not fit); the message says why."""


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
    def from_mapping(cls, data: Mapping[str, object], *, where: str) -> TrainConfig:
        """A validated config from ``data`` (every key a field; ``comment``/``_comment`` ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"comment", "_comment"})
        if unknown:
            raise ValueError(f"{where}: unknown config keys {unknown}; known: {sorted(names)}")
        values: dict[str, Any] = {k: v for k, v in data.items() if k in names}  # JSON values, checked below
        cfg = cls(**values)
        cfg.validate(where=where)
        return cfg

    def validate(self, *, where: str = "config") -> None:
        """Raise ``ValueError`` for values no run can use; sorts and de-duplicates ``resolutions``."""
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
        """The config as a JSON-able dict (field order)."""
        return dataclasses.asdict(self)


def load_config(path: Path | None, overrides: Sequence[str]) -> TrainConfig:
    """Defaults, then the JSON file, then ``key=value`` overrides (values parsed as JSON)."""
    data: dict[str, object] = {}
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            loaded = json.load(fh)
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the config must be a JSON object")
        data = loaded
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        try:
            data[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            data[key.strip()] = value
    return TrainConfig.from_mapping(data, where=str(path or "defaults"))
