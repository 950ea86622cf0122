"""offline_tools.reprofile and ``dofa-levels reprofile``: a table measured again in a compiled backend.

A 2-level table of a random super-network (accuracy meaningless, so top-1 is compared with torch's
answers instead) and a few real photos; nothing is asserted about speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SubnetConfig
from dynamic_ofa_ros.backends import installed
from dynamic_ofa_ros.engine import LevelEngine
from dynamic_ofa_ros.levels import Level, load_level_table, save_level_table
from dynamic_ofa_ros.supernet import Supernet, load_supernet
from dynamic_ofa_ros.table_builder import build_level_table
from offline_tools.cli import main
from offline_tools.datasets import ImageSet, open_image_source
from offline_tools.reprofile import LevelMeasurement, measure_top1, pareto_levels, reprofile_table

torch.set_num_threads(1)


def uniform(resolution: int, ks: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=resolution, ks=(ks,) * N_BLOCKS, e=(e,) * N_BLOCKS, d=(d,) * N_STAGES)


@pytest.fixture(scope="module")
def backend() -> str:
    for name in ("onnxruntime", "openvino"):
        if installed(name):
            return name
    pytest.skip("neither onnxruntime nor openvino is installed")


@pytest.fixture(scope="module")
def supernet() -> Supernet:
    return load_supernet("random", allow_random=True)


@pytest.fixture(scope="module")
def val_zip(shared_dir: Path) -> Path:
    path = shared_dir / "datasets" / "imagenette" / "val-128px.zip"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def photos(val_zip: Path) -> ImageSet:
    return ImageSet.load(open_image_source(val_zip, sample=6, seed=0), progress=False)


@pytest.fixture(scope="module")
def table_path(supernet: Supernet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build_level_table(
        supernet, [uniform(128, 3, 3, 2), uniform(144, 5, 4, 2)], warmup=1, iterations=3
    )
    return save_level_table(built, tmp_path_factory.mktemp("levels") / "cpu-torch.json", supernet=supernet)


def test_reprofile_measures_every_level_in_the_backend(
    supernet: Supernet, table_path: Path, photos: ImageSet, backend: str, tmp_path: Path
) -> None:
    source = load_level_table(table_path, supernet=supernet)
    result = reprofile_table(
        supernet,
        source,
        photos,
        backend=backend,
        warmup=1,
        iterations=4,
        rounds=2,
        cache_dir=tmp_path,
        progress=False,
    )
    profiling = result.table.profiling
    assert profiling["backend"] == backend and profiling["precision"] == "f32" and profiling["threads"] == 1
    assert profiling["mode"] == "compiled" and profiling["iterations"] == 4 and profiling["rounds"] == 2
    assert {"backend_version", "cpu_model", "isa", "date", "load_average"} <= set(profiling)
    assert [m.level.level for m in result.measured] == [1, 2]
    for m in result.measured:
        assert m.latency_p95_ms >= m.latency_ms > 0 and m.accuracy is None  # random weights: no top-1
    kept = [lv.config for lv in result.table.levels]
    # kept levels: measured ones, in order of their new latency (4 timed frames on a busy
    # machine may swap two close levels; the table is then re-ordered, never mislabelled)
    assert set(kept) <= {m.level.config for m in result.measured}
    latencies = [lv.latency_ms for lv in result.table.levels]
    assert latencies == sorted(latencies)
    assert len(result.dropped) == 2 - len(kept)
    source_record = result.table.extra["reprofiled_from"]
    assert source_record["backend"] == "torch" and source_record["table"] == "cpu-torch.json"
    assert [row["level"] for row in source_record["levels"]] == [1, 2]
    assert result.table.bn is not None and source.bn is not None
    for lv in result.table.levels:
        original = next(o for o in source.levels if o.config == lv.config)
        assert all(torch.equal(result.table.bn[lv.level][k], v) for k, v in source.bn[original.level].items())

    saved = save_level_table(result.table, tmp_path / "cpu.json", supernet=supernet)
    loaded = load_level_table(saved, supernet=supernet)
    assert loaded.extra["reprofiled_from"]["table"] == "cpu-torch.json"
    compiled = LevelEngine(supernet, loaded, threads=1, warmup=0, cache_dir=tmp_path)  # backend auto
    assert compiled.backend == backend
    assert LevelEngine(supernet, source, threads=1, warmup=0).backend == "torch"


def test_measure_top1_counts_the_backend_answers(
    supernet: Supernet, table_path: Path, photos: ImageSet, backend: str, tmp_path: Path
) -> None:
    table = load_level_table(table_path, supernet=supernet)
    compiled = LevelEngine(
        supernet, table, backend=backend, check_backend=False, threads=1, warmup=0, cache_dir=tmp_path
    )
    eager = LevelEngine(supernet, table, threads=1, warmup=0)
    assert photos.labels is not None
    labels = np.asarray(photos.labels)
    for lv in table.levels:
        want = eager.infer_batch(photos.images, level=lv.level).argmax(axis=1)
        expected = 100.0 * float((want == labels).sum()) / len(photos)
        assert measure_top1(compiled, lv.level, photos, chunk=4) == pytest.approx(expected)


def _measurement(number: int, latency: float, accuracy: float | None) -> LevelMeasurement:
    level = Level(level=number, config=uniform(96 + 16 * number, 3, 3, 2), latency_ms=float(number))
    return LevelMeasurement(level=level, latency_ms=latency, latency_p95_ms=latency, accuracy=accuracy)


def test_pareto_levels_drop_what_the_backend_reorders() -> None:
    measured = [
        _measurement(1, 1.0, 80.0),
        _measurement(2, 1.3, 82.0),  # slower than level 3 in the backend and less accurate
        _measurement(3, 1.2, 83.0),
        _measurement(4, 1.5, 79.0),  # slower but less accurate
        _measurement(5, 2.0, 85.0),
        _measurement(6, 2.0, 86.0),  # the same latency as level 5
        _measurement(7, 3.0, None),  # accuracy not measured: latency alone decides
    ]
    kept, dropped = pareto_levels(measured)
    assert [m.level.level for m in kept] == [1, 3, 5, 7]
    assert len(dropped) == 3
    assert (
        dropped[0].startswith("source level 2")
        and "than source level 3 (1.200 ms) but not more" in dropped[0]
    )
    assert dropped[1].startswith("source level 4") and "not more accurate (83.000 %)" in dropped[1]
    assert dropped[2].startswith("source level 6") and "not slower than source level 5" in dropped[2]


def test_reprofile_command(
    supernet: Supernet, table_path: Path, val_zip: Path, backend: str, tmp_path: Path
) -> None:
    out, report = tmp_path / "out" / "cpu.json", tmp_path / "report.json"
    common = ["reprofile", "--table", str(table_path), "--model", "random", "--allow-random"]
    options = ["--backend", backend, "--val", str(val_zip), "--val-images", "3", "--cache-dir", str(tmp_path)]
    timing = ["--warmup", "1", "--iterations", "2", "--rounds", "1", "--no-progress"]
    assert main([*common, *options, *timing, "--out", str(table_path)]) == 2  # never overwrites its source
    assert main([*common, *options, *timing, "--out", str(out), "--report", str(report)]) == 0
    table = load_level_table(out, supernet=supernet)
    assert table.profiling["backend"] == backend and (out.parent / "cpu.bn.safetensors").is_file()
    rows = json.loads(report.read_text(encoding="utf-8"))["levels"]
    assert [row["source_level"] for row in rows] == [1, 2] and all(row["latency_ms"] > 0 for row in rows)
