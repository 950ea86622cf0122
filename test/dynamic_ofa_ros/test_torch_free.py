"""The runtime without torch: NumPy checksum, torch-free tables and layout, lazy super-networks.

Real components only: the shipped embedded model and CPU tables, a random super-network saved as
a checkpoint, and -- in fresh interpreters -- a ``DynamicClassifier`` built from the shipped
OpenVINO table classifying real Imagenette photos with a cold and then a warm compiled-level
cache: the warm one must never import torch and must give the torch-loaded path's answers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy

from dynamic_ofa_ros import embedded
from dynamic_ofa_ros.arch import SearchSpace
from dynamic_ofa_ros.backends import installed
from dynamic_ofa_ros.bn import expected_bn_shapes
from dynamic_ofa_ros.checksum import array_state_sha256
from dynamic_ofa_ros.classifier import ClassifierConfig, DynamicClassifier
from dynamic_ofa_ros.errors import LevelTableError, ModelSourceError
from dynamic_ofa_ros.image_input import decode_compressed
from dynamic_ofa_ros.levels import BNStatistics, bn_path_for, load_level_table
from dynamic_ofa_ros.ofa_compat import make_divisible as ofa_make_divisible
from dynamic_ofa_ros.ofa_layout import bn_shapes, make_divisible
from dynamic_ofa_ros.paths import config_file
from dynamic_ofa_ros.supernet import Supernet, SupernetSource, load_supernet, open_supernet, state_dict_sha256
from dynamic_ofa_ros.supernet_index import INDEX_FILE
from dynamic_ofa_ros.timing import sha256_file

torch.set_num_threads(1)

CPU_TABLE = config_file("levels/cpu.json")
TORCH_TABLE = config_file("levels/cpu-torch.json")


@pytest.fixture(scope="module")
def model() -> Supernet:
    return load_supernet("embedded")


def test_numpy_checksum_equals_torch_on_real_bn_tensors() -> None:
    for path in (CPU_TABLE, TORCH_TABLE):
        table = load_level_table(path)
        assert isinstance(table.bn, BNStatistics)
        for n in table.numbers:
            arrays = table.bn_arrays(n)
            tensors = table.bn[n]
            assert all(isinstance(t, torch.Tensor) for t in tensors.values())
            assert array_state_sha256(arrays) == state_dict_sha256(tensors)
            with_counter = {**arrays, "first_conv.bn.num_batches_tracked": np.array(7, dtype=np.int64)}
            assert array_state_sha256(with_counter) == array_state_sha256(arrays)
    nudged = dict(arrays)
    key = next(iter(nudged))
    nudged[key] = nudged[key] + np.float32(1e-3)
    assert array_state_sha256(nudged) != array_state_sha256(arrays)


def test_numpy_checksum_of_the_embedded_shards_is_the_models(model: Supernet) -> None:
    manifest = embedded.read_manifest()
    state: dict[str, np.ndarray] = {}
    for shard in manifest["shards"]:
        state.update(load_numpy(str(embedded.EMBEDDED_DIR / shard["file"])))
    assert {a.dtype for a in state.values()} == {np.dtype(np.float16)}  # hashed as their float32 values
    assert array_state_sha256(state) == manifest["state_dict_sha256"] == model.sha256
    assert state_dict_sha256(model.net) == model.sha256


def test_layout_bn_shapes_equal_the_networks(model: Supernet) -> None:
    assert all(make_divisible(v / 7) == ofa_make_divisible(v / 7, 8) for v in range(1, 20_000))
    rng = random.Random(1)
    configs = [SearchSpace().sample(rng) for _ in range(20)] + [
        lv.config for lv in load_level_table(CPU_TABLE).levels
    ]
    for cfg in configs:
        computed = bn_shapes(cfg, width_mult=model.width_mult, expand_ratio_list=(3, 4, 6))
        assert computed == expected_bn_shapes(model.net, cfg)


def test_open_embedded_is_lazy_and_identical(model: Supernet) -> None:
    source = open_supernet("embedded")
    assert not source.loaded
    assert source.identity() == model.identity()
    assert source.search_space() == model.search_space()
    assert source.n_classes == model.n_classes and source.width_mult == model.width_mult
    table = load_level_table(CPU_TABLE, supernet=source, expected_device="cpu")
    assert table.numbers == load_level_table(CPU_TABLE, supernet=model).numbers
    assert not source.loaded  # every check of the table ran without the weights
    loaded = source.load()
    assert source.loaded and loaded.sha256 == model.sha256 and source.load() is loaded


def test_open_embedded_verifies_the_shards(tmp_path: Path) -> None:
    folder = tmp_path / "emb"
    shutil.copytree(embedded.EMBEDDED_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shard = folder / embedded.read_manifest(folder)["shards"][0]["file"]
    assert open_supernet(folder).sha256 == embedded.read_manifest(folder)["state_dict_sha256"]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ModelSourceError, match="is corrupt or truncated"):
        open_supernet(folder)


def test_a_table_checked_against_an_unloaded_source_names_a_bad_shape(tmp_path: Path) -> None:
    table_path = tmp_path / "cpu.json"
    shutil.copy(CPU_TABLE, table_path)
    bn = bn_path_for(table_path)
    tensors = load_numpy(str(bn_path_for(CPU_TABLE)))
    key = "level1/blocks.1.conv.depth_conv.bn.running_var"
    tensors[key] = np.ones(tensors[key].shape[0] + 8, dtype=np.float32)
    save_numpy(tensors, str(bn))
    data = json.loads(table_path.read_text())
    data["bn_sha256"] = sha256_file(bn)
    table_path.write_text(json.dumps(data))
    source = open_supernet("embedded")
    with pytest.raises(LevelTableError, match=r"levels\[0\] \(level 1\).*blocks\.1\.conv\.depth_conv\.bn"):
        load_level_table(table_path, supernet=source)
    assert not source.loaded


def _checkpoint(model: Supernet, path: Path, *, nudge: float = 0.0) -> Path:
    state = {
        k: v.detach().float().numpy().copy()
        for k, v in model.net.state_dict().items()
        if v.is_floating_point()
    }
    state["first_conv.conv.weight"][0, 0, 0, 0] += nudge
    save_numpy(state, str(path), metadata={"dynamic_ofa_ros": json.dumps({"resolutions": [128, 160]})})
    return path


def test_checkpoints_are_identified_by_a_verified_index(
    model: Supernet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOFA_CACHE_DIR", str(tmp_path / "cache"))
    path = _checkpoint(model, tmp_path / "weights.safetensors")
    first = open_supernet(path)  # never seen: loaded now (torch), then recorded
    assert first.loaded and first.sha256 == model.sha256
    index = tmp_path / "cache" / INDEX_FILE
    assert index.is_file()
    second = open_supernet(path)
    assert not second.loaded
    assert second.identity() == first.identity() and second.resolutions == (128, 160)
    assert second.search_space() == first.search_space()
    # an index whose checksum does not match its entries is ignored (and rewritten by the next load)
    data = json.loads(index.read_text())
    entry = next(iter(data["entries"].values()))
    entry["identity"]["sha256"] = "0" * 64
    index.write_text(json.dumps(data))
    third = open_supernet(path)
    assert third.loaded and third.sha256 == model.sha256
    assert not open_supernet(path).loaded  # rebuilt
    index.write_text("{ not json")
    assert open_supernet(path).loaded
    # other bytes are another model: never the recorded identity
    lazy = open_supernet(path)
    assert not lazy.loaded
    _checkpoint(model, path, nudge=0.5)
    changed = open_supernet(path)
    assert changed.loaded and changed.sha256 != model.sha256
    with pytest.raises(ModelSourceError, match="changed since"):
        lazy.load()


def test_random_weights_are_refused_or_loaded(model: Supernet) -> None:
    with pytest.raises(ModelSourceError, match="allow_random"):
        open_supernet("random")
    assert isinstance(open_supernet("random:0", allow_random=True), SupernetSource)


# ------------------------------------------------------------------------- fresh interpreters

_CLASSIFY = """
import json, sys, time
started = time.perf_counter()
import numpy as np
from dynamic_ofa_ros.classifier import ClassifierConfig, DynamicClassifier
from dynamic_ofa_ros.levels import load_level_table
from dynamic_ofa_ros.supernet import open_supernet

source = open_supernet("embedded")
table = load_level_table(sys.argv[1], supernet=source, expected_device="cpu")
classifier = DynamicClassifier.from_table(source, table, ClassifierConfig(backend="openvino"))
photos = np.load(sys.argv[2])
top1 = {n: [int(np.argmax(classifier.engine.infer(p, level=n).probs)) for p in photos] for n in table.numbers}
first = classifier.classify(photos[0])
print(json.dumps({
    "top1": top1,
    "probs": first.probs.tolist(),
    "level": first.level,
    "cache": [e["cache"] for e in classifier.engine.execution.values()],
    "preprocessing": classifier.engine.preprocessing,
    "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
    "loaded": source.loaded,
    "seconds": time.perf_counter() - started,
}))
"""


def _classify_in_fresh_interpreter(photos: Path, cache: Path) -> dict[str, Any]:
    env = {**os.environ, "DOFA_CACHE_DIR": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", _CLASSIFY, str(CPU_TABLE), str(photos)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def photo_file(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight Imagenette validation photos as one (8, H, W, 3) uint8 .npy file."""
    archive_path = shared_dir / "datasets" / "imagenette" / "val-224px.zip"
    if not archive_path.is_file():
        pytest.skip(f"{archive_path} not found: real photos are needed")
    with zipfile.ZipFile(archive_path) as archive:
        names = sorted(n for n in archive.namelist() if n.lower().endswith((".jpeg", ".jpg")))
        picked = names[:: len(names) // 8][:8]
        photos = [decode_compressed(archive.read(n), fmt="jpeg") for n in picked]
    side = min(min(p.shape[0], p.shape[1]) for p in photos)
    path = tmp_path_factory.mktemp("photos") / "photos.npy"
    np.save(path, np.stack([p[:side, :side] for p in photos]))
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compiled")


@pytest.fixture(scope="module")
def cold(photo_file: Path, cache_dir: Path) -> dict[str, Any]:
    """A fresh interpreter with an empty cache: exports (torch) and compiles every level."""
    if not installed("openvino"):
        pytest.skip("openvino is not installed")
    return _classify_in_fresh_interpreter(photo_file, cache_dir)


@pytest.mark.slow
def test_a_cold_cache_loads_torch_and_builds(cold: dict[str, Any]) -> None:
    assert "torch" in cold["torch"] and cold["loaded"]
    assert set(cold["cache"]) == {"built"}


@pytest.mark.slow
def test_a_warm_start_never_imports_torch_and_answers_the_same(
    cold: dict[str, Any], photo_file: Path, cache_dir: Path, model: Supernet, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = _classify_in_fresh_interpreter(photo_file, cache_dir)
    assert warm["torch"] == [], f"torch modules imported on a warm start: {warm['torch'][:5]}"
    assert not warm["loaded"] and set(warm["cache"]) == {"hit"}
    assert warm["preprocessing"] == "numpy"
    assert warm["top1"] == cold["top1"]
    # the torch-loaded path in this process (loaded model, torch preprocessing), same cache
    table = load_level_table(CPU_TABLE, supernet=model, expected_device="cpu")
    monkeypatch.setenv("DOFA_CACHE_DIR", str(cache_dir))
    in_torch = DynamicClassifier.from_table(model, table, ClassifierConfig(backend="openvino"))
    assert {e["cache"] for e in in_torch.engine.execution.values()} == {"hit"}
    assert in_torch.engine.preprocessing == "torch"
    photos = np.load(photo_file)
    expected = {
        str(n): [int(np.argmax(in_torch.engine.infer(p, level=n).probs)) for p in photos]
        for n in table.numbers
    }
    assert warm["top1"] == expected
    first = in_torch.classify(photos[0])
    assert warm["level"] == first.level
    # the two preprocessings give the same bytes; normalised values differ by float rounding only
    np.testing.assert_allclose(np.asarray(warm["probs"]), first.probs, rtol=0, atol=1e-5)


def test_auto_device_without_a_gpu_driver_imports_no_torch() -> None:
    from dynamic_ofa_ros import paths

    if any(Path(p).exists() for p in paths._GPU_DRIVER_FILES):
        pytest.skip("a GPU driver is present: auto asks torch")
    code = (
        "import sys; from dynamic_ofa_ros.paths import resolve_device; "
        "print(resolve_device('auto'), 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["cpu", "False"]


def test_the_index_keeps_the_most_recent_files(tmp_path: Path) -> None:
    from dynamic_ofa_ros.supernet_index import MAX_ENTRIES, FileStamp, IdentityIndex

    index = IdentityIndex(tmp_path)
    identity = open_supernet("embedded").record()
    stamps = []
    for i in range(MAX_ENTRIES + 3):
        path = tmp_path / f"w{i}.bin"
        path.write_bytes(bytes([i]) * 10)
        stamps.append(FileStamp.of(path))
        assert index.record(path, stamps[-1], {**identity, "name": f"model {i}"})
    assert all(index.lookup(s) is None for s in stamps[:3])
    assert [index.lookup(s)["name"] for s in stamps[3:]] == [f"model {i}" for i in range(3, MAX_ENTRIES + 3)]
    changed = tmp_path / "w3.bin"
    changed.write_bytes(b"other bytes")
    assert index.lookup(FileStamp.of(changed)) is None
    assert not index.record(changed, stamps[3], identity)  # changed since it was stamped: not recorded
