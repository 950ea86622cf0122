"""BN calibration + hold-out top-1 of sub-networks on the super-network; the measured accuracy data set.

:func:`measure` writes ``subnet_accuracy.json``: a structured sweep and seeded random sub-networks
(:func:`measurement_plan`), each with BN recalibrated on the first K calibration images and its
top-1 on the hold-out images, within the run's remaining time (flushed as it goes).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SUPERNET_NAME, SearchSpace, SubnetConfig
from dynamic_ofa_ros.bn import calibrate_bn
from dynamic_ofa_ros.ofa_compat import set_active
from dynamic_ofa_ros.timing import write_json
from offline_tools.training.config import ACCURACY_FILE, ACCURACY_FORMAT, SPLIT_FILE, TrainConfig
from offline_tools.training.context import Context
from offline_tools.training.data import eval_preprocess

__all__ = [
    "calibrate_and_eval",
    "calibration_batches",
    "measure",
    "measurement_plan",
    "quick_check",
    "reference_subnets",
]


def calibration_batches(idx: Tensor, bsz: int, n: int) -> list[Tensor]:
    """The first ``n`` of ``idx`` rounded down to whole batches (at least one, possibly partial, batch)."""
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
    set_active(net, arch)

    def calib_batches() -> Iterator[Tensor]:
        for chunk in calibration_batches(ctx.calib_idx, cfg.batch_size, n_calib):
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
    """Named sub-networks of the final evaluation: largest/smallest at the extreme resolutions, 3 random."""
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


def _uniform_sweep(space: SearchSpace, exclude: set[str]) -> list[SubnetConfig]:
    """Every uniform ks/e/d x resolution sub-network whose key is not in ``exclude``, without repeats."""
    sweep: list[SubnetConfig] = []
    keys = set(exclude)
    for d in space.d_choices:
        for k in space.ks_choices:
            for e in space.e_choices:
                for r in space.resolutions:
                    arch = SubnetConfig(r, (k,) * N_BLOCKS, (e,) * N_BLOCKS, (d,) * N_STAGES)
                    if arch.key() not in keys:
                        keys.add(arch.key())
                        sweep.append(arch)
    return sweep


def _random_subnets(space: SearchSpace, cfg: TrainConfig, exclude: set[str]) -> list[SubnetConfig]:
    """``cfg.measure_subnets`` distinct seeded random sub-networks not in ``exclude`` (bounded tries)."""
    rng = random.Random(cfg.seed + 1009)
    randoms: list[SubnetConfig] = []
    keys = set(exclude)
    tries = 0
    while len(randoms) < cfg.measure_subnets and tries < cfg.measure_subnets * 20 + 100:
        tries += 1
        arch = space.sample(rng)
        if arch.key() not in keys:
            keys.add(arch.key())
            randoms.append(arch)
    return randoms


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
    sweep = _uniform_sweep(space, seen) if cfg.measure_sweep == "full" else []
    randoms = _random_subnets(space, cfg, seen | {a.key() for a in sweep})
    # interleave the rest of the sweep with the random ones, so a run cut short keeps both kinds
    tagged = [((i + 1) / len(sweep), "sweep", a) for i, a in enumerate(sweep)]
    tagged += [((i + 1) / len(randoms), "random", a) for i, a in enumerate(randoms)]
    for _, kind, arch in sorted(tagged, key=lambda t: (t[0], t[1] == "sweep")):
        add(kind, arch)
    return plan


def _accuracy_header(ctx: Context, split_seed: int, planned: int) -> dict[str, Any]:
    cfg = ctx.cfg
    batches = calibration_batches(ctx.calib_idx, cfg.batch_size, cfg.measure_calib_images)
    return {
        "format": ACCURACY_FORMAT,
        "version": 1,
        "supernet": SUPERNET_NAME,
        "metric": "holdout_top1 in percent (0-100), ImageNet labels of the 10 Imagenette classes",
        "split_file": SPLIT_FILE,
        "split_seed": split_seed,
        "holdout_images": int(ctx.holdout_idx.numel()),
        "calibration_images": sum(int(b.numel()) for b in batches),
        "calibration": "first K names of split.json 'calibration'; BN reset + cumulative average",
        "preprocess": "bilinear antialiased resize 128->r of [0,1] RGB, ImageNet mean/std",
        "weights": "fp16-rounded (as shipped)",
        "numerics": "bf16 autocast" if ctx.device.type == "cuda" and cfg.bf16_autocast else "fp32",
        "device": str(ctx.device),
        "planned": planned,
    }


def measure(ctx: Context, out_dir: Path, metrics: dict[str, Any], split_seed: int) -> None:
    """Measure the plan's sub-networks until ``end_margin_s`` before the budget -> ``subnet_accuracy.json``.

    The file is rewritten every ``measure_flush_every`` sub-networks and at the end (``complete``
    false when the budget or an exception cut the plan short); ``metrics["measure"]`` summarises.
    """
    cfg, clock = ctx.cfg, ctx.clock
    plan = measurement_plan(ctx.space, cfg)
    deadline = ctx.budget_s - cfg.end_margin_s
    n_batches = len(calibration_batches(ctx.calib_idx, cfg.batch_size, cfg.measure_calib_images))
    header = _accuracy_header(ctx, split_seed, len(plan))
    results: list[dict[str, Any]] = []
    t0 = clock.elapsed()

    def flush(complete: bool) -> None:
        doc = {
            **header,
            "complete": complete,
            "measured": len(results),
            "seconds": round(clock.elapsed() - t0, 1),
        }
        doc["subnets"] = results
        write_json(out_dir / ACCURACY_FILE, doc)

    clock.say(
        f"measure: {len(plan)} sub-networks planned ({n_batches} calibration batches each), "
        f"{ctx.remaining_s():.0f}s left"
    )
    stopped = True
    try:
        for i, (kind, arch) in enumerate(plan):
            if clock.elapsed() >= deadline:
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
    secs = clock.elapsed() - t0
    metrics["measure"] = {
        "planned": len(plan),
        "measured": len(results),
        "stopped_early": stopped,
        "seconds": round(secs, 1),
        "s_per_subnet": round(secs / max(1, len(results)), 3),
    }
    ctx.log.event("measure_end", **metrics["measure"])
    clock.say(
        f"measure: {len(results)}/{len(plan)} sub-networks in {secs:.0f}s"
        + (" (stopped at the budget)" if stopped else "")
    )
