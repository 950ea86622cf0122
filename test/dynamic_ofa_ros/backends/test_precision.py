"""Explicit inference precision: f32 everywhere, bf16 only where the backend and the CPU have it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dynamic_ofa_ros.backends import CompileOptions, check_precision, compiled_backend, installed
from dynamic_ofa_ros.backends.export import export_onnx
from dynamic_ofa_ros.errors import ModelSourceError


def _cpu_has_bf16() -> bool:
    from dynamic_ofa_ros.backends import openvino as ov_backend

    return ov_backend.precision_problem("bf16") is None


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()
    path = tmp_path_factory.mktemp("precision") / "tiny.onnx"
    path.write_bytes(export_onnx(model, 16))
    return path


def test_f32_is_accepted_by_every_backend() -> None:
    for backend in ("openvino", "onnxruntime", "torch"):
        check_precision(backend, "f32")


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_bf16_is_refused_where_the_backend_has_none(backend: str) -> None:
    if backend != "torch" and not installed(backend):
        pytest.skip(f"{backend} is not installed")
    with pytest.raises(ModelSourceError, match="openvino"):
        check_precision(backend, "bf16")


def test_unknown_precision_is_named() -> None:
    with pytest.raises(ModelSourceError, match="precision 'int8' is unknown"):
        check_precision("openvino", "int8")


def test_openvino_bf16_follows_the_cpu(tiny_onnx: Path) -> None:
    """On a CPU with BF16 the level is compiled in bf16; elsewhere refused, naming the CPU and the fix."""
    if not installed("openvino"):
        pytest.skip("openvino is not installed")
    compile_level = compiled_backend("openvino")
    if _cpu_has_bf16():
        level = compile_level(str(tiny_onnx), CompileOptions(threads=1, precision="bf16"))
        assert level.precision == "bf16"
        out = level(np.zeros((1, 3, 16, 16), dtype=np.float32))
        assert out.dtype == np.float32 and np.isfinite(out).all()
    else:
        with pytest.raises(ModelSourceError, match=r"AVX-512 BF16 or AMX\); use precision f32"):
            check_precision("openvino", "bf16")
        with pytest.raises(RuntimeError, match="cannot compile"):
            compile_level(str(tiny_onnx), CompileOptions(threads=1, precision="bf16"))
    level32 = compile_level(str(tiny_onnx), CompileOptions(threads=1, precision="f32"))
    assert level32.precision == "f32" and level32.threads == 1


def test_the_engine_checks_the_precision(rand: Any, table: Any, for_backend: Any) -> None:
    """``LevelEngine(precision="bf16")`` runs only where the CPU has it; here it names the fix first."""
    from dynamic_ofa_ros.engine import LevelEngine

    if not installed("openvino"):
        pytest.skip("openvino is not installed")
    if _cpu_has_bf16():
        pytest.skip("this CPU has BF16: the compile path is covered by test_openvino_bf16_follows_the_cpu")
    with pytest.raises(ModelSourceError, match="use precision f32 here"):
        LevelEngine(
            rand,
            for_backend(table, "openvino"),
            device="cpu",
            threads=1,
            backend="openvino",
            precision="bf16",
        )
    with pytest.raises(ModelSourceError, match="runs f32 only"):
        LevelEngine(rand, table, device="cpu", threads=1, backend="torch", precision="bf16")
