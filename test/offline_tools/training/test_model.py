"""Tests of offline_tools.training.model: 1x1 convolutions as matmuls."""

from __future__ import annotations

import random

import torch

from dynamic_ofa_ros.arch import SearchSpace
from dynamic_ofa_ros.ofa_compat import dynamic_op_module, set_active
from offline_tools.training.model import pointwise_as_matmul


def test_pointwise_matmul_matches_cudnn_convolution(small_net: torch.nn.Module) -> None:
    net = small_net.train()
    arch = SearchSpace(resolutions=(64,)).sample(random.Random(1))
    set_active(net, arch)
    x = torch.randn(2, 3, 64, 64)
    results = []
    for enabled in (False, True):
        net.zero_grad()
        with pointwise_as_matmul(enabled):
            out = net(x)
        out.square().mean().backward()
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    (ref, ref_grads), (got, got_grads) = results
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert ref_grads.keys() == got_grads.keys()
    for key in ref_grads:
        torch.testing.assert_close(got_grads[key], ref_grads[key], rtol=1e-3, atol=1e-5)
    assert dynamic_op_module().F is torch.nn.functional  # restored
