"""Sub-network extraction, BN statistics (collect / apply / calibrate) and MAC counting."""

from __future__ import annotations

import random

import pytest
import torch

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.bn import (
    bn_state,
    calibrate_bn,
    count_macs,
    expected_bn_shapes,
    extract_subnet,
    load_bn_state,
)
from dynamic_ofa_ros.errors import ArchitectureError, LevelTableError
from dynamic_ofa_ros.supernet import Supernet

torch.set_num_threads(1)


def uniform(r: int, k: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=r, ks=(k,) * 20, e=(e,) * 20, d=(d,) * 5)


def test_extracted_subnet_matches_dynamic_supernet(rand: Supernet) -> None:
    cfg = rand.search_space().sample(random.Random(3))
    sub = extract_subnet(rand.net, cfg)
    assert not sub.training
    x = torch.randn(2, 3, cfg.resolution, cfg.resolution)
    rand.net.set_active_subnet(**cfg.ofa_kwargs())  # type: ignore[operator]
    with torch.inference_mode():
        dynamic = rand.net(x)
        static = sub(x)
    torch.testing.assert_close(static, dynamic, rtol=1e-4, atol=1e-4)
    # an independent copy: changing it leaves the super-network alone
    with torch.no_grad():
        next(sub.parameters()).add_(1.0)
    assert bn_state(sub).keys() == expected_bn_shapes(rand.net, cfg).keys()


def test_extract_restores_active_subnet(rand: Supernet) -> None:
    rand.net.set_active_subnet(ks=[5] * 20, e=[4] * 20, d=[3] * 5)  # type: ignore[operator]
    extract_subnet(rand.net, uniform(128, 3, 3, 2))
    blocks = rand.net.blocks  # type: ignore[union-attr]
    assert [b.conv.active_kernel_size for b in blocks[1:]] == [5] * 20  # type: ignore[union-attr,index]
    assert list(rand.net.runtime_depth) == [3] * 5  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(6))
def test_expected_bn_shapes_equal_extraction(rand: Supernet, seed: int) -> None:
    cfg = rand.search_space().sample(random.Random(seed))
    got = {k: tuple(v.shape) for k, v in bn_state(extract_subnet(rand.net, cfg)).items()}
    assert got == expected_bn_shapes(rand.net, cfg)


def test_bn_state_roundtrip_and_validation(rand: Supernet) -> None:
    small = extract_subnet(rand.net, uniform(128, 3, 3, 2))
    big = extract_subnet(rand.net, uniform(128, 7, 6, 4))
    state = {k: v + 0.5 for k, v in bn_state(small).items()}
    load_bn_state(small, state, where="level 1")
    assert all(torch.equal(bn_state(small)[k], v) for k, v in state.items())

    before = bn_state(big)
    with pytest.raises(LevelTableError, match=r"level 2: .*(no statistics for|shape)"):
        load_bn_state(big, state, where="level 2")
    assert all(torch.equal(bn_state(big)[k], v) for k, v in before.items()), "nothing may be half-applied"

    bad = dict(state)
    key = "blocks.1.conv.depth_conv.bn.running_var"
    bad[key] = torch.ones(5)
    with pytest.raises(
        LevelTableError, match=r"level 1: blocks\.1\.conv\.depth_conv\.bn\.running_var has shape \(5,\)"
    ):
        load_bn_state(small, bad, where="level 1")
    bad[key] = -state[key]
    with pytest.raises(LevelTableError, match="negative variances"):
        load_bn_state(small, bad, where="level 1")
    bad[key] = state[key].clone()
    bad[key][0] = float("nan")
    with pytest.raises(LevelTableError, match="NaN"):
        load_bn_state(small, bad, where="level 1")
    extra = dict(state)
    extra["blocks.99.conv.bn.running_mean"] = torch.zeros(3)
    with pytest.raises(LevelTableError, match="does not have"):
        load_bn_state(small, extra, where="level 1")


def test_calibrate_bn_is_cumulative_average(rand: Supernet) -> None:
    sub = extract_subnet(rand.net, uniform(128, 3, 3, 2))
    torch.manual_seed(0)
    batches = [torch.randn(4, 3, 128, 128) * 2 + 1 for _ in range(3)]
    used = calibrate_bn(sub, batches)
    assert used == 12
    assert not sub.training
    first = sub.first_conv.bn  # type: ignore[union-attr]
    assert first.momentum == 0.1  # restored
    # the first BN sees conv(x): its running mean is the average over all 12 images
    with torch.no_grad():
        conv_out = torch.cat([sub.first_conv.conv(b) for b in batches])  # type: ignore[operator,union-attr]
    torch.testing.assert_close(first.running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)

    # max_images truncates; an identical subset gives identical statistics
    used = calibrate_bn(sub, batches, max_images=6)
    assert used == 6
    with torch.no_grad():
        conv_out = torch.cat([sub.first_conv.conv(b) for b in batches])[:6]  # type: ignore[operator,union-attr]
    torch.testing.assert_close(first.running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)

    with pytest.raises(ArchitectureError, match="no images"):
        calibrate_bn(sub, [])


def test_count_macs(rand: Supernet) -> None:
    small = count_macs(extract_subnet(rand.net, uniform(128, 3, 3, 2)), 128)
    large = count_macs(extract_subnet(rand.net, uniform(224, 7, 6, 4)), 224)
    # conv stem alone: 24 channels * 3 * 3*3 * 64*64 outputs
    assert small > 24 * 27 * 64 * 64 / 1e6
    assert 50 < small < 100 and 700 < large < 1000  # OFA reports ~70 / ~850 MMACs for these corners
    assert large / small > 8
