"""Batch-norm statistics of sub-networks: extract, collect, apply, calibrate; and MAC counting.

A level's BN statistics are the ``running_mean``/``running_var`` of every
``BatchNorm2d`` of its *extracted* sub-network (``get_active_subnet``), keyed
``"<module path>.running_mean"`` / ``"<module path>.running_var"`` with module paths
as in that sub-network (``first_conv.bn``, ``blocks.3.conv.depth_conv.bn``,
``final_expand_layer.bn`` ...). They are float32, computed once offline by
:func:`calibrate_bn` and applied at start-up by :func:`load_bn_state`.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from dynamic_ofa_ros.arch import BLOCKS_PER_STAGE, SubnetConfig
from dynamic_ofa_ros.errors import ArchitectureError, LevelTableError
from dynamic_ofa_ros.ofa_compat import is_ofa_mbv3, make_divisible, set_active

__all__ = [
    "bn_state",
    "calibrate_bn",
    "count_macs",
    "expected_bn_shapes",
    "extract_subnet",
    "load_bn_into_supernet",
    "load_bn_state",
    "supernet_bn_targets",
]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_extract_lock = threading.Lock()


def extract_subnet(supernet_net: nn.Module, config: SubnetConfig) -> nn.Module:
    """An independent copy of ``config``'s sub-network (weights copied, eval mode, same device).

    Uses ``set_active_subnet`` + ``get_active_subnet(preserve_weight=True)``; the
    super-network's active sub-network is restored afterwards (serialised by a lock,
    so concurrent callers do not interfere).
    """
    if not is_ofa_mbv3(supernet_net):
        raise ArchitectureError(f"extract_subnet needs an OFAMobileNetV3, got {type(supernet_net).__name__}")
    ofa_net: Any = supernet_net
    with _extract_lock:
        saved = _active_state(ofa_net)
        try:
            set_active(supernet_net, config)
            with torch.no_grad():
                sub: nn.Module = ofa_net.get_active_subnet(preserve_weight=True)
        finally:
            _restore_active_state(ofa_net, saved)
    device = next(supernet_net.parameters()).device
    return sub.to(device).eval()


# `net` is an OFAMobileNetV3: `ofa` is untyped, so its elastic attributes are Any.
def _active_state(net: Any) -> tuple[list[int], list[int], list[int]]:  # noqa: ANN401
    ks = [int(block.conv.active_kernel_size) for block in net.blocks[1:]]
    e = [int(block.conv.active_expand_ratio) for block in net.blocks[1:]]
    return ks, e, [int(d) for d in net.runtime_depth]


def _restore_active_state(net: Any, saved: tuple[list[int], list[int], list[int]]) -> None:  # noqa: ANN401
    ks, e, d = saved
    net.set_active_subnet(ks=ks, e=e, d=d)


def expected_bn_shapes(supernet_net: nn.Module, config: SubnetConfig) -> dict[str, tuple[int, ...]]:
    """The BN state keys and shapes the extracted sub-network of ``config`` has, without extracting it.

    Computed from the super-network's layer widths and OFA's channel rule
    (``make_divisible(round(in_channels * e), 8)`` for the expanded width); equal to
    ``{k: v.shape for k, v in bn_state(extract_subnet(net, config)).items()}``.
    """
    if not is_ofa_mbv3(supernet_net):
        raise ArchitectureError(
            f"expected_bn_shapes needs an OFAMobileNetV3, got {type(supernet_net).__name__}"
        )
    net: Any = supernet_net
    shapes: dict[str, tuple[int, ...]] = {}

    def add(path: str, channels: int) -> None:
        shapes[f"{path}.running_mean"] = (channels,)
        shapes[f"{path}.running_var"] = (channels,)

    for name, module in net.first_conv.named_modules():
        if isinstance(module, _BN_TYPES):
            add(f"first_conv.{name}", module.num_features)
    for name, module in net.blocks[0].named_modules():
        if isinstance(module, _BN_TYPES):
            add(f"blocks.0.{name}", module.num_features)
    out_index = 1
    for block in config.active_blocks():
        layer = net.blocks[1 + block].conv
        in_channels = max(layer.in_channel_list)
        out_channels = max(layer.out_channel_list)
        mid = make_divisible(round(in_channels * config.e[block]), 8)
        prefix = f"blocks.{out_index}.conv"
        if layer.inverted_bottleneck is not None:
            add(f"{prefix}.inverted_bottleneck.bn", mid)
        add(f"{prefix}.depth_conv.bn", mid)
        add(f"{prefix}.point_linear.bn", out_channels)
        out_index += 1
    for name, module in net.final_expand_layer.named_modules():
        if isinstance(module, _BN_TYPES):
            add(f"final_expand_layer.{name}", module.num_features)
    for name, module in net.feature_mix_layer.named_modules():
        if isinstance(module, _BN_TYPES):
            add(f"feature_mix_layer.{name}", module.num_features)
    if len(net.block_group_info) * BLOCKS_PER_STAGE != len(net.blocks) - 1:
        raise ArchitectureError("unexpected super-network layout: stages are not 4 blocks each")
    return shapes


def bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``running_mean``/``running_var`` of every BN layer of ``module`` (float32 CPU copies)."""
    state: dict[str, torch.Tensor] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, _BN_TYPES):
            if sub.running_mean is None or sub.running_var is None:
                raise LevelTableError(f"BN layer {name!r} does not track running statistics")
            state[f"{name}.running_mean"] = sub.running_mean.detach().to("cpu", torch.float32).clone()
            state[f"{name}.running_var"] = sub.running_var.detach().to("cpu", torch.float32).clone()
    return state


def load_bn_state(
    module: nn.Module, state: Mapping[str, torch.Tensor | np.ndarray], *, where: str = "BN statistics"
) -> None:
    """Copy ``state`` (from :func:`bn_state`, or a table's NumPy arrays) into ``module``'s BN layers.

    Every BN layer of ``module`` must get both tensors with the right shape, finite
    values and a non-negative variance, and ``state`` must hold nothing else;
    otherwise :class:`LevelTableError` names ``where`` and the layer, and ``module``
    is left unchanged (all-or-nothing). NumPy arrays (a table read without torch) become tensors here.
    """
    state = {k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v for k, v in state.items()}
    layers = {name: sub for name, sub in module.named_modules() if isinstance(sub, _BN_TYPES)}
    expected = {f"{n}.{s}" for n in layers for s in ("running_mean", "running_var")}
    missing = sorted(expected - set(state))
    extra = sorted(set(state) - expected)
    if missing:
        raise LevelTableError(
            f"{where}: no statistics for {missing[0]!r} ({len(missing)} of {len(expected)} missing); "
            "the BN file does not belong to this architecture: rebuild the table (dofa-levels calibrate)"
        )
    if extra:
        raise LevelTableError(
            f"{where}: statistics for {extra[0]!r}, which this architecture does not have "
            f"({len(extra)} unexpected); rebuild the table (dofa-levels calibrate)"
        )
    staged: list[tuple[torch.Tensor, torch.Tensor]] = []
    for name, layer in layers.items():
        for stat in ("running_mean", "running_var"):
            key = f"{name}.{stat}"
            value = state[key]
            target = getattr(layer, stat)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(target.shape):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise LevelTableError(
                    f"{where}: {key} has shape {shape}, the architecture needs {tuple(target.shape)}; "
                    "rebuild the table (dofa-levels calibrate)"
                )
            if not bool(torch.isfinite(value).all()):
                raise LevelTableError(f"{where}: {key} contains NaN or infinity; recalibrate this level")
            if stat == "running_var" and bool((value < 0).any()):
                raise LevelTableError(f"{where}: {key} has negative variances; recalibrate this level")
            staged.append((target, value))
    with torch.no_grad():
        for target, value in staged:
            target.copy_(value.to(device=target.device, dtype=target.dtype))


def calibrate_bn(
    module: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    max_images: int | None = None,
) -> int:
    """Recompute every BN layer's running statistics of ``module`` from ``batches``; returns images used.

    Like OFA's ``set_running_statistics``: statistics are reset and become the average
    of the per-batch statistics weighted by batch size (each batch's momentum is
    ``n_batch / n_seen_so_far``, i.e. a cumulative average, so a truncated last batch
    does not count more than its images); only the BN layers run in train mode
    (dropout etc. stay in eval), no gradients. Batches are preprocessed input
    tensors (N, 3, r, r) (see :func:`dynamic_ofa_ros.preprocess.to_input_batch`).
    ``max_images`` stops after that many images (the last batch is truncated). The
    module is back in eval mode with the original momenta afterwards.
    """
    layers = [sub for sub in module.modules() if isinstance(sub, _BN_TYPES)]
    if not layers:
        raise ArchitectureError("calibrate_bn: the module has no BatchNorm layers")
    device = next(module.parameters()).device
    momenta = [layer.momentum for layer in layers]
    was_training = module.training
    used = 0
    try:
        module.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.train()
        with torch.no_grad():
            for given in batches:
                if max_images is not None and used >= max_images:
                    break
                batch = given if max_images is None else given[: max_images - used]
                if batch.shape[0] == 0:
                    continue
                size = int(batch.shape[0])
                for layer in layers:
                    layer.momentum = size / (used + size)
                module(batch.to(device))
                used += size
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        module.train(was_training)
        if not was_training:
            module.eval()
    if used == 0:
        raise ArchitectureError("calibrate_bn: no images were given; pass at least one batch")
    return used


def count_macs(module: nn.Module, resolution: int) -> float:
    """Multiply-accumulates of one ``resolution``² image through ``module``, in millions.

    Counted with forward hooks on ``Conv2d`` (output elements × in-channels/groups ×
    kernel area) and ``Linear`` (in × out) layers, on a copy so ``module`` is untouched.
    """
    probe = copy.deepcopy(module).to("cpu").float().eval()
    total = [0]

    def conv_hook(layer: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        assert isinstance(layer, nn.Conv2d)
        kh, kw = layer.kernel_size
        total[0] += out.numel() * (layer.in_channels // layer.groups) * kh * kw

    def linear_hook(layer: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        assert isinstance(layer, nn.Linear)
        total[0] += out.numel() // layer.out_features * layer.in_features * layer.out_features

    handles = []
    for sub in probe.modules():
        if isinstance(sub, nn.Conv2d):
            handles.append(sub.register_forward_hook(conv_hook))
        elif isinstance(sub, nn.Linear):
            handles.append(sub.register_forward_hook(linear_hook))
    try:
        with torch.inference_mode():
            probe(torch.zeros(1, 3, int(resolution), int(resolution)))
    finally:
        for handle in handles:
            handle.remove()
    return total[0] / 1e6


def supernet_bn_targets(supernet_net: nn.Module, config: SubnetConfig) -> dict[str, tuple[str, int]]:
    """Map each BN key of ``config``'s extracted sub-network to ``(super-network layer path, channels)``.

    The super-network's dynamic BN layers use the first ``channels`` entries of their
    running statistics for the active sub-network (that is what ``get_active_subnet``
    copies), so a level's BN state can be written into the super-network with
    :func:`load_bn_into_supernet` (the reference design's switch).
    """
    net: Any = supernet_net
    targets: dict[str, tuple[str, int]] = {}
    shapes = expected_bn_shapes(supernet_net, config)
    static_prefixes = ("first_conv.", "blocks.0.", "final_expand_layer.", "feature_mix_layer.")
    block_of = {i + 1: 1 + b for i, b in enumerate(config.active_blocks())}
    for key, shape in shapes.items():
        layer = key.rsplit(".", 1)[0]
        if layer.startswith(static_prefixes):
            targets[key] = (layer, shape[0])
            continue
        _, sub_index, rest = layer.split(".", 2)  # blocks.<j>.conv.<part>.bn
        super_index = block_of[int(sub_index)]
        targets[key] = (f"blocks.{super_index}.{rest}.bn", shape[0])
    if len(net.blocks) != 1 + len(config.ks):
        raise ArchitectureError("unexpected super-network layout")
    return targets


def load_bn_into_supernet(
    supernet_net: nn.Module, config: SubnetConfig, state: Mapping[str, torch.Tensor]
) -> None:
    """Write a level's BN state (extracted-sub-network keys) into the super-network's dynamic BN layers."""
    modules = dict(supernet_net.named_modules())
    with torch.no_grad():
        for key, (path, channels) in supernet_bn_targets(supernet_net, config).items():
            layer = modules[path]
            stat = key.rsplit(".", 1)[1]
            target = getattr(layer, stat)
            target[:channels].copy_(
                state[key].to(device=target.device, dtype=target.dtype), non_blocking=True
            )
