"""``dofa-levels`` with an execution backend: the flags, refusals, and search -> calibrate in one backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SubnetConfig
from dynamic_ofa_ros.backends import installed
from dynamic_ofa_ros.backends.header import profiling_header, table_backend
from dynamic_ofa_ros.levels import load_level_table
from offline_tools.cli import main
from offline_tools.latency.geometry import MobileNetV3Geometry
from offline_tools.latency.profile import profile_latency_table
from offline_tools.latency.table import LatencyTable, OperatorStats

torch.set_num_threads(1)

BACKEND = "openvino"


def uniform(resolution: int, ks: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=resolution, ks=(ks,) * N_BLOCKS, e=(e,) * N_BLOCKS, d=(d,) * N_STAGES)


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def openvino_lut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real OpenVINO table (the operators of two sub-networks at 64 px)."""
    if not installed(BACKEND):
        pytest.skip(f"{BACKEND} is not installed")
    cfgs = [uniform(64, 3, 3, 2), uniform(64, 5, 4, 2)]
    table = profile_latency_table(
        resolutions=[64], configs=cfgs, backend=BACKEND, warmup=0, iterations=2, rounds=1, progress=False
    )
    return table.save(tmp_path_factory.mktemp("lut") / "openvino")


@pytest.mark.parametrize("command", ["profile", "validate-latency", "calibrate", "build"])
def test_backend_flags_are_listed(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--backend" in out and "openvino" in out and "--precision" in out


def test_validate_latency_refuses_another_backend(
    openvino_lut: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["validate-latency", "--table", str(openvino_lut), "--n-subnets", "3", "--no-progress"]
    assert main([*argv, "--backend", "torch"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "profiled with backend 'openvino', not 'torch'" in line
    assert "dofa-levels profile --backend torch" in line and "--backend openvino" in line
    # the clock a compiled backend cannot use is refused too
    assert main([*argv, "--clock", "thread_cpu"]) == 2
    assert "process_cpu" in one_error_line(capsys.readouterr().err)


def test_build_refuses_a_table_of_another_backend(
    openvino_lut: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cpu.json"
    argv = [
        "build",
        "--latency-table",
        str(openvino_lut),
        "--backend",
        "onnxruntime",
        "--accuracy-predictor",
        str(tmp_path / "unused.pth"),
        "--model",
        "random",
        "--allow-random",
        "--calib",
        str(tmp_path / "unused.zip"),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "profiled with backend 'openvino', not 'onnxruntime'" in line and not out.exists()


def synthetic_lut(resolution: int) -> LatencyTable:
    """Every operator of the OFA space at one resolution, with made-up costs and OpenVINO's header."""
    geometry = MobileNetV3Geometry()
    entries = {}
    for op in geometry.space_operators(resolution):
        h, w, c = op.input_shape
        cost = 1e-6 * h * w * max(c, op.expand) * max(op.kernel, 1) ** 2 + 0.01
        entries[op.key] = OperatorStats(count=5, mean=cost, std=0.0)
    metadata = {**profiling_header(BACKEND), "mode": "compiled", "threads": 1, "clock": "process_cpu"}
    return LatencyTable({resolution: entries}, metadata=metadata, geometry=geometry, name="synthetic")


def test_search_then_calibrate_stay_in_the_tables_backend(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The family keeps the table's backend header; calibrate measures in that backend by default."""
    if not installed(BACKEND):
        pytest.skip(f"{BACKEND} is not installed")
    predictor = shared_dir / "ofa" / "acc_predictor.pth"
    photos = shared_dir / "datasets" / "imagenette" / "val-128px.zip"
    for path in (predictor, photos):
        if not path.exists():
            pytest.skip(f"{path} not found")
    lut = synthetic_lut(160).save(tmp_path / "lut")
    family = tmp_path / "family.json"
    quick = [
        "--itr-max",
        "200",
        "--itr-n",
        "100",
        "--generations",
        "2",
        "--population",
        "8",
        "--targets",
        "2",
    ]
    argv = ["search", "--latency-table", str(lut), "--accuracy-predictor", str(predictor), "--levels", "2"]
    assert main([*argv, *quick, "--out", str(family), "--no-progress"]) == 0
    searched = load_level_table(family, require_bn=False)
    assert table_backend(searched.profiling) == BACKEND and isinstance(searched.profiling["isa"], list)

    out = tmp_path / "levels" / "cpu.json"
    calibrate = [
        "calibrate",
        "--family",
        str(family),
        "--model",
        "random",
        "--allow-random",
        "--threads",
        "1",
    ]
    images = ["--calib", str(photos), "--calib-images", "4", "--batch-size", "4"]
    timing = ["--warmup", "1", "--iterations", "2", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main([*calibrate, *images, *timing, "--out", str(out)]) == 0
    capsys.readouterr()
    profiling = json.loads(out.read_text(encoding="utf-8"))["profiling"]
    assert profiling["backend"] == BACKEND and profiling["mode"] == "compiled"
    assert profiling["backend_version"] and profiling["precision"] == "f32" and profiling["threads"] == 1
    # --backend torch overrides the family's backend; --latency-from still copies latencies
    in_torch = tmp_path / "levels" / "torch.json"
    assert main([*calibrate, *images, *timing, "--backend", "torch", "--out", str(in_torch)]) == 0
    assert load_level_table(in_torch).profiling["backend"] == "torch"
    copied = tmp_path / "levels" / "copied.json"
    assert main([*calibrate, *images, *timing, "--latency-from", str(out), "--out", str(copied)]) == 0
    table = load_level_table(copied)
    assert table.profiling["backend"] == BACKEND and table.profiling["latency_from"] == str(out)
    assert [lv.latency_ms for lv in table.levels] == [lv.latency_ms for lv in load_level_table(out).levels]
