"""The training run, stage by stage: data, model, train, final evaluation, export, measurement.

:func:`train_supernet` is the typed entry (``offline_tools.training.cli`` turns the command line
into its arguments). Every stage after data loading is guarded: if training fails or the clock runs
out, the run still evaluates, exports and measures what it has, records the error, and reports
status ``failed``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dynamic_ofa_ros.arch import SUPERNET_NAME, SearchSpace
from dynamic_ofa_ros.ofa_compat import set_active
from dynamic_ofa_ros.timing import write_json
from offline_tools.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    Resumable,
    check_resume_config,
    load_model_state,
    read_checkpoint,
)
from offline_tools.training.config import LOG_FILE, METRICS_FILE, SPLIT_FILE, TrainConfig, TrainSetupError
from offline_tools.training.context import Clock, Context, RunLog
from offline_tools.training.data import (
    ImageEntry,
    decode_images,
    list_zip_images,
    make_split,
    split_manifest,
    split_sha256,
)
from offline_tools.training.export import export, export_metadata
from offline_tools.training.loop import train
from offline_tools.training.measure import calibrate_and_eval, calibration_batches, measure, reference_subnets
from offline_tools.training.model import build_supernet, init_weights, pointwise_as_matmul, round_to_fp16_
from offline_tools.training.provenance import environment_info, git_info, source_sha256

__all__ = ["TrainResult", "resolve_device", "train_supernet"]


@dataclass
class TrainResult:
    """What a run produced: its folder, ``"ok"`` or ``"failed"``, the stage errors, ``train_metrics.json``."""

    out_dir: Path
    status: str
    errors: list[str]
    metrics: dict[str, Any]

    @property
    def exit_code(self) -> int:
        """0 when every stage succeeded, else 1."""
        return 1 if self.errors else 0


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainSetupError(f"--device {spec}: CUDA is not available")
    return device


@dataclass
class _Data:
    """The decoded training data and its split."""

    entries: list[ImageEntry]
    split: dict[str, list[str]]
    manifest: dict[str, Any]
    sha256: str  # the data's identity for a resumable run
    images: Tensor  # uint8 N x 3 x S x S on the device
    train_list: list[int]

    def indices(self, names: Sequence[str], device: torch.device) -> Tensor:
        """Positions of ``names`` among the entries, as an int64 tensor on ``device``."""
        position = {e.name: i for i, e in enumerate(self.entries)}
        return torch.tensor([position[n] for n in names], dtype=torch.int64).to(device)


class _Run:
    """One run's output folder, metrics, stage errors and log; its methods are the stages."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        out_dir: Path,
        device: torch.device,
        clock: Clock,
        resume: Path | None,
        checkpoint: Checkpoint | None,
    ) -> None:
        self.cfg, self.out_dir, self.device, self.clock = cfg, out_dir, device, clock
        self.resume, self.checkpoint = resume, checkpoint
        self.log = RunLog(out_dir / LOG_FILE, clock)
        self.errors: list[str] = []
        self.metrics: dict[str, Any] = {}

    def resume_failed(self, what: str) -> CheckpointError:
        """The error of a ``--resume`` that does not fit this run."""
        return CheckpointError(f"--resume {self.resume}: {what}")

    def stage_failed(self, stage: str, exc: BaseException) -> None:
        """Record a failed stage (the traceback goes to stderr and the log); the run goes on."""
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        self.errors.append(f"{stage}: {exc!r}")
        self.log.event("error", stage=stage, error=repr(exc), traceback=tb[-4000:])

    def write_metrics(self, status: str) -> None:
        """``train_metrics.json`` with ``status`` (atomic; rewritten after every stage)."""
        self.metrics["status"] = status
        self.metrics["errors"] = self.errors
        self.metrics["timings"]["total_s"] = round(self.clock.elapsed(), 1)
        write_json(self.out_dir / METRICS_FILE, self.metrics)

    def start(self, command: list[str], config_file: Path | None) -> None:
        """The run's identity into the metrics and the log."""
        cfg = self.cfg
        self.metrics.update(
            {
                "command": command,
                "cwd": os.getcwd(),
                "config": cfg.to_dict(),
                "config_file": str(config_file) if config_file else None,
                "environment": environment_info(self.device),
                "git": git_info(),
                "source_sha256": source_sha256(config_file),
                "seeds": {"seed": cfg.seed, "split_seed": cfg.split_seed, "python/numpy/torch": cfg.seed},
                "timings": {},
                "warnings": [],
                "status": "running",
            }
        )
        env = self.metrics["environment"]
        self.clock.say(
            f"device {self.device} ({env.get('gpu', platform.processor() or 'cpu')}), torch {env['torch']}, "
            f"cudnn {env['cudnn']}, budget {cfg.time_budget_min * 60.0:.0f}s"
        )
        m = self.metrics
        self.log.event("start", command=m["command"], config=m["config"], environment=env, git=m["git"])

    def load_data(self, zip_paths: list[Path]) -> _Data:
        """List, split (``split.json``), check against a checkpoint, decode and upload the images."""
        cfg, t = self.cfg, self.clock.elapsed()
        entries = list_zip_images(zip_paths)
        names = [e.name for e in entries]
        split = make_split(names, seed=cfg.split_seed, n_holdout=cfg.holdout_images, n_calib=cfg.calib_images)
        manifest = split_manifest(split, entries, zip_paths, cfg.split_seed)
        write_json(self.out_dir / SPLIT_FILE, manifest)
        digest = split_sha256(manifest)
        if self.checkpoint is not None and self.checkpoint.meta["data"]["split_sha256"] != digest:
            saved = self.checkpoint.meta["data"]
            raise self.resume_failed(
                f"the training data differ from the checkpoint's (split manifest SHA-256 "
                f"{saved['split_sha256'][:16]}..., now {digest[:16]}...; checkpoint zips "
                f"{saved['zips']}): pass the same --data zips, or start a new run without --resume"
            )
        images_cpu, n_resized = decode_images(
            zip_paths, entries, size=cfg.image_size, threads=cfg.decode_threads
        )
        holdout_set = set(split["holdout"])
        data = _Data(
            entries=entries,
            split=split,
            manifest=manifest,
            sha256=digest,
            images=images_cpu.to(self.device),
            train_list=[i for i, e in enumerate(entries) if e.name not in holdout_set],
        )
        del images_cpu
        self.metrics["data"] = {
            "zips": [p.name for p in zip_paths],
            "images": len(entries),
            "train": len(data.train_list),
            "holdout": len(split["holdout"]),
            "calibration": len(split["calibration"]),
            "resized_on_decode": n_resized,
            "tensor": list(data.images.shape),
            "tensor_mib": round(data.images.numel() / 2**20, 1),
        }
        seconds = self.metrics["timings"]["data_s"] = round(self.clock.elapsed() - t, 1)
        self.log.event("data", **self.metrics["data"], seconds=seconds)
        self.clock.say(
            f"data: {len(entries)} images ({len(data.train_list)} train, {len(split['holdout'])} hold-out, "
            f"{len(split['calibration'])} calibration) decoded in {seconds}s"
        )
        return data

    def build_model(self, data: _Data) -> Context:
        """The initialised (or checkpoint-restored) network on the device, and the shared context."""
        cfg, device, t = self.cfg, self.device, self.clock.elapsed()
        net, built_by = build_supernet(cfg)
        init_weights(net, zero_init_residual_bn=cfg.zero_init_residual_bn, bn_momentum=cfg.bn_momentum)
        net.to(device)
        if cfg.channels_last:
            net.to(memory_format=torch.channels_last)
        if self.checkpoint is not None:
            try:
                load_model_state(net, self.checkpoint)
            except CheckpointError as exc:
                raise self.resume_failed(str(exc)) from exc
        self.metrics["model"] = {
            "name": SUPERNET_NAME,
            "built_by": built_by,
            "parameters": sum(p.numel() for p in net.parameters()),
            "init": "he_fout" + (" + zero-init residual BN gamma" if cfg.zero_init_residual_bn else ""),
        }
        self.metrics["timings"]["model_s"] = round(self.clock.elapsed() - t, 1)
        labels = torch.tensor([e.label for e in data.entries], dtype=torch.int64)
        return Context(
            cfg=cfg,
            device=device,
            net=net,
            space=SearchSpace(resolutions=tuple(cfg.resolutions)),
            images=data.images,
            labels=labels.to(device),
            train_idx=torch.tensor(data.train_list, dtype=torch.int64).to(device),
            calib_idx=data.indices(data.split["calibration"], device),
            holdout_idx=data.indices(data.split["holdout"], device),
            log=self.log,
            budget_s=cfg.time_budget_min * 60.0,
            clock=self.clock,
        )

    def resumable(self, data: _Data, checkpoint_dir: Path | None, stop_after_steps: int | None) -> Resumable:
        """The resumable-run settings, with what the checkpoint JSON records about this run."""
        m = self.metrics
        return Resumable(
            checkpoint_dir=checkpoint_dir,
            checkpoint=self.checkpoint,
            stop_after_steps=stop_after_steps,
            run_info={
                "data": {
                    "split_sha256": data.sha256,
                    "zips": [{"file": x["file"], "sha256": x["sha256"]} for x in data.manifest["sources"]],
                    "n_images": len(data.entries),
                    "n_train": len(data.train_list),
                },
                "seeds": m["seeds"],
                "git": m["git"],
                "source_sha256": m["source_sha256"],
                "command": m["command"],
            },
        )

    def train(self, ctx: Context, resumable: Resumable | None) -> None:
        """Stage 2; a checkpoint that does not fit ends the run, any other failure is recorded."""
        t = self.clock.elapsed()
        try:
            train(ctx, self.metrics, resumable)
        except CheckpointError as exc:  # a checkpoint that does not fit: nothing sensible to export
            raise self.resume_failed(str(exc)) from exc
        except Exception as exc:  # recorded; the later stages use what there is
            self.stage_failed("train", exc)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.metrics["timings"]["train_s"] = round(self.clock.elapsed() - t, 1)
        self.write_metrics("evaluating")

    def final_eval(self, ctx: Context) -> None:
        """Round to fp16; hold-out top-1 of the reference sub-networks; the exported BN statistics."""
        cfg, t = self.cfg, self.clock.elapsed()
        round_to_fp16_(ctx.net)
        final: dict[str, dict[str, Any]] = {}
        try:
            for name, arch in reference_subnets(ctx.space, cfg.seed):
                top1 = calibrate_and_eval(ctx, arch, cfg.final_calib_images)
                final[name] = {"holdout_top1": round(top1, 2), "arch": arch.to_dict()}
            # the exported BN statistics are the largest sub-network's at the largest resolution
            largest = dataclasses.replace(ctx.space.largest(), resolution=max(cfg.resolutions))
            calibrate_and_eval(ctx, largest, 10**9)
        except Exception as exc:  # recorded; export and measurement still run
            self.stage_failed("final_eval", exc)
        batches = calibration_batches(ctx.calib_idx, cfg.batch_size, cfg.final_calib_images)
        self.metrics["final_holdout_top1"] = {k: v["holdout_top1"] for k, v in final.items()}
        self.metrics["final_eval"] = {
            "calibration_images": sum(int(b.numel()) for b in batches),
            "holdout_images": int(ctx.holdout_idx.numel()),
        }
        self.metrics["timings"]["final_eval_s"] = round(self.clock.elapsed() - t, 1)
        self.log.event("final", accuracies=self.metrics["final_holdout_top1"], **self.metrics["final_eval"])
        self.clock.say(
            "holdout top-1: " + ", ".join(f"{k} {v['holdout_top1']:.1f}" for k, v in final.items())
        )

    def export(self, ctx: Context, data: _Data, *, resumable: bool) -> None:
        """Stage 4: the embedded layout into the output folder."""
        t = self.clock.elapsed()
        set_active(ctx.net, ctx.space.largest())
        ctx.net.eval()
        metadata = export_metadata(
            ctx, self.metrics, n_images=len(data.entries), n_train=len(data.train_list), resumable=resumable
        )
        try:
            export(ctx, self.out_dir, metadata, self.metrics)
        except Exception as exc:  # recorded; the measurement still runs
            self.stage_failed("export", exc)
        self.metrics["timings"]["export_s"] = round(self.clock.elapsed() - t, 1)
        self.write_metrics("measuring")

    def measure(self, ctx: Context) -> None:
        """Stage 5: ``subnet_accuracy.json`` within the remaining time."""
        t = self.clock.elapsed()
        try:
            measure(ctx, self.out_dir, self.metrics, self.cfg.split_seed)
        except Exception as exc:  # recorded in the metrics
            self.stage_failed("measure", exc)
        self.metrics["timings"]["measure_s"] = round(self.clock.elapsed() - t, 1)

    def finish(self) -> TrainResult:
        """Final metrics and log entry; a summary of the output folder."""
        if self.device.type == "cuda":
            self.metrics["cuda_max_memory_gib"] = round(
                torch.cuda.max_memory_allocated(self.device) / 2**30, 2
            )
        status = "failed" if self.errors else "ok"
        self.write_metrics(status)
        self.log.event("end", status=status, errors=self.errors, total_s=round(self.clock.elapsed(), 1))
        self.log.close()
        out_dir, say = self.out_dir, self.clock.say
        files = sorted(p.name for p in out_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        big = [
            f"{p.name} {p.stat().st_size / 2**20:.1f} MiB"
            for p in out_dir.iterdir()
            if p.stat().st_size > 16 * 2**20
        ]
        listing = ", ".join(files)
        say(f"done ({status}) in {self.clock.elapsed():.0f}s: {len(files)} files in {out_dir}: {listing}")
        if big:
            say(f"WARNING: files over 16 MiB: {big}")
        if self.errors:
            say(f"ERRORS: {self.errors}")
        return TrainResult(out_dir=out_dir, status=status, errors=self.errors, metrics=self.metrics)


def _seed_and_configure(cfg: TrainConfig) -> None:
    """Seed Python, NumPy and torch; cuDNN autotuning as configured; TF32 on."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def train_supernet(
    config: TrainConfig,
    *,
    data: Sequence[Path],
    out_dir: Path,
    device: str = "auto",
    config_file: Path | None = None,
    checkpoint_dir: Path | None = None,
    resume: Path | None = None,
    stop_after_steps: int | None = None,
    command: Sequence[str] | None = None,
    clock: Clock | None = None,
) -> TrainResult:
    """Train, evaluate, export and measure the super-network into ``out_dir`` (see the package docstring).

    Args:
        config: the run's settings (``load_config``).
        data: the ImageFolder zips (Imagenette ``train-128px-part*.zip``).
        out_dir: output folder (flat; created).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        config_file: the JSON the config came from (recorded with its SHA-256).
        checkpoint_dir: resumable run: write a checkpoint here when training stops.
        resume: continue the run of this checkpoint folder (same config except ``PER_CALL_KEYS``).
        stop_after_steps: end this call's training after N steps (needs ``checkpoint_dir``).
        command: the command line to record (default: this process's ``sys.argv``).
        clock: the clock the time budget counts from (default: started now).

    Returns:
        The output folder, status and metrics; stage failures are in ``errors`` (exit code 1).

    Raises:
        TrainSetupError: before any work for an unusable device or ``resume`` checkpoint
            (:class:`CheckpointError`), also after decoding when the checkpoint's data or network
            differ.
    """
    clock = clock if clock is not None else Clock()
    if stop_after_steps is not None and (checkpoint_dir is None or stop_after_steps < 0):
        raise TrainSetupError("--stop-after-steps needs --checkpoint-dir and N >= 0")
    checkpoint: Checkpoint | None = None
    if resume is not None:
        try:  # before any work: a wrong or damaged checkpoint fails in seconds
            checkpoint = read_checkpoint(resume)
            check_resume_config(checkpoint, config)
        except CheckpointError as exc:
            raise CheckpointError(f"--resume {resume}: {exc}") from exc
    with pointwise_as_matmul(config.pointwise_matmul):
        out_dir.mkdir(parents=True, exist_ok=True)
        dev = resolve_device(device)
        if checkpoint is not None and checkpoint.meta["device_type"] != dev.type:
            raise CheckpointError(
                f"--resume {resume}: written on {checkpoint.meta['device_type']}, this run is on {dev.type}; "
                "the random generators differ per device type: resume on the same kind of device (--device)"
            )
        _seed_and_configure(config)
        run = _Run(config, out_dir=out_dir, device=dev, clock=clock, resume=resume, checkpoint=checkpoint)
        run.start([sys.executable, *sys.argv] if command is None else list(command), config_file)
        loaded = run.load_data([Path(p) for p in data])
        ctx = run.build_model(loaded)
        run.write_metrics("training")
        resumable = None
        if checkpoint_dir is not None or checkpoint is not None:
            resumable = run.resumable(loaded, checkpoint_dir, stop_after_steps)
        run.train(ctx, resumable)
        run.final_eval(ctx)
        run.export(ctx, loaded, resumable=resumable is not None)
        run.measure(ctx)
        return run.finish()
