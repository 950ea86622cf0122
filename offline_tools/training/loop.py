"""Sandwich-rule training with in-place distillation, its LR schedule, and a resumable run's state.

Per step (one resolution, cycled through ``resolutions``): the largest sub-network learns from the
labels (label smoothing); the smallest and ``n_random_subnets`` random ones learn from the
largest's soft outputs (:func:`kd_loss`). A resumable run (:class:`~.checkpoint.Resumable`)
restores every state the next step reads -- weights, BN statistics, momentum, all four random
generators, the epoch's permutation -- so on the CPU it continues bit for bit.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from dynamic_ofa_ros.arch import SUPERNET_NAME
from dynamic_ofa_ros.ofa_compat import set_active
from offline_tools.training.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    CheckpointError,
    Resumable,
    model_state_to_files,
    numpy_state_to_json,
    optimizer_state_from_files,
    optimizer_state_to_files,
    py_state_from_json,
    py_state_to_json,
    restore_global_rngs,
    write_checkpoint,
)
from offline_tools.training.config import TrainConfig
from offline_tools.training.context import Context
from offline_tools.training.data import augment
from offline_tools.training.measure import quick_check
from offline_tools.training.model import param_groups

__all__ = ["EpochPartial", "Generators", "Schedule", "StepPlan", "kd_loss", "restore_training", "train"]


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
        """Cosine progress (0..1+) after warm-up: by step, or by the wall clock when that is ahead."""
        by_step = (step - self.warmup) / max(1, self.total - self.warmup) if step >= self.warmup else 0.0
        if not self.time_aware:
            return by_step
        by_time = train_elapsed / self.budget if self.budget > 0 else 1.0
        return max(by_step, by_time)

    def lr(self, step: int, train_elapsed: float) -> float:
        """The learning rate of ``step`` (0-based) after ``train_elapsed`` seconds of training."""
        peak = self.cfg.lr
        if step < self.warmup:
            return peak * (step + 1) / self.warmup
        p = min(1.0, self.progress(step, train_elapsed))
        low = peak * self.cfg.min_lr_ratio
        return low + (peak - low) * 0.5 * (1.0 + math.cos(math.pi * p))


def kd_loss(student_logits: Tensor, teacher_prob: Tensor) -> Tensor:
    """Cross-entropy against the teacher's soft distribution (= KL up to the teacher's entropy)."""
    return -(teacher_prob * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


@dataclass(frozen=True)
class StepPlan:
    """The run's step counts and training budget, fixed when training starts."""

    n_train: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int  # as configured; :class:`Schedule` clamps it below total_steps
    t_train0: float  # clock time at which training started
    train_budget_s: float

    @classmethod
    def of(cls, ctx: Context) -> StepPlan:
        """Steps per epoch (whole batches, capped by ``max_steps_per_epoch``), budget minus the reserve."""
        cfg = ctx.cfg
        n_train = int(ctx.train_idx.numel())
        steps_per_epoch = n_train // cfg.batch_size
        if steps_per_epoch < 1:
            raise ValueError(f"training set ({n_train} images) is smaller than one batch ({cfg.batch_size})")
        if cfg.max_steps_per_epoch > 0:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        t_train0 = ctx.clock.elapsed()
        return cls(
            n_train=n_train,
            steps_per_epoch=steps_per_epoch,
            total_steps=steps_per_epoch * cfg.epochs,
            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
            t_train0=t_train0,
            train_budget_s=max(1.0, ctx.budget_s - cfg.post_reserve_s - t_train0),
        )


@dataclass
class Generators:
    """The training's own random generators (the global ones are seeded by the pipeline)."""

    sampler: random.Random  # random sub-networks
    permutation: torch.Generator  # each epoch's order (CPU)
    augment: torch.Generator  # augmentation (on the device)

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> Generators:
        """The three generators of a run with ``seed``."""
        return cls(
            sampler=random.Random(seed + 17),
            permutation=torch.Generator().manual_seed(seed + 29),
            augment=torch.Generator(device=device).manual_seed(seed + 31),
        )


class EpochPartial(TypedDict):
    """The sums of an epoch a resumable call paused inside (the call that completes it records it)."""

    loss_sum: list[float]
    steps: int
    seconds: float


def _no_partial() -> EpochPartial:
    return {"loss_sum": [0.0, 0.0], "steps": 0, "seconds": 0.0}


def restore_training(
    checkpoint: Checkpoint,
    schedule: Mapping[str, int],
    opt: torch.optim.Optimizer,
    gens: Generators,
    dev: torch.device,
) -> tuple[int, int, int, EpochPartial]:
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
    restore_global_rngs(meta, rng, dev)
    gens.sampler.setstate(py_state_from_json(meta["rng"]["python_sampler"]))
    gens.permutation.set_state(rng["cpu_gen_epoch_start"])
    gens.augment.set_state(rng["dev_gen"])
    partial = meta["epoch_partial"]
    return (
        int(meta["global_step"]),
        int(meta["epoch"]),
        int(meta["step_in_epoch"]),
        {"loss_sum": list(partial["loss_sum"]), "steps": partial["steps"], "seconds": partial["seconds"]},
    )


def _make_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


class _Trainer:
    """One call's training: the loop state (step, epoch, position) and the steps that change it."""

    def __init__(self, ctx: Context, metrics: dict[str, Any], resumable: Resumable | None) -> None:
        self.ctx, self.cfg, self.metrics, self.resumable = ctx, ctx.cfg, metrics, resumable
        self.plan = StepPlan.of(ctx)
        self.sched = Schedule(
            ctx.cfg,
            self.plan.total_steps,
            self.plan.warmup_steps,
            self.plan.train_budget_s,
            time_aware=False if resumable is not None else None,
        )
        groups = param_groups(ctx.net, ctx.cfg.weight_decay)
        self.opt = _make_optimizer(ctx.cfg, groups)
        self.params = [p for g in groups for p in g["params"]]
        self.largest, self.smallest = ctx.space.largest(), ctx.space.smallest()
        self.gens = Generators.seeded(ctx.cfg.seed, ctx.device)
        self.step = 0  # global step
        self.epoch = 0  # 0-based index of the epoch the next step belongs to
        self.pos = 0  # the next step's index within its epoch
        self.partial = _no_partial()  # a paused epoch's sums
        self.start_step = 0
        self.stop_reason: str | None = None
        self.paused = False  # resumable: the call ended before the schedule did (a checkpoint continues it)
        self.epoch_gen_state = self.gens.permutation.get_state()

    def elapsed(self) -> float:
        """Seconds of training in this call."""
        return self.ctx.clock.elapsed() - self.plan.t_train0

    def start(self) -> None:
        """Record the plan in the metrics; restore a checkpoint's state when resuming."""
        plan, resumable = self.plan, self.resumable
        info: dict[str, Any] = {
            "steps_per_epoch": plan.steps_per_epoch,
            "planned_epochs": self.cfg.epochs,
            "planned_steps": plan.total_steps,
            "warmup_steps": self.sched.warmup,
            "train_budget_s": round(plan.train_budget_s, 1),
            "train_images": plan.n_train,
        }
        training = {**info, "epochs": [], "stopped_early": False, "stop_reason": None}
        self.metrics["training"] = training
        if resumable is not None:
            info["schedule"] = (
                "step-based warm-up + cosine over planned_steps (resumable; the clock ends calls)"
            )
            info["resumed_from"] = str(resumable.checkpoint.folder) if resumable.checkpoint else None
            if resumable.checkpoint is not None:
                schedule = {
                    "total_steps": plan.total_steps,
                    "steps_per_epoch": plan.steps_per_epoch,
                    "warmup_steps": self.sched.warmup,
                }
                restored = restore_training(
                    resumable.checkpoint, schedule, self.opt, self.gens, self.ctx.device
                )
                self.step, self.epoch, self.pos, self.partial = restored
                training["epochs"] = list(resumable.checkpoint.meta["epoch_records"])
                info["resumed_at_step"] = self.step
            training.update(info)
        self.ctx.log.event("train_start", **info)
        resumed = resumable is not None and resumable.checkpoint is not None
        self.ctx.clock.say(
            f"train: {plan.n_train} images, {plan.steps_per_epoch} steps/epoch x {self.cfg.epochs} epochs, "
            f"res {self.cfg.resolutions}, budget {plan.train_budget_s:.0f}s"
            + (f", resumed at step {self.step}/{plan.total_steps}" if resumed else "")
        )
        self.start_step = self.step

    def run_epochs(self) -> None:
        """Train from the current position until the schedule ends or a stop condition holds."""
        self.ctx.net.train()
        start_epoch, start_pos = self.epoch, self.pos
        self.epoch_gen_state = self.gens.permutation.get_state()
        for epoch in range(start_epoch, self.cfg.epochs):
            self.epoch = epoch
            # a checkpoint taken inside this epoch redraws the epoch's permutation from this state
            self.epoch_gen_state = self.gens.permutation.get_state()
            first = start_pos if epoch == start_epoch else 0
            if not self._run_epoch(first):
                break

    def _should_stop(self, train_elapsed: float) -> bool:
        """Set :attr:`stop_reason` (and :attr:`paused`) when no further step may run in this call."""
        resumable, sched = self.resumable, self.sched
        if resumable is not None:
            limit = resumable.stop_after_steps
            if limit is not None and self.step - self.start_step >= limit:
                self.stop_reason, self.paused = f"--stop-after-steps {limit} reached", True
            elif train_elapsed >= self.plan.train_budget_s:
                self.stop_reason, self.paused = "time budget of this call reached (resumable run)", True
        elif self.step >= sched.warmup and sched.progress(self.step, train_elapsed) >= 1.0:
            self.stop_reason = "time budget: cosine schedule completed on the wall clock"
        elif train_elapsed >= self.plan.train_budget_s:
            self.stop_reason = "time budget exhausted during warm-up"
        return self.stop_reason is not None

    def _sandwich_step(self, idx: Tensor, resolution: int, loss_sum: Tensor) -> None:
        """One optimiser step: largest on the labels, smallest + random students on its soft outputs."""
        ctx, cfg, net = self.ctx, self.cfg, self.ctx.net
        x = augment(ctx.images[idx], resolution, cfg, self.gens.augment)
        y = ctx.labels[idx]
        students = [self.smallest] + [
            ctx.space.sample(self.gens.sampler) for _ in range(cfg.n_random_subnets)
        ]
        self.opt.zero_grad(set_to_none=True)
        set_active(net, self.largest)
        with ctx.autocast():
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        loss.backward()  # type: ignore[no-untyped-call]
        teacher = F.softmax(logits.detach().float(), dim=1)
        del logits
        loss_sum[0] += loss.detach()
        for arch in students:
            set_active(net, arch)
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
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip_norm)
        self.opt.step()

    def _run_epoch(self, first: int) -> bool:
        """The steps of :attr:`epoch` from index ``first``; whether the next epoch may follow."""
        ctx, cfg, dev = self.ctx, self.cfg, self.ctx.device
        spe, bsz = self.plan.steps_per_epoch, cfg.batch_size
        t_ep = time.monotonic()
        perm = ctx.train_idx[torch.randperm(self.plan.n_train, generator=self.gens.permutation).to(dev)]
        loss_sum = torch.zeros(2, device=dev)
        n_steps, carried_s = 0, 0.0
        if first > 0:  # resumed inside this epoch
            carried_s = float(self.partial["seconds"])
            loss_sum = torch.tensor(self.partial["loss_sum"], dtype=torch.float32, device=dev)
            n_steps = int(self.partial["steps"])
        self.pos = first
        lr = 0.0
        for s in range(first, spe):
            train_elapsed = self.elapsed()
            if self._should_stop(train_elapsed):
                break
            lr = self.sched.lr(self.step, train_elapsed)
            for g in self.opt.param_groups:
                g["lr"] = lr
            resolution = cfg.resolutions[self.step % len(cfg.resolutions)]
            self._sandwich_step(perm[s * bsz : (s + 1) * bsz], resolution, loss_sum)
            self.step += 1
            n_steps += 1
            self.pos = s + 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        ep_time = time.monotonic() - t_ep + carried_s
        losses: list[float] = (loss_sum / max(1, n_steps)).tolist()
        finite = all(math.isfinite(v) for v in losses)
        if self.resumable is not None and self.pos < spe:
            # paused inside the epoch: its sums go into the checkpoint, and the call that completes
            # the epoch records it (so each epoch is recorded once, whole)
            self.partial = {"loss_sum": loss_sum.tolist(), "steps": n_steps, "seconds": ep_time}
            if not finite:
                self.stop_reason, self.paused = "non-finite loss", False
            return False
        if n_steps:
            self._record_epoch(n_steps, lr, losses, ep_time)
        if not finite:
            self.stop_reason = "non-finite loss"
        return self.stop_reason is None

    def _record_epoch(self, n_steps: int, lr: float, losses: list[float], ep_time: float) -> None:
        """Append the epoch's record (with a learning-curve check every ``eval_every_epochs``); log it."""
        ctx, cfg, clock = self.ctx, self.cfg, self.ctx.clock
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "steps": n_steps,
            "global_step": self.step,
            "lr": round(lr, 6),
            "loss_largest": round(losses[0], 5),
            "loss_students": round(losses[1], 5),
            "epoch_s": round(ep_time, 2),
            "s_per_step": round(ep_time / max(1, n_steps), 4),
            "elapsed_s": round(clock.elapsed(), 1),
            "progress": round(min(1.0, self.sched.progress(self.step, self.elapsed())), 4),
        }
        check: dict[str, float] | None = None
        if cfg.eval_every_epochs > 0 and (self.epoch + 1) % cfg.eval_every_epochs == 0:
            check = record["check"] = quick_check(ctx)
            ctx.net.train()
        self.metrics["training"]["epochs"].append(record)
        ctx.log.event("epoch", **record)
        check_txt = " " + " ".join(f"{k}={v:.1f}" for k, v in check.items()) if check else ""
        clock.say(
            f"ep {self.epoch + 1}/{cfg.epochs} lr {lr:.4f} L {losses[0]:.3f} KD {losses[1]:.3f} "
            f"{ep_time:.1f}s ({ep_time / max(1, n_steps):.3f}s/step) "
            f"p={record['progress']:.2f}{check_txt}"
        )

    def finish(self) -> None:
        """Record where training ended (steps, epochs, why) in the metrics and the log."""
        plan, training = self.plan, self.metrics["training"]
        training.update(
            {
                "steps_done": self.step,
                "epochs_done": round(self.step / plan.steps_per_epoch, 2),
                "stopped_early": self.step < plan.total_steps,
                "stop_reason": self.stop_reason,
                "train_s": round(self.elapsed(), 1),
            }
        )
        if self.resumable is not None:
            training["paused"] = self.paused
        if self.step < plan.total_steps:
            self.ctx.clock.say(
                f"train: stopped early after {self.step}/{plan.total_steps} steps ({self.stop_reason})"
            )
        self.ctx.log.event("train_end", **{k: v for k, v in training.items() if k != "epochs"})

    def _checkpoint_meta(
        self, resumable: Resumable, opt_meta: dict[str, Any], rng_tensors: Mapping[str, Tensor]
    ) -> dict[str, Any]:
        """``checkpoint.json`` of the current position (files and their hashes are added on writing)."""
        cfg, dev, plan = self.cfg, self.ctx.device, self.plan
        previous_calls = list(resumable.checkpoint.meta["calls"]) if resumable.checkpoint else []
        this_call = {
            "call": len(previous_calls) + 1,
            "start_step": self.start_step,
            "end_step": self.step,
            "train_s": self.metrics["training"]["train_s"],
            "stop_reason": self.stop_reason,
            "budget_s": self.ctx.budget_s,
            "device": str(dev),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        calls = [*previous_calls, this_call]
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "supernet": SUPERNET_NAME,
            "global_step": self.step,
            "epoch": self.epoch,  # 0-based index of the epoch the next step belongs to
            "step_in_epoch": self.pos,
            "epoch_partial": self.partial,
            "schedule": {
                "total_steps": plan.total_steps,
                "steps_per_epoch": plan.steps_per_epoch,
                "warmup_steps": self.sched.warmup,
                "planned_epochs": cfg.epochs,
                "complete": self.step >= plan.total_steps,
                "rule": "warm-up + cosine over total_steps; step-based in every call of a resumable run",
            },
            "epoch_records": self.metrics["training"]["epochs"],
            "config": cfg.to_dict(),
            "device_type": dev.type,
            "rng": {
                "python_global": py_state_to_json(random.getstate()),
                "numpy_global": numpy_state_to_json(),
                "python_sampler": py_state_to_json(self.gens.sampler.getstate()),
                "tensors": sorted(rng_tensors),  # in the "rng" safetensors shard
            },
            "optimizer": opt_meta,
            **resumable.run_info,
            "calls": calls,
            "timings": {"train_s_all_calls": round(sum(float(c["train_s"]) for c in calls), 1)},
        }

    def save_checkpoint(self, resumable: Resumable) -> None:
        """Write this call's checkpoint into ``resumable.checkpoint_dir`` (not after a non-finite loss)."""
        ctx, clock, dev = self.ctx, self.ctx.clock, self.ctx.device
        if resumable.checkpoint_dir is None:
            return
        if self.stop_reason == "non-finite loss":
            # the weights are no longer finite: keep the previous checkpoint as the one to resume
            self.metrics["warnings"].append("no checkpoint written: non-finite loss")
            clock.say("train: no checkpoint written (non-finite loss)")
            return
        if not self.paused:  # the schedule is complete: the position is the end of the last epoch
            self.epoch, self.pos = self.cfg.epochs, 0
            self.epoch_gen_state = self.gens.permutation.get_state()
            self.partial = _no_partial()
        elif self.pos == 0:  # paused before the epoch's first step
            self.partial = _no_partial()
        t_ck = clock.elapsed()
        rng_tensors = {
            "torch_cpu": torch.get_rng_state(),
            "cpu_gen_epoch_start": self.epoch_gen_state,
            "dev_gen": self.gens.augment.get_state(),
        }
        if dev.type == "cuda":
            rng_tensors["torch_cuda"] = torch.cuda.get_rng_state(dev)
        opt_tensors, opt_meta = optimizer_state_to_files(self.opt)
        model_tensors = model_state_to_files(ctx.net)
        meta = self._checkpoint_meta(resumable, opt_meta, rng_tensors)
        groups = {"model": model_tensors, "optimizer": opt_tensors, "rng": rng_tensors}
        folder = write_checkpoint(resumable.checkpoint_dir, groups, meta)
        total = self.plan.total_steps
        seconds = round(clock.elapsed() - t_ck, 1)
        self.metrics["training"]["checkpoint"] = {"folder": str(folder), "seconds": seconds}
        ctx.log.event("checkpoint", folder=str(folder), global_step=self.step, complete=self.step >= total)
        clock.say(
            f"train: checkpoint at step {self.step}/{total} -> {folder} ({clock.elapsed() - t_ck:.1f}s)"
        )


def train(ctx: Context, metrics: dict[str, Any], resumable: Resumable | None = None) -> None:
    """Sandwich-rule training with in-place distillation (stage 2 of the pipeline).

    ``resumable`` (``--checkpoint-dir`` / ``--resume``) changes three things: the cosine runs over
    the planned steps alone (one schedule across all calls; the clock only ends a call), a
    checkpoint's state is restored before the first step, and one is written when the call stops.
    Without it the run is the time-aware single call it always was.
    """
    trainer = _Trainer(ctx, metrics, resumable)
    trainer.start()
    trainer.run_epochs()
    trainer.finish()
    if resumable is not None:
        trainer.save_checkpoint(resumable)
