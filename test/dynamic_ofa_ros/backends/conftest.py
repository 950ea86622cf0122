"""Fixtures of the backend tests: an isolated artefact cache, a small random-weights table, photos.

The table (two levels of a random super-network, profiled in torch) is built once per session;
:func:`for_backend` relabels it as profiled with a backend, which is all the engine checks.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.backends import installed
from dynamic_ofa_ros.backends.header import profiling_header
from dynamic_ofa_ros.image_input import decode_compressed
from dynamic_ofa_ros.levels import LevelTable, load_level_table, save_level_table
from dynamic_ofa_ros.supernet import Supernet, load_supernet
from dynamic_ofa_ros.table_builder import build_level_table

torch.set_num_threads(1)


def uniform(r: int, k: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=r, ks=(k,) * 20, e=(e,) * 20, d=(d,) * 5)


def _for_backend(table: LevelTable, backend: str) -> LevelTable:
    return dataclasses.replace(table, profiling={**table.profiling, **profiling_header(backend)})


@pytest.fixture(scope="session")
def for_backend() -> Callable[[LevelTable, str], LevelTable]:
    """``for_backend(table, backend)``: the table relabelled as profiled with ``backend`` on this CPU."""
    return _for_backend


@pytest.fixture(params=["openvino", "onnxruntime"])
def compiled_backend(request: pytest.FixtureRequest) -> str:
    """Each compiled backend; skipped (with the reason) where its runtime is not installed."""
    name = str(request.param)
    if not installed(name):
        pytest.skip(f"{name} is not installed")
    return name


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compiled")


@pytest.fixture(autouse=True)
def isolated_cache(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test's artefacts go to a session folder, never to the user's cache."""
    monkeypatch.setenv("DOFA_CACHE_DIR", str(cache_root))
    yield cache_root


@pytest.fixture(scope="session")
def rand() -> Supernet:
    return load_supernet("random", allow_random=True)


@pytest.fixture(scope="session")
def table(rand: Supernet, tmp_path_factory: pytest.TempPathFactory) -> LevelTable:
    configs = [uniform(128, 3, 3, 2), uniform(144, 5, 4, 2)]
    built = build_level_table(rand, configs, warmup=1, iterations=3, threads=1)
    path = save_level_table(built, tmp_path_factory.mktemp("levels") / "cpu.json", supernet=rand)
    return load_level_table(path, supernet=rand, expected_device="cpu")


@pytest.fixture(scope="session")
def photos(shared_dir: Path) -> list[np.ndarray]:
    """32 Imagenette validation photos (evenly picked), decoded to RGB; skipped when absent."""
    n = 32
    path = shared_dir / "datasets" / "imagenette" / "val-224px.zip"
    if not path.is_file():
        pytest.skip(f"{path} not found: real photos are needed for this test")
    with zipfile.ZipFile(path) as archive:
        names = sorted(x for x in archive.namelist() if x.lower().endswith((".jpeg", ".jpg", ".png")))
        picked = names[:: max(1, len(names) // n)][:n]
        return [decode_compressed(archive.read(name), fmt="jpeg") for name in picked]
