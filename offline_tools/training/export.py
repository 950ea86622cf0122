"""The trained weights in the embedded layout (``supernet.export_embedded``) and their manifest metadata."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dynamic_ofa_ros.ofa_compat import set_active
from dynamic_ofa_ros.supernet import export_embedded
from offline_tools.datasets import IMAGENETTE_WNIDS
from offline_tools.training.context import Context

__all__ = ["export", "export_metadata"]


def _resumable_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    training = metrics.get("training", {})
    return {
        "resumed_from": training.get("resumed_from"),
        "resumed_at_step": training.get("resumed_at_step"),
        "paused": training.get("paused"),
        "checkpoint": training.get("checkpoint", {}).get("folder"),
    }


def export_metadata(
    ctx: Context, metrics: Mapping[str, Any], *, n_images: int, n_train: int, resumable: bool
) -> dict[str, Any]:
    """The ``manifest.json`` metadata: resolutions, dataset, training record, hold-out accuracies."""
    cfg = ctx.cfg
    training = metrics.get("training", {})
    return {
        "resolutions": list(cfg.resolutions),
        "dataset": "imagenette train-128px (fast.ai Imagenette: 10 ImageNet classes, ImageNet-1k labels)",
        "dataset_details": {
            "zips": metrics["data"]["zips"],
            "images": n_images,
            "trained_on": n_train,
            "split_file": "embedded_split.json",
            "class_to_imagenet": dict(IMAGENETTE_WNIDS),
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
            "environment": metrics["environment"],
            "steps": training.get("steps_done"),
            "epochs_done": training.get("epochs_done"),
            "stopped_early": training.get("stopped_early"),
            "timings_s": dict(metrics["timings"]),
            **({"resumable": _resumable_summary(metrics)} if resumable else {}),
        },
        "holdout_top1": {
            **metrics["final_holdout_top1"],
            "holdout_images": metrics["final_eval"]["holdout_images"],
            "calibration_images": metrics["final_eval"]["calibration_images"],
        },
    }


def export(ctx: Context, out_dir: Path, metadata: Mapping[str, Any], metrics: dict[str, Any]) -> None:
    """Write the embedded layout with the core's ``export_embedded`` (the one exporter)."""
    cpu_net = copy.deepcopy(ctx.net).cpu().eval()
    set_active(cpu_net, ctx.space.largest())
    export_embedded(cpu_net, out_dir, shard_mb=ctx.cfg.shard_mb, metadata=dict(metadata))
    files = sorted(p.name for p in out_dir.iterdir() if p.suffix == ".safetensors")
    exporter = "dynamic_ofa_ros.supernet.export_embedded"
    metrics["export"] = {"exporter": exporter, "files": [*files, "manifest.json"]}
    ctx.log.event("export", **metrics["export"])
    ctx.clock.say(f"export: {', '.join(files)}")
