"""Level-table format: a real 3-level CPU table from a random supernet, and every validation error.

The table is built by ``table_builder.build_level_table`` (extraction, BN calibration on synthetic
images, profiling, MACs); its accuracy fields are null and it is flagged meaningless.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.errors import LevelTableError, UnknownLevelError
from dynamic_ofa_ros.levels import (
    Level,
    LevelTable,
    bn_path_for,
    load_level_table,
    save_level_table,
)
from dynamic_ofa_ros.supernet import Supernet, load_supernet
from dynamic_ofa_ros.table_builder import build_level_table
from dynamic_ofa_ros.timing import sha256_file

torch.set_num_threads(1)


def uniform(r: int, k: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=r, ks=(k,) * 20, e=(e,) * 20, d=(d,) * 5)


CONFIGS = [uniform(128, 3, 3, 2), uniform(160, 5, 4, 3), uniform(192, 7, 6, 4)]


@pytest.fixture(scope="module")
def table(rand: Supernet) -> LevelTable:
    return build_level_table(rand, CONFIGS, warmup=1, iterations=3, threads=1)


@pytest.fixture
def saved(table: LevelTable, rand: Supernet, tmp_path: Path) -> Path:
    return save_level_table(table, tmp_path / "cpu.json", supernet=rand)


def rewrite(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_roundtrip(saved: Path, rand: Supernet, table: LevelTable) -> None:
    loaded = load_level_table(saved, supernet=rand, expected_device="cpu")
    assert loaded.numbers == [1, 2, 3]
    assert [lv.config for lv in loaded.levels] == [lv.config for lv in table.levels]
    assert loaded.meaningful_accuracy is False
    assert loaded.supernet["sha256"] == rand.sha256
    assert bn_path_for(saved).name == "cpu.bn.safetensors" and bn_path_for(saved).exists()
    assert loaded.bn is not None and table.bn is not None
    for n in loaded.numbers:
        assert loaded.bn[n].keys() == table.bn[n].keys()
        assert all(torch.equal(loaded.bn[n][k], table.bn[n][k]) for k in table.bn[n])
    lat = [lv.latency_ms for lv in loaded.levels]
    assert lat == sorted(lat) and all(lv.macs_m and lv.macs_m > 0 for lv in loaded.levels)
    assert all(lv.accuracy is None for lv in loaded.levels)
    with pytest.raises(UnknownLevelError, match="levels 1..3"):
        loaded.level(4)
    assert loaded.level(2).resolution == loaded.levels[1].config.resolution


def test_without_supernet_still_checks_structure(saved: Path) -> None:
    assert load_level_table(saved).numbers == [1, 2, 3]


def test_extra_fields_survive_roundtrip(saved: Path, rand: Supernet, tmp_path: Path) -> None:
    rewrite(saved, lambda d: (d.__setitem__("notes", "x"), d["levels"][0].__setitem__("summary", "s")))
    loaded = load_level_table(saved, supernet=rand)
    out = save_level_table(loaded, tmp_path / "again.json")
    again = json.loads(out.read_text())
    assert again["notes"] == "x" and again["levels"][0]["summary"] == "s"


BAD_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("format", lambda d: d.__setitem__("format", "other"), r"format: is 'other'"),
    ("version", lambda d: d.__setitem__("version", 2), r"version: 2 is not supported"),
    ("device", lambda d: d.__delitem__("device"), r"device: must be a non-empty string"),
    ("supernet sha", lambda d: d["supernet"].__setitem__("sha256", "abc"), r"supernet\.sha256: 'abc' is not"),
    ("levels empty", lambda d: d.__setitem__("levels", []), r"levels: must be a non-empty list"),
    (
        "ks length",
        lambda d: d["levels"][1].__setitem__("ks", [3] * 19),
        r"levels\[1\]\.ks: expected 20 integers",
    ),
    (
        "ks type",
        lambda d: d["levels"][0]["ks"].__setitem__(3, "a"),
        r"levels\[0\]\.ks\[3\]: 'a' is not an integer",
    ),
    ("ks value", lambda d: d["levels"][2]["ks"].__setitem__(0, 9), r"levels\[2\]: ks\[0\]=9 is not one of"),
    ("d value", lambda d: d["levels"][2]["d"].__setitem__(4, 1), r"levels\[2\]: d\[4\]=1 is not one of"),
    ("resolution", lambda d: d["levels"][0].__setitem__("resolution", "big"), r"levels\[0\]\.resolution"),
    (
        "numbering",
        lambda d: d["levels"][1].__setitem__("level", 5),
        r"levels\[1\]\.level: is 5; levels must be",
    ),
    (
        "latency order",
        lambda d: d["levels"][2].__setitem__("latency_ms", d["levels"][1]["latency_ms"]),
        r"levels\[2\]: level 3 \(.* ms\) is not slower than level 2",
    ),
    ("latency negative", lambda d: d["levels"][0].__setitem__("latency_ms", -1), r"levels\[0\]\.latency_ms"),
    (
        "latency missing",
        lambda d: d["levels"][0].__delitem__("latency_ms"),
        r"levels\[0\]\.latency_ms: missing",
    ),
    (
        "p95 below p50",
        lambda d: d["levels"][0].__setitem__("latency_p95_ms", d["levels"][0]["latency_ms"] / 2),
        r"levels\[0\]\.latency_p95_ms: .* is below latency_ms",
    ),
    (
        "accuracy order",
        lambda d: [
            lv.update(accuracy=a, accuracy_dataset="x")
            for lv, a in zip(d["levels"], (70, 75, 74), strict=True)
        ],
        r"levels\[2\]: level 3 \(74 %\) is not more accurate than level 2 \(75 %\)",
    ),
    (
        "accuracy partial",
        lambda d: d["levels"][0].update(accuracy=70.0, accuracy_dataset="x"),
        r"levels\[1\]: has neither accuracy nor predicted_accuracy",
    ),
    (
        "accuracy range",
        lambda d: d["levels"][0].update(accuracy=170.0, accuracy_dataset="x"),
        r"levels\[0\]\.accuracy: 170.0 must be a top-1 percentage",
    ),
    (
        "accuracy dataset",
        lambda d: [lv.update(accuracy=a) for lv, a in zip(d["levels"], (70, 75, 80), strict=True)],
        r"levels\[0\]\.accuracy_dataset: must name the data set",
    ),
    (
        "nan",
        lambda d: d["levels"][0].__setitem__("macs_m", float("nan")),
        r"levels\[0\]\.macs_m: nan is not a finite",
    ),
    (
        "duplicate",
        lambda d: d["levels"][2].update({k: d["levels"][1][k] for k in ("resolution", "ks", "e", "d")}),
        r"levels\[2\]: is the same network as levels\[1\]",
    ),
    (
        "bn_file path",
        lambda d: d.__setitem__("bn_file", "../x.safetensors"),
        r"bn_file: '\.\./x\.safetensors' must be",
    ),
    (
        "bn sha",
        lambda d: d.__setitem__("bn_sha256", "0" * 64),
        r"BN file cpu\.bn\.safetensors has sha256 .* table expects 0000",
    ),
]


@pytest.mark.parametrize(("name", "edit", "message"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_table(
    saved: Path, rand: Supernet, name: str, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    rewrite(saved, edit)
    with pytest.raises(LevelTableError, match=message):
        load_level_table(saved, supernet=rand)


def test_invalid_json_and_missing_file(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(LevelTableError, match="not found; build one with dofa-levels build"):
        load_level_table(tmp_path / "none.json")
    saved.write_text('{"format": "dynamic_ofa_ros.level_table",\n  "version": 1,,}')
    with pytest.raises(LevelTableError, match=r"line 2 column 16: invalid JSON"):
        load_level_table(saved)


def test_missing_and_truncated_bn_file(saved: Path, rand: Supernet) -> None:
    bn = bn_path_for(saved)
    data = bn.read_bytes()
    bn.write_bytes(data[: len(data) // 2])
    with pytest.raises(LevelTableError, match="truncated, modified or from another build"):
        load_level_table(saved, supernet=rand)
    # truncated but with a matching checksum: the safetensors parser rejects it
    rewrite(saved, lambda d: d.__setitem__("bn_sha256", sha256_file(bn)))
    with pytest.raises(LevelTableError, match="not a valid safetensors file"):
        load_level_table(saved, supernet=rand)
    bn.unlink()
    with pytest.raises(LevelTableError, match="BN file .* is missing"):
        load_level_table(saved, supernet=rand)


def _swap_bn(saved: Path, mutate: Callable[[dict[str, torch.Tensor]], None]) -> None:
    bn = bn_path_for(saved)
    tensors = load_file(str(bn))
    mutate(tensors)
    save_file(tensors, str(bn))
    rewrite(saved, lambda d: d.__setitem__("bn_sha256", sha256_file(bn)))


def test_bn_shape_mismatch_names_level_and_layer(saved: Path, rand: Supernet) -> None:
    key = "level1/blocks.1.conv.depth_conv.bn.running_var"

    def widen(t: dict[str, torch.Tensor]) -> None:
        t[key] = torch.ones(t[key].shape[0] + 8)

    _swap_bn(saved, widen)
    with pytest.raises(
        LevelTableError, match=r"levels\[0\] \(level 1\).*blocks\.1\.conv\.depth_conv\.bn\.running_var"
    ):
        load_level_table(saved, supernet=rand)


def test_bn_missing_level_and_unknown_level(saved: Path, rand: Supernet) -> None:
    _swap_bn(saved, lambda t: [t.pop(k) for k in list(t) if k.startswith("level2/")])
    with pytest.raises(LevelTableError, match="no BN statistics for level 2"):
        load_level_table(saved, supernet=rand)


def test_bn_unknown_level(saved: Path, rand: Supernet) -> None:
    _swap_bn(saved, lambda t: t.__setitem__("level9/first_conv.bn.running_mean", torch.zeros(24)))
    with pytest.raises(LevelTableError, match="belongs to level 9, which the table does not have"):
        load_level_table(saved, supernet=rand)


def test_bn_nan(saved: Path, rand: Supernet) -> None:
    def poison(t: dict[str, torch.Tensor]) -> None:
        t["level3/first_conv.bn.running_mean"][0] = float("nan")

    _swap_bn(saved, poison)
    with pytest.raises(LevelTableError, match=r"levels\[2\] \(level 3\).*NaN"):
        load_level_table(saved, supernet=rand)


def test_other_supernet_is_rejected(saved: Path) -> None:
    other = load_supernet("random:1", allow_random=True)
    with pytest.raises(
        LevelTableError,
        match=r"this table was built for supernet .* from random:0 .*the loaded model is .* from random:1 .*"
        r"rebuild with dofa-levels build or pass the matching model",
    ):
        load_level_table(saved, supernet=other)


def test_device_mismatch(saved: Path) -> None:
    with pytest.raises(
        LevelTableError, match=r"profiled on 'cpu' .* used on 'cuda:1'; load config/levels/cuda\.json"
    ):
        load_level_table(saved, expected_device="cuda:1")
    assert load_level_table(saved, expected_device="CPU").device == "cpu"


def test_resolution_outside_trained_range(saved: Path, rand: Supernet) -> None:
    narrow = copy.copy(rand)
    narrow.resolutions = (128, 160)
    with pytest.raises(LevelTableError, match=r"levels\[2\]: resolution 192 is not in the search space"):
        load_level_table(saved, supernet=narrow)


def test_family_without_bn(table: LevelTable, tmp_path: Path) -> None:
    family = copy.copy(table)
    family.bn = None
    path = save_level_table(family, tmp_path / "family.json")
    assert json.loads(path.read_text())["bn_file"] is None
    assert not bn_path_for(path).exists()
    with pytest.raises(LevelTableError, match="level family without BN statistics"):
        load_level_table(path)
    assert load_level_table(path, require_bn=False).bn is None


def test_save_validates_and_writes_nothing_on_error(table: LevelTable, tmp_path: Path) -> None:
    bad = copy.copy(table)
    lv = table.levels[1]
    bad.levels = [table.levels[0], Level(level=2, config=lv.config, latency_ms=0.5), table.levels[2]]
    target = tmp_path / "bad.json"
    with pytest.raises(LevelTableError, match="is not slower than level 1"):
        save_level_table(bad, target)
    assert not target.exists() and not bn_path_for(target).exists()
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic_over_existing(saved: Path, table: LevelTable) -> None:
    before = saved.read_text()
    bad = copy.copy(table)
    bad.levels = list(reversed(table.levels))
    with pytest.raises(LevelTableError):
        save_level_table(bad, saved)
    assert saved.read_text() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["cpu.bn.safetensors", "cpu.json"]


def test_copy_elsewhere_keeps_working(saved: Path, tmp_path: Path, rand: Supernet) -> None:
    dest = tmp_path / "moved"
    dest.mkdir()
    shutil.copy(saved, dest / "cpu.json")
    shutil.copy(bn_path_for(saved), dest / "cpu.bn.safetensors")
    assert load_level_table(dest / "cpu.json", supernet=rand).numbers == [1, 2, 3]
