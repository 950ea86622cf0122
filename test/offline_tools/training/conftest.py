"""Fixtures of the training tests: a tiny Imagenette zip (7 images per class) and a tiny network."""

from __future__ import annotations

import collections
import zipfile
from pathlib import Path

import pytest
import torch

from offline_tools.training.config import TrainConfig
from offline_tools.training.model import build_supernet, init_weights

TINY_PER_CLASS = 7


@pytest.fixture(scope="session")
def tiny_zip(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    """The first 7 images of each class of Imagenette's ``train-128px-part1.zip``."""
    source = shared_dir / "datasets" / "imagenette" / "train-128px-part1.zip"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    target = tmp_path_factory.mktemp("data") / "tiny.zip"
    taken: collections.Counter[str] = collections.Counter()
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for member in sorted(src.namelist()):
            if not member.endswith(".JPEG"):
                continue
            wnid = member.split("/")[-2]
            if taken[wnid] < TINY_PER_CLASS:
                taken[wnid] += 1
                dst.writestr(member, src.read(member))
    return target


@pytest.fixture
def small_net() -> torch.nn.Module:
    """The super-network, seeded he_fout initialisation, no dropout, no zero-init."""
    net, _ = build_supernet(TrainConfig(dropout_rate=0.0))
    torch.manual_seed(0)
    init_weights(net, zero_init_residual_bn=False, bn_momentum=0.1)
    return net
