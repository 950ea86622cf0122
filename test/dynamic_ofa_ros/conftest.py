"""Fixtures of the core's engine and classifier tests: a random super-network, a real 3-level table.

The table is built from the random super-network (accuracies meaningless) and profiled with a
few frames; its latencies are never asserted. Every fixture is built once per test module.
A module (or ``backends/conftest.py``) that defines a fixture of the same name uses its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.engine import LevelEngine
from dynamic_ofa_ros.levels import LevelTable, load_level_table, save_level_table
from dynamic_ofa_ros.supernet import Supernet, load_supernet
from dynamic_ofa_ros.table_builder import build_level_table

#: The table's levels: uniform sub-networks, from the smallest to the largest kernel/expand/depth.
LEVEL_CONFIGS = [
    SubnetConfig(resolution=r, ks=(k,) * 20, e=(e,) * 20, d=(d,) * 5)
    for r, k, e, d in ((128, 3, 3, 2), (144, 5, 4, 3), (160, 7, 6, 4))
]


@pytest.fixture(scope="module")
def rand() -> Supernet:
    """A random-weights super-network (deterministic)."""
    return load_supernet("random", allow_random=True)


@pytest.fixture(scope="module")
def table(rand: Supernet, tmp_path_factory: pytest.TempPathFactory) -> LevelTable:
    """The 3-level CPU table of :data:`LEVEL_CONFIGS`, saved and loaded back (BN file included)."""
    built = build_level_table(rand, LEVEL_CONFIGS, warmup=1, iterations=3, threads=1)
    path = save_level_table(built, tmp_path_factory.mktemp("levels") / "cpu.json", supernet=rand)
    return load_level_table(path, supernet=rand, expected_device="cpu")


@pytest.fixture(scope="module")
def engine(rand: Supernet, table: LevelTable) -> Iterator[LevelEngine]:
    """The torch engine of :func:`table` with one thread; torch's thread count restored afterwards."""
    threads = torch.get_num_threads()
    yield LevelEngine(rand, table, threads=1, warmup=1)
    torch.set_num_threads(threads)
