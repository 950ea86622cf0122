"""The compiled-level cache: keyed entries, verified on load, rebuilt when corrupt or stale."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dynamic_ofa_ros.backends.cache import MANIFEST, MODEL_FILE, ArtefactCache, CacheKey, cache_root

KEY = CacheKey(
    supernet_sha256="a" * 64,
    architecture="r128-d22222-33333333333333333333",
    bn_sha256="b" * 64,
    exporter="torch 2.x opset 17 format 1",
    backend="onnxruntime",
    backend_version="1.0",
    precision="f32",
)


class Builder:
    """Counts builds; returns different bytes per key so entries can be told apart."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, payload: bytes = b"model") -> bytes:
        self.calls += 1
        return payload + b"-" + str(self.calls).encode()


def test_built_once_then_hit(tmp_path: Path) -> None:
    cache, build = ArtefactCache(tmp_path), Builder()
    first = cache.get(KEY, build)
    assert first.origin == "built" and not first.hit and build.calls == 1
    assert first.model == tmp_path / KEY.folder_name() / MODEL_FILE
    again = cache.get(KEY, build)
    assert again.hit and build.calls == 1 and again.model.read_bytes() == b"model-1"
    manifest = json.loads((first.model.parent / MANIFEST).read_text())
    assert manifest["key"] == dataclasses.asdict(KEY)
    assert manifest["files"][MODEL_FILE]["bytes"] == len(b"model-1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY.folder_name()]  # no staging left over


@pytest.mark.parametrize(
    "field", ["supernet_sha256", "architecture", "bn_sha256", "exporter", "backend_version", "precision"]
)
def test_every_key_field_names_another_entry(tmp_path: Path, field: str) -> None:
    cache, build = ArtefactCache(tmp_path), Builder()
    cache.get(KEY, build)
    other = dataclasses.replace(KEY, **{field: "changed"})
    assert other.folder_name() != KEY.folder_name()
    assert cache.get(other, build).origin == "built" and build.calls == 2
    assert cache.get(KEY, build).hit


def test_a_corrupt_model_file_is_rebuilt(tmp_path: Path) -> None:
    cache, build = ArtefactCache(tmp_path), Builder()
    model = cache.get(KEY, build).model
    model.write_bytes(b"MODEL-1")  # same size, other bytes
    rebuilt = cache.get(KEY, build)
    assert rebuilt.origin.startswith("rebuilt") and "SHA-256" in rebuilt.origin
    assert rebuilt.model.read_bytes() == b"model-2" and build.calls == 2
    model.write_bytes(b"model-2 and more")  # another size
    assert cache.get(KEY, build).origin.startswith("rebuilt")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda folder: (folder / MANIFEST).write_text("{not json"), "unreadable manifest"),
        (lambda folder: (folder / MANIFEST).unlink(), "unreadable manifest"),
        (lambda folder: (folder / MODEL_FILE).unlink(), "model.onnx is missing"),
        (
            lambda folder: (folder / MANIFEST).write_text(
                json.dumps({**json.loads((folder / MANIFEST).read_text()), "key": {"backend": "x"}})
            ),
            "another version or key",
        ),
    ],
)
def test_damaged_entries_are_rebuilt_never_trusted(tmp_path: Path, damage: object, reason: str) -> None:
    cache, build = ArtefactCache(tmp_path), Builder()
    folder = cache.get(KEY, build).model.parent
    damage(folder)  # type: ignore[operator]
    assert cache.problem(KEY) is not None and reason in str(cache.problem(KEY))
    rebuilt = cache.get(KEY, build)
    assert rebuilt.origin.startswith("rebuilt: ") and reason in rebuilt.origin
    assert cache.problem(KEY) is None and build.calls == 2


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOFA_CACHE_DIR", str(tmp_path / "artefacts"))
    assert cache_root() == tmp_path / "artefacts"
    assert ArtefactCache().root == tmp_path / "artefacts"
    monkeypatch.delenv("DOFA_CACHE_DIR")
    monkeypatch.delenv("DOFA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "dynamic_ofa_ros" / "compiled"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "dynamic_ofa_ros" / "compiled"
