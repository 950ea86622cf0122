"""Tests of offline_tools.calibrate on a random-weight super-network with a few real photos."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import torch

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SubnetConfig
from dynamic_ofa_ros.backends import installed
from dynamic_ofa_ros.backends.header import profiling_header, table_backend
from dynamic_ofa_ros.engine import LevelEngine
from dynamic_ofa_ros.levels import Level, LevelTable, load_level_table, save_level_table
from dynamic_ofa_ros.supernet import Supernet, load_supernet
from offline_tools.calibrate import CalibrationError, calibrate_levels, default_backend
from offline_tools.datasets import ImageSet, open_image_source

torch.set_num_threads(1)


def uniform(resolution: int, ks: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=resolution, ks=(ks,) * N_BLOCKS, e=(e,) * N_BLOCKS, d=(d,) * N_STAGES)


CONFIGS = [uniform(128, 3, 3, 2), uniform(160, 5, 4, 3), uniform(192, 7, 6, 4)]


@pytest.fixture(scope="module")
def supernet() -> Supernet:
    return load_supernet("random", allow_random=True)


@pytest.fixture(scope="module")
def images(shared_dir: Path) -> ImageSet:
    path = shared_dir / "datasets" / "imagenette" / "val-128px.zip"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return ImageSet.load(open_image_source(path, sample=8, seed=0), progress=False)


def family_table() -> LevelTable:
    levels = [
        Level(level=i + 1, config=cfg, latency_ms=10.0 * (i + 1), predicted_accuracy=70.0 + 5 * i)
        for i, cfg in enumerate(CONFIGS)
    ]
    return LevelTable(
        device="test",
        device_name="test table",
        profiling={"latency_source": "made up"},
        supernet={"name": "x", "source": "none", "sha256": "0" * 64},
        calibration={},
        levels=levels,
        extra={"search": {"note": "kept"}},
    )


def test_calibrate_random_supernet_end_to_end(tmp_path: Path, supernet: Supernet, images: ImageSet) -> None:
    result = calibrate_levels(
        supernet,
        family_table(),
        calibration=images,
        validation=images,
        threads=1,
        batch_size=4,
        warmup=1,
        iterations=3,
        progress=False,
    )
    table = result.table
    assert [lv.config for lv in table.levels] == CONFIGS  # the CPU orders them like the family
    assert [lv.predicted_accuracy for lv in table.levels] == [70.0, 75.0, 80.0]
    assert all(lv.accuracy is None for lv in table.levels)  # random weights: not measured
    assert any("random weights" in note for note in result.notes)
    assert all(
        lv.latency_p95_ms is not None and lv.latency_p95_ms >= lv.latency_ms > 0 for lv in table.levels
    )
    assert [lv.macs_m for lv in table.levels] == sorted(lv.macs_m for lv in table.levels)  # type: ignore[type-var]
    assert table.device == "cpu" and table.profiling["mode"] == "eager" and table.profiling["threads"] == 1
    assert table.profiling["backend"] == "torch" and table.profiling["cpu_model"]  # the family names none
    assert table.calibration["images"] == 8 and table.supernet["sha256"] == supernet.sha256
    assert table.extra["search"] == {"note": "kept"}
    assert table.bn is not None and set(table.bn) == {1, 2, 3}
    # the BN statistics were recomputed (not the super-network's initial zeros/ones)
    means = [t for k, t in table.bn[1].items() if k.endswith("running_mean")]
    assert any(float(t.abs().sum()) > 0 for t in means)

    path = save_level_table(table, tmp_path / "cpu.json", supernet=supernet)
    loaded = load_level_table(path, supernet=supernet)
    assert loaded.bn is not None
    assert all(torch.equal(loaded.bn[2][k], v) for k, v in table.bn[2].items())
    assert (tmp_path / "cpu.bn.safetensors").is_file()

    copied = calibrate_levels(
        supernet,
        CONFIGS[:2],
        calibration=images,
        latency_from=loaded,
        batch_size=8,
        progress=False,
    )
    assert [lv.latency_ms for lv in copied.table.levels] == [lv.latency_ms for lv in loaded.levels[:2]]
    assert copied.table.device_name == loaded.device_name
    assert "latency" in copied.seconds and copied.table.levels[0].predicted_accuracy is None

    spaced = calibrate_levels(
        supernet, family_table(), calibration=images, latency_from=loaded, min_step=6.0, progress=False
    )
    assert [lv.predicted_accuracy for lv in spaced.table.levels] == [70.0, 80.0]
    assert len(spaced.dropped) == 1 and "not 6 points more accurate" in spaced.dropped[0]


def test_measured_accuracy_levels_keep_a_pareto_front(supernet: Supernet, images: ImageSet) -> None:
    pretend = dataclasses.replace(supernet, meaningful_accuracy=True)
    result = calibrate_levels(
        pretend,
        CONFIGS[:2],
        calibration=images,
        validation=images,
        batch_size=8,
        warmup=1,
        iterations=2,
        progress=False,
    )
    levels = result.table.levels
    assert levels and all(lv.accuracy is not None and 0.0 <= lv.accuracy <= 100.0 for lv in levels)
    assert all(lv.accuracy_dataset == images.name for lv in levels)
    for a, b in zip(levels, levels[1:], strict=False):
        assert b.latency_ms > a.latency_ms and b.accuracy > a.accuracy  # type: ignore[operator]
    assert len(levels) + len(result.dropped) == 2


def test_bad_families(supernet: Supernet, images: ImageSet) -> None:
    with pytest.raises(CalibrationError, match="no levels"):
        calibrate_levels(supernet, [], calibration=images, progress=False)
    with pytest.raises(CalibrationError, match="resolution 96"):
        calibrate_levels(supernet, [uniform(96, 3, 3, 2)], calibration=images, progress=False)
    unlabelled = ImageSet(name="u", images=images.images, labels=None)
    with pytest.raises(CalibrationError, match="labels"):
        calibrate_levels(supernet, CONFIGS[:1], calibration=images, validation=unlabelled, progress=False)
    other = family_table()
    other.levels = other.levels[:1]
    with pytest.raises(CalibrationError, match="latency-from"):
        calibrate_levels(supernet, CONFIGS[1:2], calibration=images, latency_from=other, progress=False)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_calibrate_measures_in_the_familys_compiled_backend(
    backend: str, tmp_path: Path, supernet: Supernet, images: ImageSet
) -> None:
    """A family searched on a compiled backend's latency table is timed in that backend by default."""
    if not installed(backend):
        pytest.skip(f"{backend} is not installed")
    family = family_table()
    family.levels = family.levels[:2]
    family.profiling = {**profiling_header(backend), "latency_source": "look-up table (test)"}
    assert default_backend(family, "cpu") == backend and default_backend(family, "cuda") == "torch"
    assert default_backend(CONFIGS, "cpu") == "torch"
    cache = tmp_path / "cache"
    calibrate = functools.partial(
        calibrate_levels,
        supernet,
        family,
        calibration=images,
        threads=1,
        batch_size=4,
        warmup=1,
        iterations=2,
        progress=False,
    )
    result = calibrate(cache_dir=cache)
    profiling = result.table.profiling
    assert profiling["backend"] == backend and profiling["mode"] == "compiled" and profiling["threads"] == 1
    assert (
        profiling["precision"] == "f32"
        and profiling["backend_version"]
        and isinstance(profiling["isa"], list)
    )
    assert set(profiling["load_average"]) == {"before", "after"} and "LevelEngine.infer" in profiling["timed"]
    assert all(lv.latency_ms > 0 for lv in result.table.levels)
    assert any(cache.iterdir())  # the levels went through the engine's artefact cache
    path = save_level_table(result.table, tmp_path / "cpu.json", supernet=supernet)
    loaded = load_level_table(path, supernet=supernet)
    assert table_backend(loaded.profiling) == backend
    engine = LevelEngine(supernet, loaded, threads=1, warmup=0, cache_dir=cache)  # backend auto: the table's
    assert engine.backend == backend

    in_torch = calibrate(backend="torch")
    assert in_torch.table.profiling["backend"] == "torch" and in_torch.table.profiling["mode"] == "eager"
