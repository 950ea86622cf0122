"""Super-network sources, the weights checksum and the embedded-model export/load round trip.

Random weights only (the OFA ImageNet weights cannot be downloaded here); nothing is timed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dynamic_ofa_ros import embedded
from dynamic_ofa_ros.errors import DofaError, ModelSourceError
from dynamic_ofa_ros.supernet import (
    Supernet,
    cache_dir,
    export_embedded,
    load_supernet,
    ofa_zoo_cache_path,
    state_dict_sha256,
)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints loaded here are recorded in a temporary identity index, not the user's cache."""
    monkeypatch.setenv("DOFA_CACHE_DIR", str(tmp_path / "compiled"))


def test_random_needs_explicit_permission() -> None:
    with pytest.raises(ModelSourceError, match="allow_random"):
        load_supernet("random")


def test_random_is_deterministic_and_flagged(rand: Supernet) -> None:
    again = load_supernet("random:0", allow_random=True)
    assert again.sha256 == rand.sha256
    assert rand.meaningful_accuracy is False
    assert rand.source == "random:0"
    other = load_supernet("random:1", allow_random=True)
    assert other.sha256 != rand.sha256
    assert sum(p.numel() for p in rand.net.parameters()) > 10_000_000


def test_sha_ignores_active_subnet_and_integer_buffers(rand: Supernet) -> None:
    net = rand.net
    net.set_active_subnet(ks=[3] * 20, e=[3] * 20, d=[2] * 5)  # type: ignore[operator]
    assert state_dict_sha256(net) == rand.sha256
    net.set_active_subnet(ks=[7] * 20, e=[6] * 20, d=[4] * 5)  # type: ignore[operator]
    state = dict(net.state_dict())
    state["first_conv.bn.num_batches_tracked"] = torch.tensor(123)
    assert state_dict_sha256(state) == rand.sha256
    state["first_conv.bn.running_mean"] = state["first_conv.bn.running_mean"] + 1e-3
    assert state_dict_sha256(state) != rand.sha256


def test_embedded_missing_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if (embedded.EMBEDDED_DIR / embedded.MANIFEST_NAME).exists():
        pytest.skip("the embedded model is present in this checkout")
    with pytest.raises(ModelSourceError, match="embedded model is not in this installation yet"):
        load_supernet("embedded")


def test_shipped_embedded_model_verifies() -> None:
    if not (embedded.EMBEDDED_DIR / embedded.MANIFEST_NAME).exists():
        pytest.skip("the embedded model is not in this checkout yet (offline_tools/train_supernet.py)")
    manifest = embedded.read_manifest()
    model = load_supernet("embedded")
    assert model.sha256 == manifest["state_dict_sha256"]
    assert model.meaningful_accuracy and model.source == "embedded"
    assert model.resolutions == tuple(sorted(manifest["resolutions"]))
    for shard in manifest["shards"]:
        assert shard["bytes"] <= 15 * 2**20, f"{shard['file']} exceeds 15 MiB"
    assert model.search_space().contains(model.search_space().smallest())


def test_export_and_load_embedded_layout(rand: Supernet, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    manifest = export_embedded(
        rand.net,
        out,
        metadata={"resolutions": [128, 160], "dataset": "unit test", "training": {"seed": 0}},
        shard_mb=8,
    )
    assert len(manifest["shards"]) >= 2
    assert all(s["bytes"] <= 8 * 2**20 for s in manifest["shards"])
    assert manifest["dtype"] == "float16" and manifest["version"] == 1
    loaded = load_supernet(out)
    assert loaded.sha256 == manifest["state_dict_sha256"]
    assert loaded.resolutions == (128, 160)
    assert loaded.meaningful_accuracy is True
    # fp16 rounding of the random weights changes them a little
    diff = max(
        float((a - b).abs().max())
        for a, b in zip(loaded.net.state_dict().values(), rand.net.state_dict().values(), strict=True)
    )
    assert 0 < diff < 1e-2

    # a re-export with bigger shards removes stale shards
    export_embedded(
        rand.net, out, metadata={"resolutions": [128], "dataset": "x", "training": {}}, shard_mb=64
    )
    assert sorted(p.name for p in out.glob("supernet-*.safetensors")) == ["supernet-0000.safetensors"]


def test_embedded_corrupt_shard_is_named(rand: Supernet, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    export_embedded(
        rand.net, out, metadata={"resolutions": [128], "dataset": "x", "training": {}}, shard_mb=8
    )
    shard = out / "supernet-0001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ModelSourceError, match=r"supernet-0001\.safetensors is corrupt or truncated"):
        load_supernet(out)
    shard.unlink()
    with pytest.raises(ModelSourceError, match=r"supernet-0001\.safetensors is missing"):
        load_supernet(out)


def test_embedded_manifest_validation(rand: Supernet, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    export_embedded(rand.net, out, metadata={"resolutions": [128], "dataset": "x", "training": {}})
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["version"] = 2
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelSourceError, match="version 2 is not supported"):
        load_supernet(out)
    del manifest["shards"]
    manifest["version"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelSourceError, match="'shards' is missing"):
        load_supernet(out)


def test_export_rejects_fp16_overflow(rand: Supernet, tmp_path: Path) -> None:
    net = load_supernet("random:3", allow_random=True).net
    with torch.no_grad():
        net.first_conv.conv.weight[0, 0, 0, 0] = 1e6  # type: ignore[index,union-attr]
    with pytest.raises(ModelSourceError, match="beyond float16"):
        export_embedded(net, tmp_path / "x", metadata={"resolutions": [128], "dataset": "x", "training": {}})
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_checkpoint_formats(rand: Supernet, tmp_path: Path) -> None:
    state = rand.net.state_dict()
    # OFA's own layout: legacy (non-zip) torch.save of {"state_dict": ...}
    legacy = tmp_path / "ofa.pth"
    torch.save({"state_dict": state}, legacy, _use_new_zipfile_serialization=False)
    assert load_supernet(legacy).sha256 == rand.sha256
    # a plain state dict with DataParallel prefixes
    plain = tmp_path / "plain.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, plain)
    assert load_supernet(plain).sha256 == rand.sha256
    # safetensors with our metadata
    st = tmp_path / "w.safetensors"
    floats = {k: v.contiguous() for k, v in state.items() if v.is_floating_point()}
    save_file(floats, str(st), metadata={"dynamic_ofa_ros": json.dumps({"resolutions": [128, 144]})})
    loaded = load_supernet(st)
    assert loaded.sha256 == rand.sha256 and loaded.resolutions == (128, 144)


def test_checkpoint_errors(rand: Supernet, tmp_path: Path) -> None:
    with pytest.raises(
        ModelSourceError, match="neither 'embedded', 'ofa_zoo', 'random' nor an existing file"
    ):
        load_supernet(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelSourceError, match="weights_only=True"):
        load_supernet(bad)
    partial = tmp_path / "partial.pt"
    state = {k: v for k, v in rand.net.state_dict().items() if not k.startswith("classifier")}
    torch.save(state, partial)
    with pytest.raises(ModelSourceError, match="missing"):
        load_supernet(partial)
    wrong = tmp_path / "wrong.pt"
    state = dict(rand.net.state_dict())
    state["first_conv.conv.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, wrong)
    with pytest.raises(ModelSourceError, match="another architecture"):
        load_supernet(wrong)


def test_ofa_zoo_offline_message_and_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rand: Supernet
) -> None:
    monkeypatch.setenv("DOFA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cache_dir() == tmp_path / "cache"
    with pytest.raises(ModelSourceError, match="downloading is disabled"):
        load_supernet("ofa_zoo", download=False)
    # a cached file in OFA's own format is used without network access
    target = ofa_zoo_cache_path()
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": rand.net.state_dict()}, target, _use_new_zipfile_serialization=False)
    zoo = load_supernet("ofa_zoo", download=False)
    assert zoo.sha256 == rand.sha256 and zoo.meaningful_accuracy and zoo.source == "ofa_zoo"
    assert not (tmp_path / ".torch").exists(), "nothing may be cached in the working directory"


def test_ofa_imports_without_gdown() -> None:
    import os
    import subprocess

    import dynamic_ofa_ros

    code = (
        "import sys; sys.modules['gdown'] = None\n"  # `import gdown` now raises ImportError
        "from dynamic_ofa_ros import ofa_compat\n"
        "ofa_compat.import_ofa()\n"
        "print('stand-in' if sys.modules['gdown'].__dict__.get('__dofa_stand_in__') else 'real')\n"
    )
    env = dict(os.environ)
    root = str(Path(dynamic_ofa_ros.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stand-in"


def test_errors_are_dofa_errors() -> None:
    assert issubclass(ModelSourceError, DofaError)
