"""Camera frames of the experiments: from a zip, a folder, or synthetic; ``--pack-images``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from offline_tools.errors import DatasetError
from offline_tools.experiments import context
from offline_tools.experiments.cli import main


def _zip_of_five(tmp_path: Path) -> Path:
    from PIL import Image

    jpg = tmp_path / "a.jpg"
    Image.fromarray(np.full((20, 30, 3), 128, dtype=np.uint8)).save(jpg)
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as zf:
        for i in range(5):
            zf.write(jpg, f"val/cls/{i}.JPEG")
    return tmp_path / "imgs.zip"


def test_load_images_from_zip_folder_and_synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, desc = context.load_images(str(_zip_of_five(tmp_path)), 3, size=32)
    assert len(images) == 3 and images[0].shape == (32, 32, 3) and images[0].dtype == np.uint8
    assert "imgs.zip" in desc
    images, _ = context.load_images(str(tmp_path), 10)  # the folder holds a.jpg (the zip is no image)
    assert len(images) == 1 and images[0].shape == (224, 224, 3)
    monkeypatch.setattr(context, "shared_image_candidates", lambda: [tmp_path / "absent.zip"])
    images, desc = context.load_images(None, 2, size=16, seed=3)
    assert len(images) == 2 and images[0].shape == (16, 16, 3) and "synthetic" in desc
    again, _ = context.load_images(None, 2, size=16, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(images, again, strict=True))
    with pytest.raises(DatasetError, match="not a folder or a .zip"):
        context.load_images(str(tmp_path / "nothing.txt"), 1)


def test_pack_images_copies_evenly_picked_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _zip_of_five(tmp_path)
    dst = tmp_path / "out" / "packed.zip"
    assert main(["--pack-images", str(src), str(dst), "--n-images", "2"]) == 0
    assert "2 images" in capsys.readouterr().out
    with zipfile.ZipFile(dst) as zf, zipfile.ZipFile(src) as original:
        assert zf.namelist() == ["val/cls/0.JPEG", "val/cls/2.JPEG"]
        assert zf.read("val/cls/2.JPEG") == original.read("val/cls/2.JPEG")
