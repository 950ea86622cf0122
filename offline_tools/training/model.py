"""The super-network to train: build (``ofa_compat``), initialise, 1x1 convolutions as matmuls, params."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamic_ofa_ros.ofa_compat import build_ofa_mbv3, dynamic_op_module
from offline_tools.training.config import TrainConfig

__all__ = [
    "PointwiseMatmulFunctional",
    "build_supernet",
    "init_weights",
    "param_groups",
    "pointwise_as_matmul",
    "round_to_fp16_",
]

_IntOrTuple = int | tuple[int, ...]


def build_supernet(cfg: TrainConfig) -> tuple[nn.Module, str]:
    """The OFA MobileNetV3 super-network (random weights) and what built it (recorded in the metrics)."""
    net = build_ofa_mbv3(
        n_classes=1000,
        width_mult=1.2,
        ks_list=(3, 5, 7),
        expand_ratio_list=(3, 4, 6),
        depth_list=(2, 3, 4),
        dropout_rate=cfg.dropout_rate,
    )
    source = "dynamic_ofa_ros.ofa_compat.build_ofa_mbv3"
    ofa_net: Any = net  # ofa is untyped
    if ofa_net.classifier.linear.out_features != 1000 or ofa_net.width_mult != 1.2:
        raise RuntimeError(f"{source}: expected the 1000-class width-1.2 OFAMobileNetV3")
    return net, source


def _zero_init_residual_bn(net: nn.Module) -> None:
    """Gamma = 0 in the last BN of every block with an identity shortcut (BigNAS)."""
    blocks: Any = getattr(net, "blocks", [])  # ofa's block list (untyped)
    for block in blocks:
        if getattr(block, "shortcut", None) is None:
            continue
        point_linear = getattr(block.conv, "point_linear", None)
        bn_mod = getattr(point_linear, "bn", None) if point_linear is not None else None
        bn = getattr(bn_mod, "bn", bn_mod)
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.zero_()


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
        _zero_init_residual_bn(net)


def _is_pointwise(
    weight: Tensor, stride: _IntOrTuple, padding: _IntOrTuple | str, dilation: _IntOrTuple, groups: int
) -> bool:
    def all_eq(v: _IntOrTuple, target: int) -> bool:
        return all(int(x) == target for x in (v if isinstance(v, tuple | list) else (v,)))

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

    def __getattr__(self, name: str) -> object:
        return getattr(F, name)

    @staticmethod
    def conv2d(
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None = None,
        stride: _IntOrTuple = 1,
        padding: _IntOrTuple | str = 0,
        dilation: _IntOrTuple = 1,
        groups: int = 1,
    ) -> Tensor:
        """``F.conv2d``, with 1x1 convolutions (stride 1, no padding, one group) as batched matmuls."""
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
    dynamic_op: Any = dynamic_op_module()  # ofa's module (untyped): its global F is swapped
    previous = dynamic_op.F
    dynamic_op.F = PointwiseMatmulFunctional()
    try:
        yield True
    finally:
        dynamic_op.F = previous


def param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv / linear weights only (not BN, biases, OFA's kernel-transform matrices).

    The dicts are ``torch.optim`` parameter groups (``params`` list + options).
    """
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


def round_to_fp16_(net: nn.Module) -> None:
    """Round every floating parameter/buffer to fp16 and back: train-time numbers = shipped weights."""
    with torch.no_grad():
        for t in list(net.parameters()) + list(net.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(torch.float16).to(t.dtype))
