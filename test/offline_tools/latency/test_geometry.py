"""Tests of offline_tools.latency.geometry: operator keys of a sub-network and of the search space."""

from __future__ import annotations

import pytest

from dynamic_ofa_ros.arch import SubnetConfig
from offline_tools.errors import LatencyTableError
from offline_tools.latency.geometry import MobileNetV3Geometry, OperatorSpec, make_divisible
from offline_tools.latency.table import LatencyTable


def test_space_has_96_operators_per_resolution_with_ofa_key_format() -> None:
    geometry = MobileNetV3Geometry()
    ops = geometry.space_operators(224)
    assert len(ops) == 96
    keys = {op.key for op in ops}
    assert (
        "expanded_conv-input:56x56x32-output:28x28x48-expand:192-kernel:5-stride:2-idskip:0-se:1-hs:0" in keys
    )
    assert "Conv-input:224x224x3-output:112x112x24" in keys
    assert "Logits-input:1x1x1536-output:1000" in keys
    for op in ops:
        assert OperatorSpec.from_key(op.key) == op


def test_operator_keys_follow_the_architecture() -> None:
    table = LatencyTable({160: {}}, name="empty")
    cfg = SubnetConfig(resolution=160, ks=(7,) * 20, e=(4,) * 20, d=(2, 3, 4, 2, 3))
    keys = table.operator_keys(cfg)
    assert len(keys) == 2 + sum(cfg.d) + 4
    assert keys[0] == "Conv-input:160x160x3-output:80x80x24"
    assert (
        keys[1]
        == "expanded_conv-input:80x80x24-output:80x80x24-expand:24-kernel:3-stride:1-idskip:1-se:0-hs:0"
    )
    assert keys[2].startswith(
        "expanded_conv-input:80x80x24-output:40x40x32-expand:96-kernel:7-stride:2-idskip:0"
    )
    assert keys[-4] == "Conv_1-input:5x5x192-output:5x5x1152"
    # skipped blocks' ks/e do not change the keys
    other = SubnetConfig(resolution=160, ks=cfg.ks[:3] + (3,) + cfg.ks[4:], e=cfg.e, d=cfg.d)
    assert table.operator_keys(other) == keys


def test_malformed_keys_are_rejected() -> None:
    for bad in ("Foo-input:1x1x1-output:1x1x1", "Conv-input:axbxc-output:1x1x1", "expanded_conv-input:8x8x8"):
        with pytest.raises(LatencyTableError):
            OperatorSpec.from_key(bad)


def test_make_divisible_matches_ofa_widths() -> None:
    # width 1.2: 16 -> 24 (stem), 24 -> 32, 40 -> 48, 80 -> 96, 112 -> 136, 160 -> 192, 960 -> 1152
    widths = [make_divisible(c * 1.2) for c in (16, 24, 40, 80, 112, 160, 960, 1280)]
    assert widths == [24, 32, 48, 96, 136, 192, 1152, 1536]
    assert make_divisible(3) == 8  # never below the divisor
