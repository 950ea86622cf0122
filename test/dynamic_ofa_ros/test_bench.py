"""``dofa-bench``: the JSON field set on a small real table (few iterations; timings not checked)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dynamic_ofa_ros import embedded
from dynamic_ofa_ros.backends import installed
from dynamic_ofa_ros.bench import SAMPLE_CONFIGS, main, sample_config
from dynamic_ofa_ros.levels import save_level_table
from dynamic_ofa_ros.supernet import load_supernet
from dynamic_ofa_ros.table_builder import build_level_table

torch.set_num_threads(1)

LEVEL_FIELDS = {
    "level",
    "resolution",
    "architecture",
    "table_latency_ms",
    "infer_ms_p50",
    "infer_ms_p95",
    "static_ms_p50",
    "static_ms_p95",
    "preprocess_ms_p50",
    "infer_over_static",
    "memory_mb",
    "execution",
    # compiled backends (issue 14)
    "infer_ms_p99",
    "static_ms_p99",
    "model_ms_p50",
    "model_ms_p99",
    "model_over_static",
    "frames",
    "preprocess_numpy_ms_p50",
}
STOCK_FIELDS = {"stock", "stock_best_f32_ms_p50", "model_over_stock", "infer_over_stock"}
TOP_FIELDS = {
    "tool",
    "timestamp",
    "device",
    "device_kind",
    "torch",
    "python",
    "threads",
    "model",
    "table",
    "image",
    "iterations",
    "warmup",
    "levels",
    "switch_ms_p50",
    "switch_ms_p99",
    "switch_samples",
    "switch_call_us_p50",
    "switch_first_frame_excess_ms_p50",
    "switch_first_frame_excess_ms_p99",
    "manager_overhead_us_p50",
    "manager_overhead_us_p99",
    "manager_note",
    "memory_mb",
    "targets",
    "backend",
    "backend_version",
    "precision",
    "preprocessing",
    "cpu_model",
    "isa",
    "libraries",
    "warnings",
    "startup_s",
    "load_average",
}


@pytest.fixture(autouse=True)
def isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Exported levels go to a temporary folder, never to the user's cache."""
    root = tmp_path_factory.getbasetemp() / "compiled"
    monkeypatch.setenv("DOFA_CACHE_DIR", str(root))
    yield root


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rand = load_supernet("random", allow_random=True)
    configs = [SAMPLE_CONFIGS["small"], SAMPLE_CONFIGS["medium"]]
    table = build_level_table(rand, configs, warmup=1, iterations=3, threads=1)
    return save_level_table(table, tmp_path_factory.mktemp("levels") / "cpu.json", supernet=rand)


def test_bench_json_fields(table_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "--device", "cpu", "--table", str(table_path), "--model", "random", "--allow-random",
        "--threads", "1", "--iterations", "2", "--warmup", "0", "--switches", "5",
        "--manager-samples", "50", "--image", "96x128", "--reference", "on",
        "--reference-switches", "2", "--reference-extractions", "1", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert set(printed) >= TOP_FIELDS
    assert printed["device_kind"] == "cpu" and printed["threads"] == 1
    assert printed["model"]["meaningful_accuracy"] is False
    assert printed["table"]["levels"] == 2 and printed["table"]["ad_hoc"] is False
    assert [row["level"] for row in printed["levels"]] == [1, 2]
    assert printed["backend"] == "torch" and printed["table"]["backend"] == "torch"
    assert printed["libraries"]["torch"] == printed["torch"].split("+")[0]
    stock = {name for name in ("onnxruntime", "openvino") if installed(name)}
    for row in printed["levels"]:
        assert set(row) >= LEVEL_FIELDS
        assert row["infer_ms_p50"] > 0 and row["static_ms_p50"] > 0 and row["model_ms_p50"] > 0
        assert set(row["frames"]) == {"224x224", "480x640"}
        assert all(v["infer_ms_p99"] >= v["infer_ms_p50"] > 0 for v in row["frames"].values())
        assert row["execution"]["backend"] == "torch" and row["execution"]["precision"] == "f32"
        assert "floor_ms_p50" not in row  # CUDA only
        if stock:  # the stock runtimes on the same ONNX file, without our wrapper
            assert set(row) >= STOCK_FIELDS
            assert set(row["stock"]) >= stock and all(v["ms_p50"] > 0 for v in row["stock"].values())
    if stock:
        assert set(printed["targets"]) >= {"model_le_1.1x_stock", "infer_480x640_le_1.3x_stock"}
    assert set(printed["memory_mb"]["per_level"]) == {"1", "2"}
    assert printed["memory_mb"]["total"] > 0
    assert printed["switch_samples"] == 5
    assert "placeholder" in printed["manager_note"]
    ref = printed["reference_design"]
    assert {"set_active_subnet_bn", "get_active_subnet", "engine"} <= set(ref)
    assert "switch_ms_p99" in ref["get_active_subnet"]
    assert not any("accuracy" in key for row in printed["levels"] for key in row), (
        "bench never reports accuracy"
    )


@pytest.mark.cuda
def test_bench_cuda_fields(table_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--device", "cuda", "--table", str(table_path), "--model", "random", "--allow-random",
        "--iterations", "5", "--warmup", "2", "--switches", "20", "--manager-samples", "50",
        "--reference-switches", "4", "--reference-extractions", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["device_kind"] == "cuda" and printed["table"]["profiled_on_other_device_kind"] is True
    for row in printed["levels"]:
        assert {"floor_ms_p50", "infer_over_floor", "graph_ms_p50"} <= set(row)
        assert row["execution"]["mode"] == "cuda_graph"
        # the captured preprocessing + model graph does the floor's work and more
        assert row["graph_ms_p50"] > 0.0 and row["floor_ms_p50"] > 0.0
    assert {"set_active_subnet_bn", "get_active_subnet", "engine"} <= set(printed["reference_design"])


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_bench_compiled_backend(table_path: Path, backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Any backend may run any table here (the table says torch); the engine's levels run compiled."""
    if not installed(backend):
        pytest.skip(f"{backend} is not installed")
    argv = [
        "--table", str(table_path), "--model", "random", "--allow-random", "--threads", "1",
        "--iterations", "2", "--warmup", "0", "--switches", "3", "--manager-samples", "10",
        "--backend", backend, "--stock", "off",
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["backend"] == backend and printed["precision"] == "f32"
    # the side-by-side table on stderr: one row per level with the engine's measured model p50
    rows = [line for line in captured.err.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(printed["levels"])  # header + levels
    for row, level in zip(rows[1:], printed["levels"], strict=True):
        assert row.startswith(f"| {level['level']} | {level['resolution']} | {level['model_ms_p50']:.2f} / ")
    assert 0.0 < printed["switch_ms_p50"] <= printed["switch_ms_p99"]
    assert printed["backend_version"] == printed["libraries"][backend]
    assert printed["startup_s"] > 0 and printed["cpu_model"] in printed["device"]
    for row in printed["levels"]:
        assert row["execution"]["mode"] == "compiled" and row["execution"]["backend"] == backend
        assert "stock" not in row
        # a compiled level is also timed from frames resized by NumPy (the torch-free node's path)
        for size in ("224x224", "480x640"):
            assert row["frames"][size]["infer_numpy_ms_p50"] > 0.0


def test_bench_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if not (embedded.EMBEDDED_DIR / embedded.MANIFEST_NAME).exists():
        assert main(["--iterations", "1"]) == 2
        assert "embedded model is not in this installation yet" in capsys.readouterr().err
    assert main(["--model", "random", "--iterations", "1"]) == 2
    assert "allow_random" in capsys.readouterr().err
    assert main(["--table", str(tmp_path / "none.json"), "--model", "random", "--allow-random"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["--iterations", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["--image", "big"])
    with pytest.raises(SystemExit):
        main(["--backend", "tensorrt"])


def test_sample_configs_use_the_model_resolutions() -> None:
    from dynamic_ofa_ros.supernet import OFA_RESOLUTIONS

    assert [sample_config(n, OFA_RESOLUTIONS).resolution for n in ("small", "medium", "large")] == [
        128,
        176,
        224,
    ]
    embedded_range = (96, 112, 128, 144, 160)
    picked = [sample_config(n, embedded_range) for n in ("small", "medium", "large")]
    assert [c.resolution for c in picked] == [128, 128, 160]
    assert [c.d for c in picked] == [SAMPLE_CONFIGS[n].d for n in ("small", "medium", "large")]


def test_bench_default_table_on_the_embedded_model(capsys: pytest.CaptureFixture[str]) -> None:
    """``make bench`` without a table: the in-process table must fit the embedded model's space."""
    if not (embedded.EMBEDDED_DIR / embedded.MANIFEST_NAME).exists():
        pytest.skip("the embedded model is not in this checkout")
    argv = ["--iterations", "1", "--warmup", "0", "--switches", "2", "--manager-samples", "10"]
    assert main([*argv, "--image", "64x96", "--reference", "off", "--threads", "1", "--stock", "off"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["resolution"] for row in printed["levels"]] == [128, 128, 160]
