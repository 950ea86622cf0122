"""The OFA MobileNetV3 layout without torch: channel widths and a sub-network's BN state shapes.

:func:`dynamic_ofa_ros.bn.expected_bn_shapes` reads the widths from a built super-network;
:func:`bn_shapes` computes the same keys and shapes from the super-network's hyper-parameters
(``width_mult``, the expand-ratio choices) with OFA's own rules, so a level table can be
checked against a super-network that is known by its manifest but not loaded
(:class:`~dynamic_ofa_ros.supernet.SupernetSource`). The rules, from
``ofa.imagenet_classification.elastic_nn.networks.OFAMobileNetV3``:

* stage widths ``make_divisible(w * width_mult, 8)`` for the base widths
  16 (stem), 16 (first block), 24, 40, 80, 112, 160 (the five elastic stages), and the final
  expand layer's ``make_divisible(960 * width_mult, 8)``; the feature-mix layer has no BN;
* the first block is an MBConv of expand ratio 1 (no inverted bottleneck);
* an elastic block's expanded width is ``make_divisible(round(in_channels * e), 8)``, its
  inverted bottleneck exists unless the largest expand ratio is 1.

Tested equal to the torch version on the real super-network (``test_supernet_source.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from dynamic_ofa_ros.arch import BLOCKS_PER_STAGE, N_STAGES, SubnetConfig

__all__ = ["BASE_STAGE_WIDTHS", "bn_shapes", "make_divisible", "stage_widths"]

#: OFA MobileNetV3's base widths: stem, first block, 5 elastic stages, final expand, feature mix.
BASE_STAGE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
_DIVISOR = 8


def make_divisible(value: float, divisor: int = _DIVISOR) -> int:
    """OFA's channel rounding (``ofa.utils.make_divisible``): nearest multiple, never 10 % below."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def stage_widths(width_mult: float) -> tuple[int, ...]:
    """Output channels of the stem, the first block, the 5 stages and the final expand layer."""
    widths = [make_divisible(w * width_mult) for w in BASE_STAGE_WIDTHS[:-2]]
    return (*widths, make_divisible(BASE_STAGE_WIDTHS[-2] * width_mult))


def bn_shapes(
    config: SubnetConfig, *, width_mult: float, expand_ratio_list: Sequence[int]
) -> dict[str, tuple[int, ...]]:
    """The BN state keys and shapes of ``config``'s extracted sub-network (see the module docstring).

    Args:
        config: the sub-network.
        width_mult: the super-network's width multiplier (1.2 for ``ofa_mbv3_d234_e346_k357_w1.2``).
        expand_ratio_list: the super-network's expand-ratio choices.

    Returns:
        ``{"<module path>.running_mean" | ".running_var": (channels,)}``, as
        :func:`dynamic_ofa_ros.bn.expected_bn_shapes` gives for the built super-network.
    """
    widths = stage_widths(width_mult)
    stem, first_block, final_expand = widths[0], widths[1], widths[-1]
    stages = widths[2 : 2 + N_STAGES]
    shapes: dict[str, tuple[int, ...]] = {}

    def add(path: str, channels: int) -> None:
        shapes[f"{path}.running_mean"] = (channels,)
        shapes[f"{path}.running_var"] = (channels,)

    add("first_conv.bn", stem)
    add("blocks.0.conv.depth_conv.bn", stem)  # expand ratio 1: the depthwise conv keeps the width
    add("blocks.0.conv.point_linear.bn", first_block)
    bottleneck = max(expand_ratio_list) != 1
    out_index = 1
    for block in config.active_blocks():
        stage, position = divmod(block, BLOCKS_PER_STAGE)
        in_channels = first_block if stage == 0 else stages[stage - 1]
        if position > 0:
            in_channels = stages[stage]
        mid = make_divisible(round(in_channels * config.e[block]))
        prefix = f"blocks.{out_index}.conv"
        if bottleneck:
            add(f"{prefix}.inverted_bottleneck.bn", mid)
        add(f"{prefix}.depth_conv.bn", mid)
        add(f"{prefix}.point_linear.bn", stages[stage])
        out_index += 1
    add("final_expand_layer.bn", final_expand)
    return shapes
