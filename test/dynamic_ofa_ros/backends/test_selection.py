"""Backend selection (auto, fallback, refusal of a missing runtime) and the table header's backend fields."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dynamic_ofa_ros import backends
from dynamic_ofa_ros.backends import (
    BackendFallbackWarning,
    choose_backend,
    installed,
    resolve_backend,
)
from dynamic_ofa_ros.backends.header import (
    check_profiling,
    cpu_isa,
    cpu_mismatch,
    cpu_model,
    profiling_header,
    table_backend,
)
from dynamic_ofa_ros.errors import LevelTableError, ModelSourceError
from dynamic_ofa_ros.levels import LevelTable, load_level_table, save_level_table
from dynamic_ofa_ros.supernet import Supernet


def only(*names: str):  # a stand-in for backends.installed
    return lambda backend: backend == "torch" or backend in names


def test_auto_runs_the_backend_the_table_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "installed", only("openvino", "onnxruntime"))
    assert choose_backend("auto", table_backend="onnxruntime") == ("onnxruntime", "")
    assert choose_backend("auto", table_backend="torch") == ("torch", "")
    # a table that names no backend: the preference order
    assert choose_backend("auto", table_backend=None) == ("openvino", "")
    monkeypatch.setattr(backends, "installed", only("onnxruntime"))
    assert choose_backend("auto") == ("onnxruntime", "")
    monkeypatch.setattr(backends, "installed", only())
    assert choose_backend("auto") == ("torch", "")


def test_auto_falls_back_with_a_warning_when_the_tables_backend_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backends, "installed", only("onnxruntime"))
    with pytest.warns(
        BackendFallbackWarning, match=r"'openvino', which is not installed.*pip install openvino"
    ):
        assert resolve_backend("auto", table_backend="openvino") == "onnxruntime"
    monkeypatch.setattr(backends, "installed", only())
    with pytest.warns(BackendFallbackWarning, match="running 'torch' instead"):
        assert resolve_backend("auto", table_backend="onnxruntime") == "torch"


def test_an_explicit_backend_that_is_not_installed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "installed", only("openvino"))
    with pytest.raises(ModelSourceError, match=r"'onnxruntime' is not installed \(pip install onnxruntime\)"):
        resolve_backend("onnxruntime")
    assert resolve_backend("openvino") == "openvino"
    assert resolve_backend("torch") == "torch"
    with pytest.raises(ModelSourceError, match="unknown"):
        resolve_backend("tensorrt")


def test_cuda_runs_torch() -> None:
    assert choose_backend("auto", table_backend="openvino", device="cuda:0") == ("torch", "")
    with pytest.raises(ModelSourceError, match="runs on cpu, not on 'cuda'"):
        choose_backend("openvino", device="cuda")


def test_installed_reflects_the_environment() -> None:
    assert installed("torch")
    assert not installed("tensorrt")
    for name in ("openvino", "onnxruntime"):
        assert installed(name) == (backends.importlib.util.find_spec(name) is not None)


def test_profiling_header_round_trip() -> None:
    header = profiling_header("onnxruntime")
    assert header["backend"] == "onnxruntime" and header["precision"] == "f32"
    assert header["backend_version"] == backends.backend_version("onnxruntime")
    assert header["cpu_model"] == cpu_model() and header["isa"] == list(cpu_isa())
    assert check_profiling(header) is None
    assert table_backend(header) == "onnxruntime"
    assert table_backend({"mode": "eager", "threads": 1}) == "torch"  # older tables
    assert check_profiling({"mode": "eager"}) is None
    assert cpu_mismatch(header) is None
    assert profiling_header("openvino", precision="bf16")["precision"] == "bf16"  # recorded as asked
    with pytest.raises(ValueError, match="precision"):
        profiling_header("openvino", precision="int8")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backend": "tensorflow"}, "backend 'tensorflow' is not one of"),
        ({"precision": "int8"}, "precision 'int8'"),
        ({"backend_version": ""}, "backend_version must be a non-empty string"),
        ({"cpu_model": 3}, "cpu_model must be"),
        ({"isa": "avx2"}, "isa must be a list"),
    ],
)
def test_bad_header_fields_are_named(change: dict[str, object], message: str) -> None:
    assert message in (check_profiling({**profiling_header("openvino"), **change}) or "")


def test_another_cpu_is_named_with_its_isa_difference() -> None:
    header = {**profiling_header("openvino"), "cpu_model": "Some Other CPU", "isa": ["avx2", "amx_bf16"]}
    text = cpu_mismatch(header)
    assert text is not None and "'Some Other CPU'" in text and repr(cpu_model()) in text
    if "amx_bf16" not in cpu_isa():
        assert "lacks amx_bf16" in text


def test_level_tables_keep_and_validate_the_backend_fields(
    rand: Supernet, table: LevelTable, tmp_path: Path, for_backend: Callable[[LevelTable, str], LevelTable]
) -> None:
    path = save_level_table(for_backend(table, "onnxruntime"), tmp_path / "ort.json", supernet=rand)
    loaded = load_level_table(path, supernet=rand)
    assert table_backend(loaded.profiling) == "onnxruntime"
    assert loaded.profiling["isa"] == list(cpu_isa())
    data = json.loads(path.read_text())
    data["profiling"]["backend"] = "tensorflow"
    path.write_text(json.dumps(data))
    with pytest.raises(LevelTableError, match=r"ort.json: profiling: .*'tensorflow'"):
        load_level_table(path, supernet=rand)
