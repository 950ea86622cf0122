"""Tests of offline_tools.training.data: the split, the zip listing and decoding."""

from __future__ import annotations

import collections
import io
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from offline_tools.datasets import IMAGENETTE_WNIDS, decode_rgb_square
from offline_tools.training.data import decode_images, list_zip_images, make_split


def names(per_class: dict[str, int]) -> list[str]:
    return [f"train/{w}/{w}_{i:05d}.JPEG" for w, n in per_class.items() for i in range(n)]


def test_split_is_deterministic_stratified_and_disjoint() -> None:
    sizes = {w: 40 + 3 * i for i, w in enumerate(IMAGENETTE_WNIDS)}
    all_names = names(sizes)
    shuffled = list(all_names)
    random.Random(5).shuffle(shuffled)
    a = make_split(all_names, seed=3, n_holdout=50, n_calib=100)
    b = make_split(shuffled, seed=3, n_holdout=50, n_calib=100)  # input order does not matter
    assert a == b
    assert len(a["holdout"]) == 50 and len(a["calibration"]) == 100
    assert not set(a["holdout"]) & set(a["calibration"])
    hold = collections.Counter(n.split("/")[1] for n in a["holdout"])
    total = sum(sizes.values())
    for wnid, size in sizes.items():  # proportional to class size within rounding
        assert abs(hold[wnid] - 50 * size / total) < 1.0
    assert make_split(all_names, seed=4, n_holdout=50, n_calib=100) != a
    with pytest.raises(ValueError, match="calibration"):
        make_split(all_names, seed=0, n_holdout=total, n_calib=1)


def png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_zip_listing_labels_and_decoding(tmp_path: Path) -> None:
    wnids = list(IMAGENETTE_WNIDS)
    zips = [tmp_path / "a.zip", tmp_path / "b.zip"]
    with zipfile.ZipFile(zips[0], "w") as zf:
        zf.writestr(f"train/{wnids[1]}/x.png", png(16, 16, 0))
        zf.writestr(f"train/{wnids[0]}/y.png", png(20, 12, 1))  # resized on decoding
        zf.writestr("train/readme.txt", b"not an image")
    with zipfile.ZipFile(zips[1], "w") as zf:
        zf.writestr(f"train/{wnids[9]}/z.png", png(16, 16, 2))
    entries = list_zip_images(zips)
    assert [e.name for e in entries] == sorted(e.name for e in entries)
    assert [(e.label, e.zip_index) for e in entries] == [(0, 0), (217, 0), (701, 1)]
    images, n_resized = decode_images(zips, entries, size=16, threads=2)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.uint8 and n_resized == 1
    exact, resized = decode_rgb_square(png(16, 16, 0), 16)
    assert not resized
    assert torch.equal(images[1], torch.from_numpy(exact.copy()).permute(2, 0, 1))
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("train/n99999999/x.png", png(8, 8, 3))
    with pytest.raises(ValueError, match="not an Imagenette class"):
        list_zip_images([tmp_path / "bad.zip"])
    with pytest.raises(ValueError, match="also appears"):
        list_zip_images([zips[0], zips[0]])
