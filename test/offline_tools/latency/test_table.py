"""Tests of offline_tools.latency.table: OFA tables, prediction, errors, saving, the correction."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SearchSpace, SubnetConfig
from offline_tools.errors import LatencyTableError
from offline_tools.latency.geometry import MobileNetV3Geometry
from offline_tools.latency.table import (
    METADATA_FILE,
    LatencyCorrection,
    LatencyTable,
    fit_correction,
    summarize_samples,
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


def test_fit_correction() -> None:
    raw = [5.0, 7.0, 11.0, 20.0]
    fit = fit_correction(raw, [1.2 * x + 3.0 for x in raw])
    assert fit.scale == pytest.approx(1.2) and fit.offset_ms == pytest.approx(3.0)
    with pytest.raises(LatencyTableError):
        fit_correction([5.0, 5.0], [6.0, 7.0])


def test_summarize_samples_keeps_the_fastest_half() -> None:
    stats = summarize_samples([1.0, 2.0, 3.0, 100.0])
    assert stats.count == 2 and stats.mean == pytest.approx(1.5) and stats.std == pytest.approx(0.5)
    assert summarize_samples([4.0]).to_dict() == {"count": 1, "mean": 4.0, "std": 0.0}
    with pytest.raises(LatencyTableError, match="no timing samples"):
        summarize_samples([])
