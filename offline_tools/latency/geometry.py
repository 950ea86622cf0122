"""Operators and network geometry of the OFA MobileNetV3 super-network (torch-free).

An :class:`OperatorSpec` is one operator a sub-network can contain, named by its OFA look-up-table
key; :class:`MobileNetV3Geometry` knows the channel widths, strides and block types, so it lists
the operators of one sub-network (:meth:`MobileNetV3Geometry.operators`) or of a whole search
space (:meth:`MobileNetV3Geometry.space_operators`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from dynamic_ofa_ros.arch import BLOCKS_PER_STAGE, N_STAGES, SearchSpace, SubnetConfig
from offline_tools.errors import LatencyTableError

__all__ = [
    "OPERATOR_KINDS",
    "MobileNetV3Geometry",
    "OperatorSpec",
    "cached_operator_keys",
    "make_divisible",
]

OPERATOR_KINDS: tuple[str, ...] = ("Conv", "expanded_conv", "Conv_1", "AvgPool2D", "Conv_2", "Logits")
"""Operator kinds of OFA's MobileNetV3 look-up tables, in network order."""

_BLOCK_FIELDS = ("expand", "kernel", "stride", "idskip", "se", "hs")


@dataclass(frozen=True)
class OperatorSpec:
    """One operator of the MobileNetV3 space, identified by its OFA key.

    ``input_shape``/``output_shape`` are ``(H, W, C)``, except the ``Logits`` output which is
    ``(n_classes,)``. The block fields (``expand`` = middle channels, ``kernel``, ``stride``,
    ``idskip``, ``se``, ``hs``) are only meaningful for ``expanded_conv``.
    """

    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    expand: int = 0
    kernel: int = 0
    stride: int = 0
    idskip: int = 0
    se: int = 0
    hs: int = 0

    @property
    def key(self) -> str:
        """The OFA look-up-table key of this operator."""
        parts = [
            self.kind,
            "input:" + "x".join(map(str, self.input_shape)),
            "output:" + "x".join(map(str, self.output_shape)),
        ]
        if self.kind == "expanded_conv":
            parts += [f"{name}:{getattr(self, name)}" for name in _BLOCK_FIELDS]
        return "-".join(parts)

    @classmethod
    def from_key(cls, key: str) -> OperatorSpec:
        """Parse an OFA key; raise :class:`LatencyTableError` if it is not a MobileNetV3 operator key."""
        kind, _, rest = key.partition("-")
        if kind not in OPERATOR_KINDS or not rest:
            raise LatencyTableError(
                f"{key!r} is not an OFA MobileNetV3 operator key (expected one of"
                f" {', '.join(OPERATOR_KINDS)} followed by -input:HxWxC-output:HxWxC...)"
            )
        fields = _key_fields(key, rest)
        try:
            shape_in = tuple(int(v) for v in fields.pop("input").split("x"))
            shape_out = tuple(int(v) for v in fields.pop("output").split("x"))
            block = {name: int(fields.pop(name)) for name in _BLOCK_FIELDS if name in fields}
        except (KeyError, ValueError) as exc:
            raise LatencyTableError(f"operator key {key!r}: missing or non-integer field ({exc})") from exc
        if fields:
            raise LatencyTableError(f"operator key {key!r}: unknown fields {sorted(fields)}")
        if kind == "expanded_conv" and len(block) != len(_BLOCK_FIELDS):
            raise LatencyTableError(
                f"operator key {key!r}: an expanded_conv key needs expand, kernel, stride, idskip, se and hs"
            )
        if kind != "expanded_conv" and block:
            raise LatencyTableError(f"operator key {key!r}: only expanded_conv keys have block fields")
        spec = cls(kind=kind, input_shape=shape_in, output_shape=shape_out, **block)
        if spec.key != key:
            raise LatencyTableError(f"operator key {key!r} is not in canonical form (expected {spec.key!r})")
        return spec


def _key_fields(key: str, rest: str) -> dict[str, str]:
    """The ``name:value`` fields after the kind of an operator key, each name once."""
    fields: dict[str, str] = {}
    for part in rest.split("-"):
        name, sep, value = part.partition(":")
        if not sep or name in fields:
            raise LatencyTableError(f"operator key {key!r}: malformed field {part!r}")
        fields[name] = value
    return fields


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` the way OFA/TF MobileNet do (never below 90 %).

    The same rounding as ``dynamic_ofa_ros.ofa_compat.make_divisible``, without importing ``ofa``
    (and torch), so that reading and predicting with a table stays torch-free.
    """
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


@dataclass(frozen=True)
class MobileNetV3Geometry:
    """Channel widths, strides and block types of the OFA MobileNetV3 super-network.

    Defaults describe ``ofa_mbv3_d234_e346_k357_w1.2`` (``width_mult=1.2``, 1000 classes).
    """

    width_mult: float = 1.2
    n_classes: int = 1000
    stem_channels: int = field(init=False)
    first_block_channels: int = field(init=False)
    stage_channels: tuple[int, ...] = field(init=False)
    final_expand_channels: int = field(init=False)
    last_channels: int = field(init=False)
    stage_strides: tuple[int, ...] = (2, 2, 2, 1, 2)
    stage_hswish: tuple[int, ...] = (0, 0, 1, 1, 1)
    stage_se: tuple[int, ...] = (0, 1, 0, 1, 1)

    def __post_init__(self) -> None:
        if not self.width_mult > 0:
            raise LatencyTableError(f"width_mult={self.width_mult} must be positive")
        base = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
        widths = [make_divisible(b * self.width_mult) for b in base]
        object.__setattr__(self, "stem_channels", widths[0])
        object.__setattr__(self, "first_block_channels", widths[1])
        object.__setattr__(self, "stage_channels", tuple(widths[2:7]))
        object.__setattr__(self, "final_expand_channels", widths[7])
        object.__setattr__(self, "last_channels", widths[8])

    def block_spec(
        self, stage: int, index: int, in_channels: int, size: int, ks: int, e: float
    ) -> OperatorSpec:
        """The operator of block ``index`` (0..3) of ``stage`` for an input of ``size``, ``in_channels``."""
        out_channels = self.stage_channels[stage]
        stride = self.stage_strides[stage] if index == 0 else 1
        out_size = (size - 1) // stride + 1
        return OperatorSpec(
            kind="expanded_conv",
            input_shape=(size, size, in_channels),
            output_shape=(out_size, out_size, out_channels),
            expand=make_divisible(round(in_channels * e)),
            kernel=ks,
            stride=stride,
            idskip=int(stride == 1 and in_channels == out_channels),
            se=self.stage_se[stage],
            hs=self.stage_hswish[stage],
        )

    def stem_specs(self, resolution: int) -> tuple[OperatorSpec, OperatorSpec]:
        """The first convolution and the fixed first block at ``resolution``."""
        size = (resolution + 1) // 2
        conv = OperatorSpec("Conv", (resolution, resolution, 3), (size, size, self.stem_channels))
        c = self.stem_channels
        first = OperatorSpec(
            kind="expanded_conv",
            input_shape=(size, size, c),
            output_shape=(size, size, self.first_block_channels),
            expand=c,
            kernel=3,
            stride=1,
            idskip=int(c == self.first_block_channels),
            se=0,
            hs=0,
        )
        return conv, first

    def head_specs(self, size: int) -> tuple[OperatorSpec, ...]:
        """``Conv_1``, ``AvgPool2D``, ``Conv_2`` and ``Logits`` for a final feature map of ``size``."""
        c_in, c_fe, c_last = self.stage_channels[-1], self.final_expand_channels, self.last_channels
        return (
            OperatorSpec("Conv_1", (size, size, c_in), (size, size, c_fe)),
            OperatorSpec("AvgPool2D", (size, size, c_fe), (1, 1, c_fe)),
            OperatorSpec("Conv_2", (1, 1, c_fe), (1, 1, c_last)),
            OperatorSpec("Logits", (1, 1, c_last), (self.n_classes,)),
        )

    @staticmethod
    def stage_sizes(resolution: int, strides: Sequence[int]) -> list[int]:
        """Input feature-map size of each stage (after the stem), given the stage strides."""
        size = (resolution + 1) // 2
        sizes = []
        for stride in strides:
            sizes.append(size)
            size = (size - 1) // stride + 1
        return [*sizes, size]

    def operators(self, cfg: SubnetConfig) -> list[OperatorSpec]:
        """Every operator of sub-network ``cfg``, in execution order."""
        conv, first = self.stem_specs(cfg.resolution)
        ops = [conv, first]
        size = first.output_shape[0]
        channels = self.first_block_channels
        for stage, depth in enumerate(cfg.d):
            for index in range(depth):
                block = stage * BLOCKS_PER_STAGE + index
                spec = self.block_spec(stage, index, channels, size, cfg.ks[block], cfg.e[block])
                ops.append(spec)
                size, channels = spec.output_shape[0], spec.output_shape[2]
        ops.extend(self.head_specs(size))
        return ops

    def space_operators(self, resolution: int, space: SearchSpace | None = None) -> list[OperatorSpec]:
        """Every distinct operator any sub-network of ``space`` can contain at ``resolution``."""
        space = space or SearchSpace()
        conv, first = self.stem_specs(resolution)
        ops = [conv, first]
        sizes = self.stage_sizes(resolution, self.stage_strides)
        channels = self.first_block_channels
        for stage in range(N_STAGES):
            indices = [0, 1] if max(space.d_choices) > 1 else [0]
            for index in indices:
                in_channels = channels if index == 0 else self.stage_channels[stage]
                size = sizes[stage] if index == 0 else sizes[stage + 1]
                ops.extend(
                    self.block_spec(stage, index, in_channels, size, ks, e)
                    for ks in space.ks_choices
                    for e in space.e_choices
                )
            channels = self.stage_channels[stage]
        ops.extend(self.head_specs(sizes[-1]))
        unique: dict[str, OperatorSpec] = {}
        for op in ops:
            unique.setdefault(op.key, op)
        return list(unique.values())


@functools.lru_cache(maxsize=4096)
def cached_operator_keys(geometry: MobileNetV3Geometry, cfg: SubnetConfig) -> tuple[str, ...]:
    """The operator keys of ``cfg`` in execution order, memoised (prediction is called in hot loops)."""
    return tuple(op.key for op in geometry.operators(cfg))
