"""LevelEngine with a compiled backend: same outputs as torch, start-up cache, refusals and warnings.

A real 2-level table of a random super-network (accuracy meaningless); nothing is timed.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch

from dynamic_ofa_ros import backends
from dynamic_ofa_ros.backends import BackendFallbackWarning
from dynamic_ofa_ros.backends import build as backend_build
from dynamic_ofa_ros.engine import LevelEngine
from dynamic_ofa_ros.errors import ImageError, LevelTableError, ModelSourceError
from dynamic_ofa_ros.levels import LevelTable
from dynamic_ofa_ros.supernet import Supernet

Relabel = Callable[[LevelTable, str], LevelTable]
#: float32 runtimes reorder sums: probabilities of the same network agree to ~1e-6.
PROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def torch_engine(rand: Supernet, table: LevelTable) -> LevelEngine:
    return LevelEngine(rand, table, threads=1, warmup=0)


@pytest.fixture
def engine(rand: Supernet, table: LevelTable, compiled_backend: str, for_backend: Relabel) -> LevelEngine:
    return LevelEngine(rand, for_backend(table, compiled_backend), threads=1, warmup=1)


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (120, 150, 3), dtype=np.uint8)


def test_execution_reports_the_backend(engine: LevelEngine, compiled_backend: str) -> None:
    assert engine.backend == compiled_backend and engine.warnings == ()
    for number, info in engine.execution.items():
        assert info["mode"] == "compiled" and info["backend"] == compiled_backend
        assert info["backend_version"] == backends.backend_version(compiled_backend)
        assert info["precision"] == "f32" and info["threads"] == 1
        assert info["cache"] in ("hit", "built")
        assert info["resolution"] == engine.table.level(number).resolution
        assert engine.runner(number).module is None  # the PyTorch module is not kept
        assert engine.memory_mb[number] > 0.1


def test_outputs_equal_torch(engine: LevelEngine, torch_engine: LevelEngine, frame: np.ndarray) -> None:
    for lv in engine.levels:
        got, want = engine.infer(frame, level=lv.level), torch_engine.infer(frame, level=lv.level)
        assert got.level == lv.level and got.probs.shape == want.probs.shape and got.probs.dtype == np.float32
        np.testing.assert_allclose(got.probs, want.probs, atol=PROB_ATOL)
        assert abs(float(got.probs.sum()) - 1.0) < 1e-4 and got.inference_ms > 0
        x = np.ascontiguousarray(
            np.random.default_rng(2).standard_normal((1, 3, lv.resolution, lv.resolution))
        )
        x = x.astype(np.float32)
        np.testing.assert_allclose(
            engine.run_model(x, level=lv.level), torch_engine.run_model(x, level=lv.level), atol=PROB_ATOL
        )
        batch = engine.infer_batch([frame, frame[:64, :80]], level=lv.level)
        np.testing.assert_allclose(
            batch, torch_engine.infer_batch([frame, frame[:64, :80]], level=lv.level), atol=PROB_ATOL
        )


def test_switch_and_bad_frames(engine: LevelEngine, frame: np.ndarray) -> None:
    engine.switch(2)
    assert engine.infer(frame).level == 2
    engine.switch(1)
    assert engine.infer(torch.from_numpy(frame)).level == 1  # tensors are accepted as before
    with pytest.raises(ImageError):
        engine.infer(frame[:, :, :2])
    with pytest.raises(ImageError):
        engine.infer_batch([])
    with pytest.raises(RuntimeError, match="runs compiled"):
        engine.runner(1).body(torch.zeros(1, 3, 8, 8))


def test_numpy_preprocessing_gives_the_same_probabilities(
    rand: Supernet, table: LevelTable, compiled_backend: str, for_backend: Relabel
) -> None:
    relabelled = for_backend(table, compiled_backend)
    by_numpy = LevelEngine(rand, relabelled, threads=1, warmup=0, preprocessing="numpy")
    by_torch = LevelEngine(rand, relabelled, threads=1, warmup=0, preprocessing="torch")
    assert by_numpy.execution[1]["preprocessing"] == "numpy"
    camera = np.random.default_rng(9).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for lv in by_numpy.levels:  # the same 8-bit image; the normalisation rounds differently (< 1e-6)
        np.testing.assert_allclose(
            by_numpy.infer(camera, level=lv.level).probs,
            by_torch.infer(camera, level=lv.level).probs,
            atol=1e-6,
        )
    with pytest.raises(ModelSourceError, match="preprocessing 'opencv'"):
        LevelEngine(rand, relabelled, threads=1, preprocessing="opencv")


def test_torch_preprocessing_without_torch_is_refused_naming_the_fix(
    rand: Supernet,
    table: LevelTable,
    compiled_backend: str,
    for_backend: Relabel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def no_torch(name: str, *args: object, **kwargs: object) -> object:
        return None if name == "torch" else real_find_spec(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", no_torch)
    with pytest.raises(ModelSourceError, match="needs PyTorch, which is not installed.*'numpy'"):
        LevelEngine(rand, for_backend(table, compiled_backend), threads=1, warmup=0, preprocessing="torch")


def test_a_table_for_another_backend_is_refused(
    rand: Supernet, table: LevelTable, compiled_backend: str, for_backend: Relabel
) -> None:
    with pytest.raises(
        LevelTableError, match=rf"profiled with backend 'torch', but backend '{compiled_backend}'"
    ):
        LevelEngine(rand, table, threads=1, backend=compiled_backend)
    with pytest.raises(LevelTableError, match="use backend 'auto'"):
        LevelEngine(rand, for_backend(table, compiled_backend), threads=1, backend="torch")
    # auto runs the table's backend; check_backend=False runs any (dofa-bench does)
    assert LevelEngine(rand, table, threads=1, warmup=0).backend == "torch"
    other = LevelEngine(rand, table, threads=1, warmup=0, backend=compiled_backend, check_backend=False)
    assert other.backend == compiled_backend


def test_auto_falls_back_when_the_tables_runtime_is_missing(
    rand: Supernet, table: LevelTable, for_backend: Relabel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "installed", lambda name: name == "torch")
    with pytest.warns(BackendFallbackWarning, match="not installed here"):
        engine = LevelEngine(rand, for_backend(table, "openvino"), threads=1, warmup=0)
    assert engine.backend == "torch" and "pip install openvino" in engine.warnings[0]
    with pytest.raises(ModelSourceError, match="pip install onnxruntime"):
        LevelEngine(rand, table, threads=1, backend="onnxruntime")


def test_a_table_from_another_cpu_runs_with_a_warning(
    rand: Supernet, table: LevelTable, compiled_backend: str, for_backend: Relabel
) -> None:
    relabelled = for_backend(table, compiled_backend)
    foreign = dataclasses.replace(
        relabelled, profiling={**relabelled.profiling, "cpu_model": "Other CPU 9000"}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning for the user, not a Python warning
        engine = LevelEngine(rand, foreign, threads=1, warmup=0)
    assert engine.backend == compiled_backend
    assert len(engine.warnings) == 1 and "profiled on 'Other CPU 9000'" in engine.warnings[0]


def test_cache_entries_follow_bn_backend_version_and_corruption(
    rand: Supernet,
    table: LevelTable,
    compiled_backend: str,
    for_backend: Relabel,
    monkeypatch: pytest.MonkeyPatch,
    frame: np.ndarray,
) -> None:
    relabelled = for_backend(table, compiled_backend)
    first = LevelEngine(rand, relabelled, threads=1, warmup=0)
    assert LevelEngine(rand, relabelled, threads=1, warmup=0).execution[1]["cache"] == "hit"
    # changed BN statistics of level 2: its entry is new, level 1's is reused
    assert relabelled.bn is not None
    bn = {n: dict(state) for n, state in relabelled.bn.items()}
    bn[2] = {k: v * 1.5 if k.endswith("running_var") else v for k, v in bn[2].items()}
    changed = LevelEngine(rand, dataclasses.replace(relabelled, bn=bn), threads=1, warmup=0)
    assert changed.execution[1]["cache"] == "hit" and changed.execution[2]["cache"] == "built"
    assert not np.allclose(changed.infer(frame, level=2).probs, first.infer(frame, level=2).probs, atol=1e-6)
    # another runtime version: every level is exported again
    real_version = backend_build.backend_version
    monkeypatch.setattr(backend_build, "backend_version", lambda name: real_version(name) + "-other")
    assert {
        info["cache"] for info in LevelEngine(rand, relabelled, threads=1, warmup=0).execution.values()
    } == {"built"}
    monkeypatch.setattr(backend_build, "backend_version", real_version)  # (undo() would drop the cache dir)
    # a corrupt file: rebuilt, and the engine still computes the right thing
    onnx = first.runner(1).onnx
    assert onnx is not None
    onnx.write_bytes(onnx.read_bytes()[:-100] + b"\0" * 100)
    repaired = LevelEngine(rand, relabelled, threads=1, warmup=0)
    assert repaired.execution[1]["cache"].startswith("rebuilt: model.onnx does not match its SHA-256")
    np.testing.assert_allclose(
        repaired.infer(frame, level=1).probs, first.infer(frame, level=1).probs, atol=1e-6
    )


def test_openvino_blobs_are_verified_and_replaced(
    rand: Supernet, table: LevelTable, for_backend: Relabel, frame: np.ndarray
) -> None:
    """The compiled blob beside model.onnx: reused when intact, recompiled when corrupt."""
    if not backends.installed("openvino"):
        pytest.skip("openvino is not installed")
    from dynamic_ofa_ros.backends.openvino import blob_path

    relabelled = for_backend(table, "openvino")
    first = LevelEngine(rand, relabelled, threads=1, warmup=0)
    onnx = first.runner(1).onnx
    assert onnx is not None
    blob = blob_path(onnx, backends.CompileOptions(threads=1))
    assert blob.is_file() and blob.with_suffix(".json").is_file()
    assert blob_path(onnx, backends.CompileOptions(threads=2)) != blob  # properties are part of the name
    written = blob.stat().st_mtime_ns
    warm = LevelEngine(rand, relabelled, threads=1, warmup=0)
    assert blob.stat().st_mtime_ns == written  # imported, not compiled and written again
    np.testing.assert_array_equal(warm.infer(frame, level=1).probs, first.infer(frame, level=1).probs)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    repaired = LevelEngine(rand, relabelled, threads=1, warmup=0)
    assert blob.read_bytes() != bytes(data)  # a fresh compile replaced the corrupt blob
    np.testing.assert_allclose(
        repaired.infer(frame, level=1).probs, first.infer(frame, level=1).probs, atol=1e-6
    )
