"""Latency tables in a compiled backend (offline_tools.latency.compiled, profile/validate with a backend).

Tiny real runs: a handful of operators at 64 px compiled by OpenVINO and ONNX Runtime, and whole
sub-networks compiled the way the runtime compiles a level. Nothing is asserted about speed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SubnetConfig
from dynamic_ofa_ros.backends import installed
from dynamic_ofa_ros.backends.header import cpu_model
from offline_tools.errors import LatencyTableError
from offline_tools.latency.compiled import (
    CompiledSettings,
    compiled_workdir,
    default_operator_layout,
    export_operator,
)
from offline_tools.latency.geometry import MobileNetV3Geometry
from offline_tools.latency.profile import execution_setup, profile_latency_table
from offline_tools.latency.runners import build_operator, resolve_clock
from offline_tools.latency.table import LatencyTable
from offline_tools.latency.validate import validate_latency_table, validation_summary

torch.set_num_threads(1)

COMPILED = ("openvino", "onnxruntime")


def uniform(resolution: int, ks: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=resolution, ks=(ks,) * N_BLOCKS, e=(e,) * N_BLOCKS, d=(d,) * N_STAGES)


SMALL = uniform(64, ks=3, e=3, d=2)
LARGE = uniform(64, ks=7, e=6, d=3)
MIXED = uniform(64, ks=5, e=4, d=2)


def require(backend: str) -> None:
    if not installed(backend):
        pytest.skip(f"{backend} is not installed")


@pytest.fixture(scope="module", params=COMPILED)
def profiled(request: pytest.FixtureRequest) -> LatencyTable:
    """The operators of three sub-networks at 64 px profiled by a compiled backend (a few samples)."""
    require(request.param)
    return profile_latency_table(
        resolutions=[64],
        configs=[SMALL, LARGE, MIXED],
        backend=request.param,
        warmup=1,
        iterations=4,
        rounds=2,
        progress=False,
    )


def test_profile_metadata_names_backend_clock_and_cpu(profiled: LatencyTable, tmp_path: Path) -> None:
    meta = profiled.metadata
    backend = meta["backend"]
    assert backend in COMPILED and profiled.backend == backend
    assert meta["mode"] == "compiled" and meta["precision"] == "f32" and meta["threads"] == 1
    assert meta["backend_version"] and meta["cpu_model"] == cpu_model() and isinstance(meta["isa"], list)
    assert meta["clock"] == "process_cpu" and "worker threads" not in meta["clock_note"]
    assert "threads of its own" in meta["clock_note"]
    assert meta["operator_layout"] == default_operator_layout(backend)
    assert meta["call_overhead_ms"] > 0
    assert set(meta["load_average"]) == {"before", "after"}
    assert f"compiled by {backend}" in meta["operators"]
    # every operator of the three networks, with a non-negative time net of the empty call
    geometry = MobileNetV3Geometry()
    wanted = {op.key for cfg in (SMALL, LARGE, MIXED) for op in geometry.operators(cfg)}
    assert set(profiled.keys(64)) == wanted
    assert all(profiled.entry(64, k).mean >= 0 and profiled.entry(64, k).count == 2 for k in wanted)
    assert profiled.predict(LARGE) > profiled.predict(SMALL) > 0
    loaded = LatencyTable.load(profiled.save(tmp_path / backend))
    assert loaded.backend == backend and loaded.metadata["isa"] == meta["isa"]


def test_validation_in_the_tables_backend(profiled: LatencyTable) -> None:
    report = validate_latency_table(
        profiled,
        configs=[SMALL, LARGE, MIXED],
        warmup=1,
        iterations=4,
        rounds=2,
        fit=True,
        paired=True,
        progress=False,
    )
    assert report["backend"] == profiled.backend and report["mode"] == "compiled"
    assert report["clock"] == "process_cpu" and report["precision"] == "f32"
    assert "exported as the runtime exports a level" in report["timed"]
    for block in ("raw", "raw_wall", "paired"):
        assert set(report[block]) >= {"mean_abs_pct_error", "max_abs_pct_error", "spearman"}
    assert "fitted_loo" in report or "fit_error" in report
    assert all(row["measured_ms"] > 0 and row["predicted_raw_ms"] > 0 for row in report["subnets"])
    summary = validation_summary(report)
    assert summary["backend"] == profiled.backend and summary["cpu_model"] == cpu_model()


def test_a_consumer_stating_another_backend_is_refused(profiled: LatencyTable) -> None:
    backend = profiled.backend
    other = next(b for b in (*COMPILED, "torch") if b != backend)
    with pytest.raises(LatencyTableError, match=f"profiled with backend '{backend}', not '{other}'") as info:
        validate_latency_table(profiled, configs=[SMALL, LARGE], backend=other, progress=False)
    assert f"--backend {other}" in str(info.value) and f"use --backend {backend}" in str(info.value)
    assert profiled.require_backend(None, consumer="x") == backend
    assert profiled.require_backend(backend, "f32", consumer="x") == backend
    torch_table = LatencyTable({64: {k: profiled.entry(64, k) for k in profiled.keys(64)}})
    assert torch_table.backend == "torch"  # tables without a backend were profiled in PyTorch
    with pytest.raises(LatencyTableError, match="profiled with backend 'torch'"):
        torch_table.require_backend(backend, consumer="validate-latency")


@pytest.mark.parametrize("backend", COMPILED)
def test_operator_graphs_compute_the_operator(backend: str) -> None:
    """The exported operator computes the OFA module (channels-last in, pooled out where so)."""
    require(backend)
    geometry = MobileNetV3Geometry()
    specs = [op for op in geometry.operators(MIXED) if op.kind in ("Conv", "expanded_conv", "Logits")][:3]
    specs.append(geometry.operators(MIXED)[-1])  # Logits
    for layout in ("channels_last", "nchw"):
        with compiled_workdir() as workdir:
            settings = CompiledSettings(
                backend=backend,
                precision="f32",
                threads=1,
                warmup=0,
                clock="process_cpu",
                layout=layout,
                workdir=workdir,
            )
            for spec in specs:
                torch.manual_seed(0)
                onnx, x = export_operator(spec, geometry, layout)
                torch.manual_seed(0)
                module = build_operator(spec, geometry).eval()  # the same random weights
                h, w, c = spec.input_shape
                if layout == "channels_last" and spec.kind != "Conv":
                    assert x.shape == (1, h, w, c)
                    nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
                else:
                    assert x.shape == (1, c, h, w)
                    nchw = torch.from_numpy(x)
                with torch.no_grad():
                    expected = module(nchw)
                if (
                    layout == "channels_last"
                    and expected.dim() == 4
                    and expected.shape[2] * expected.shape[3] > 1
                ):
                    expected = expected.mean(dim=(2, 3))
                got = settings.compile(onnx)(x)
                np.testing.assert_allclose(
                    got.reshape(-1), expected[0].reshape(-1).numpy(), rtol=1e-3, atol=1e-3
                )


def test_clock_and_option_checks() -> None:
    assert resolve_clock("cpu", 1, backend="openvino") == "process_cpu"
    assert resolve_clock("cpu", 1, backend="torch") == "thread_cpu"
    assert resolve_clock("cpu", 2, backend="openvino") == "wall"
    with pytest.raises(LatencyTableError, match="worker threads"):
        resolve_clock("cpu", 1, "thread_cpu", backend="onnxruntime")
    with pytest.raises(LatencyTableError, match="threads=1"):
        resolve_clock("cpu", 2, "process_cpu", backend="openvino")
    with pytest.raises(LatencyTableError, match="leave --mode out"):
        execution_setup(device="cpu", backend="openvino", mode="eager")
    with pytest.raises(LatencyTableError, match="needs --backend"):
        execution_setup(device="cpu", backend="torch", mode="compiled")
    with pytest.raises(LatencyTableError, match="run on the CPU"):
        execution_setup(device="cuda", backend="openvino")
    with pytest.raises(LatencyTableError, match="explicit count"):
        execution_setup(device="cpu", backend="openvino", threads=None)
    with pytest.raises(LatencyTableError, match="not a compiled backend"):
        execution_setup(device="cpu", backend="tensorrt")
    setup = execution_setup(device="cpu")
    assert (setup.backend, setup.mode, setup.clock, setup.operator_layout) == (
        "torch",
        "eager",
        "thread_cpu",
        None,
    )
