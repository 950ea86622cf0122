"""Tests of offline_tools.latency_table: OFA tables, prediction, errors, profiling, validation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SearchSpace, SubnetConfig
from offline_tools.errors import LatencyTableError
from offline_tools.latency_table import (
    METADATA_FILE,
    LatencyCorrection,
    LatencyTable,
    MobileNetV3Geometry,
    OperatorSpec,
    fit_correction,
    main,
    profile_latency_table,
    spearman_rank_correlation,
    validate_latency_table,
)

JETSON_RESOLUTIONS = tuple(range(160, 225, 4))
TABLE_DIRS = {
    "note10": "ofa/latency_tables/note10",
    "jetson_cpu": "ofa/latency_tables/jetson_xavier_nx_cpu",
    "jetson_gpu": "ofa/latency_tables/jetson_xavier_nx_gpu",
}


def uniform(resolution: int, ks: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=resolution, ks=(ks,) * N_BLOCKS, e=(e,) * N_BLOCKS, d=(d,) * N_STAGES)


def write_synthetic_table(directory: Path, resolutions: tuple[int, ...] = (96, 128)) -> Path:
    """A complete table of the full space with made-up latencies (1 ms + 0.001 ms per key index)."""
    directory.mkdir(parents=True, exist_ok=True)
    geometry = MobileNetV3Geometry()
    for r in resolutions:
        ops = geometry.space_operators(r)
        data = {op.key: {"count": 10, "mean": 1.0 + 0.001 * i, "std": 0.01} for i, op in enumerate(ops)}
        (directory / f"{r}_lookup_table.json").write_text(json.dumps(data), encoding="utf-8")
    return directory


# ------------------------------------------------------------------------------ geometry and keys


def test_space_has_96_operators_per_resolution_with_ofa_key_format() -> None:
    geometry = MobileNetV3Geometry()
    ops = geometry.space_operators(224)
    assert len(ops) == 96
    keys = {op.key for op in ops}
    assert (
        "expanded_conv-input:56x56x32-output:28x28x48-expand:192-kernel:5-stride:2-idskip:0-se:1-hs:0" in keys
    )
    assert "Conv-input:224x224x3-output:112x112x24" in keys
    assert "Logits-input:1x1x1536-output:1000" in keys
    for op in ops:
        assert OperatorSpec.from_key(op.key) == op


def test_operator_keys_follow_the_architecture() -> None:
    table = LatencyTable({160: {}}, name="empty")
    cfg = SubnetConfig(resolution=160, ks=(7,) * 20, e=(4,) * 20, d=(2, 3, 4, 2, 3))
    keys = table.operator_keys(cfg)
    assert len(keys) == 2 + sum(cfg.d) + 4
    assert keys[0] == "Conv-input:160x160x3-output:80x80x24"
    assert (
        keys[1]
        == "expanded_conv-input:80x80x24-output:80x80x24-expand:24-kernel:3-stride:1-idskip:1-se:0-hs:0"
    )
    assert keys[2].startswith(
        "expanded_conv-input:80x80x24-output:40x40x32-expand:96-kernel:7-stride:2-idskip:0"
    )
    assert keys[-4] == "Conv_1-input:5x5x192-output:5x5x1152"
    # skipped blocks' ks/e do not change the keys
    other = SubnetConfig(resolution=160, ks=cfg.ks[:3] + (3,) + cfg.ks[4:], e=cfg.e, d=cfg.d)
    assert table.operator_keys(other) == keys


def test_malformed_keys_are_rejected() -> None:
    for bad in ("Foo-input:1x1x1-output:1x1x1", "Conv-input:axbxc-output:1x1x1", "expanded_conv-input:8x8x8"):
        with pytest.raises(LatencyTableError):
            OperatorSpec.from_key(bad)


# ------------------------------------------------------------------------------ OFA / Jetson tables


@pytest.mark.parametrize("name", sorted(TABLE_DIRS))
def test_reads_shared_tables(shared_dir: Path, name: str) -> None:
    table = LatencyTable.load(shared_dir / TABLE_DIRS[name])
    assert table.resolutions == JETSON_RESOLUTIONS
    assert all(len(table.keys(r)) == 96 for r in table.resolutions)
    space = SearchSpace(resolutions=table.resolutions)
    assert table.missing_keys(space) == {}
    table.check_space(space)
    assert table.correction is None
    assert table.predict(space.largest()) > table.predict(space.smallest()) > 0


def test_jetson_gpu_large_subnet_is_in_readme_range(shared_dir: Path) -> None:
    table = LatencyTable.load(shared_dir / TABLE_DIRS["jetson_gpu"], resolutions=[224])
    large = uniform(224, ks=7, e=6, d=3)
    assert 18.0 <= table.predict(large) <= 30.0
    assert table.predict(uniform(224, ks=7, e=6, d=4)) > table.predict(large)


def test_predict_is_the_sum_of_operator_means(shared_dir: Path) -> None:
    table = LatencyTable.load(shared_dir / TABLE_DIRS["note10"], resolutions=[160, 192, 224])
    rng = random.Random(3)
    space = SearchSpace(resolutions=table.resolutions)
    for _ in range(20):
        cfg = space.sample(rng)
        manual = sum(table.entry(cfg.resolution, key).mean for key in table.operator_keys(cfg))
        assert table.predict(cfg) == pytest.approx(manual, rel=1e-12)


# ------------------------------------------------------------------------------ errors


def test_missing_resolution(tmp_path: Path) -> None:
    table_dir = write_synthetic_table(tmp_path / "t")
    with pytest.raises(LatencyTableError, match=r"no resolution 112 .*96, 128.*profile"):
        LatencyTable.load(table_dir, resolutions=[96, 112])
    table = LatencyTable.load(table_dir)
    with pytest.raises(LatencyTableError, match="no resolution 160"):
        table.predict(uniform(160, 3, 3, 2))
    with pytest.raises(LatencyTableError, match="no resolution 160"):
        table.check_space(SearchSpace(resolutions=(128, 160)))


def test_missing_directory_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(LatencyTableError, match="does not exist"):
        LatencyTable.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatencyTableError, match="no <resolution>_lookup_table"):
        LatencyTable.load(tmp_path / "empty")


@pytest.mark.parametrize(
    ("filename", "content", "pattern"),
    [
        ("96_lookup_table.json", "{not json", "not valid JSON"),
        ("96_lookup_table.yaml", "- a\n- b\n", "non-empty mapping"),
        ("96_lookup_table.yaml", "key: [unclosed\n", "not valid YAML"),
        ("96_lookup_table.json", json.dumps({"Conv-input:96x96x3-output:48x48x24": {"count": 1}}), "'mean'"),
        ("96_lookup_table.json", json.dumps({"Softmax-input:1-output:1": {"mean": 1.0}}), "not an OFA"),
        ("96_lookup_table.json", json.dumps({"Conv-input:96x96x3-output:48x48x24": {"mean": -1}}), ">= 0"),
        ("96_lookup_table.json", json.dumps({"Conv-input:224x224x3-output:112x112x24": {"mean": 1}}), "says"),
    ],
)
def test_malformed_file(tmp_path: Path, filename: str, content: str, pattern: str) -> None:
    (tmp_path / filename).write_text(content, encoding="utf-8")
    with pytest.raises(LatencyTableError, match=pattern) as info:
        LatencyTable.load(tmp_path)
    assert filename in str(info.value)


def test_table_missing_a_key(tmp_path: Path) -> None:
    table_dir = write_synthetic_table(tmp_path / "t", resolutions=(128,))
    path = table_dir / "128_lookup_table.json"
    data = json.loads(path.read_text())
    cfg = uniform(128, ks=5, e=4, d=3)
    victim = LatencyTable.load(table_dir).operator_keys(cfg)[5]
    del data[victim]
    path.write_text(json.dumps(data))
    table = LatencyTable.load(table_dir)
    with pytest.raises(LatencyTableError) as info:
        table.predict(cfg)
    assert victim in str(info.value) and "128_lookup_table.json" in str(info.value)
    assert table.missing_keys(SearchSpace(resolutions=(128,))) == {128: [victim]}
    with pytest.raises(LatencyTableError, match="lacks 1 operator"):
        table.check_space(SearchSpace(resolutions=(128,)))


def test_bad_correction_in_metadata(tmp_path: Path) -> None:
    table_dir = write_synthetic_table(tmp_path / "t")
    (table_dir / METADATA_FILE).write_text(json.dumps({"correction": {"scale": -1, "offset_ms": 0}}))
    with pytest.raises(LatencyTableError, match="scale must be a positive"):
        LatencyTable.load(table_dir)


def test_save_roundtrip_correction_and_overwrite(tmp_path: Path) -> None:
    table = LatencyTable.load(write_synthetic_table(tmp_path / "src"))
    cfg = uniform(96, 3, 3, 2)
    corrected = table.with_correction(LatencyCorrection(scale=1.5, offset_ms=2.0))
    out = corrected.save(tmp_path / "out")
    again = LatencyTable.load(out)
    assert again.resolutions == (96, 128)
    assert again.predict_raw(cfg) == pytest.approx(table.predict(cfg))
    assert again.predict(cfg) == pytest.approx(1.5 * table.predict(cfg) + 2.0)
    assert again.predict(cfg, corrected=False) == pytest.approx(table.predict(cfg))
    with pytest.raises(LatencyTableError, match="already holds"):
        corrected.save(out)
    corrected.subset([128]).save(out, overwrite=True)
    assert LatencyTable.load(out).resolutions == (128,)
    assert not list(out.glob(".*tmp"))


# ------------------------------------------------------------------------------ statistics


def test_spearman_and_fit() -> None:
    assert spearman_rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, rel=1e-6)
    raw = [5.0, 7.0, 11.0, 20.0]
    fit = fit_correction(raw, [1.2 * x + 3.0 for x in raw])
    assert fit.scale == pytest.approx(1.2) and fit.offset_ms == pytest.approx(3.0)
    with pytest.raises(LatencyTableError):
        fit_correction([5.0, 5.0], [6.0, 7.0])


# ------------------------------------------------------------------------------ profiling and validation


def test_tiny_profile_roundtrip_and_validate(tmp_path: Path) -> None:
    small = uniform(64, ks=3, e=3, d=2)
    other = uniform(64, ks=5, e=4, d=2)
    large = uniform(64, ks=7, e=6, d=3)
    table = profile_latency_table(
        device="cpu",
        resolutions=[64],
        configs=[small, other, large],
        warmup=1,
        iterations=3,
        rounds=2,
        progress=False,
    )
    assert table.resolutions == (64,)
    assert table.metadata["mode"] == "eager" and table.metadata["threads"] == 1
    assert table.metadata["subset"] is True
    assert all(table.entry(64, k).count >= 1 for k in table.keys(64))
    out = table.save(tmp_path / "cpu")
    loaded = LatencyTable.load(out)
    assert loaded.predict(small) == pytest.approx(table.predict(small))
    assert loaded.metadata["torch"] and loaded.metadata["device_name"]
    assert json.loads((out / METADATA_FILE).read_text())["format"] == "dynamic_ofa_ros.latency_table"

    report = validate_latency_table(
        loaded,
        configs=[small, other, large],
        warmup=1,
        iterations=2,
        rounds=1,
        fit=True,
        paired=True,
        progress=False,
    )
    assert "fitted_correction" in report or "fit_error" in report
    for field in ("n_subnets", "device", "device_name", "mode", "threads", "clock", "raw", "subnets"):
        assert field in report
    for block in ("raw", "raw_wall", "paired"):
        assert set(report[block]) >= {"mean_abs_pct_error", "max_abs_pct_error", "spearman"}
    assert report["n_subnets"] == 3 and len(report["subnets"]) == 3
    assert report["subnets"][0]["measured_ms"] > 0


def test_profile_bad_options() -> None:
    with pytest.raises(LatencyTableError, match="CUDA"):
        profile_latency_table(device="cpu", mode="cuda_graph", resolutions=[64], progress=False)
    with pytest.raises(LatencyTableError, match="no resolutions"):
        profile_latency_table(resolutions=[], progress=False)
    with pytest.raises(LatencyTableError, match="resolution 63"):
        profile_latency_table(resolutions=[63], progress=False)


def test_cli_reports_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--table", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.cuda
def test_cuda_graph_profile_and_validate_tiny(tmp_path: Path) -> None:
    small = uniform(64, ks=3, e=3, d=2)
    large = uniform(64, ks=7, e=6, d=3)
    table = profile_latency_table(
        device="cuda",
        mode="cuda_graph",
        resolutions=[64],
        configs=[small, large],
        warmup=2,
        iterations=4,
        rounds=2,
        progress=False,
    )
    assert table.metadata["mode"] == "cuda_graph" and table.metadata["clock"] == "cuda_events"
    assert 0 < table.predict(small) < table.predict(large)
    loaded = LatencyTable.load(table.save(tmp_path / "gpu"))
    report = validate_latency_table(
        loaded,
        configs=[small, large],
        device="cuda",
        mode="cuda_graph",
        iterations=4,
        rounds=2,
        paired=True,
        progress=False,
    )
    assert report["clock"] == "cuda_events" and report["subnets"][1]["measured_ms"] > 0
    assert "paired" in report
