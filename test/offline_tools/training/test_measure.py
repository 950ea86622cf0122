"""Tests of offline_tools.training.measure: BN calibration on the super-network, the measurement plan."""

from __future__ import annotations

import random

import torch

from dynamic_ofa_ros.arch import SearchSpace, SubnetConfig
from dynamic_ofa_ros.bn import calibrate_bn, extract_subnet
from offline_tools.training.config import TrainConfig
from offline_tools.training.context import Context
from offline_tools.training.data import eval_preprocess
from offline_tools.training.measure import calibrate_and_eval, measurement_plan


def test_calibration_on_the_supernet_equals_extracted_subnet(small_net: torch.nn.Module) -> None:
    net = small_net
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 40, 40), dtype=torch.uint8, generator=gen)
    cfg = TrainConfig(batch_size=8)
    arch = SearchSpace(resolutions=(48,)).sample(random.Random(3))
    ctx = Context(
        cfg=cfg,
        device=torch.device("cpu"),
        net=net,
        space=SearchSpace(resolutions=(48,)),
        images=images,
        labels=torch.zeros(24, dtype=torch.int64),
        train_idx=torch.arange(24),
        calib_idx=torch.arange(16),
        holdout_idx=torch.arange(16, 24),
        log=None,  # type: ignore[arg-type]
        budget_s=1e9,
    )
    calibrate_and_eval(ctx, arch, 16)
    with torch.no_grad():
        test_input = eval_preprocess(images[16:], 48)
        via_supernet = net(test_input)
        sub = extract_subnet(net, arch)
        for bn in sub.modules():  # forget the copied statistics
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.fill_(3.0)
        calibrate_bn(sub, [eval_preprocess(images[i : i + 8], 48) for i in (0, 8)])
        via_extracted = sub(test_input)
    torch.testing.assert_close(via_supernet, via_extracted, rtol=1e-4, atol=1e-4)


def test_measurement_plan_covers_extremes_and_is_unique() -> None:
    cfg = TrainConfig(measure_subnets=20, measure_sweep="full", resolutions=[96, 128])
    space = SearchSpace(resolutions=(96, 128))
    plan = measurement_plan(space, cfg)
    keys = [a.key() for _, a in plan]
    assert len(keys) == len(set(keys)) == 2 * 27 + 20
    assert (
        plan[0][1].key()
        == SubnetConfig(96, space.smallest().ks, space.smallest().e, space.smallest().d).key()
    )
    assert {a.key() for _, a in plan[:4]} == {
        SubnetConfig(r, c.ks, c.e, c.d).key() for r in (96, 128) for c in (space.smallest(), space.largest())
    }
    assert sum(kind == "random" for kind, _ in plan) == 20
    extremes = measurement_plan(space, TrainConfig(measure_subnets=0, measure_sweep="extremes"))
    assert [kind for kind, _ in extremes] == ["sweep"] * 4
    assert measurement_plan(space, TrainConfig(measure_subnets=0, measure_sweep="none")) == []
