"""resize: the NumPy preprocessing gives torch's bytes (photos, camera frames, odd sizes)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamic_ofa_ros.errors import ImageError
from dynamic_ofa_ros.image_input import decode_compressed
from dynamic_ofa_ros.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_input_tensor
from dynamic_ofa_ros.resize import axis_weights, resize_u8, to_input_array

torch.set_num_threads(1)

RESOLUTIONS = (96, 112, 128, 144, 160, 224)
#: One grey level is 1 / (255 * std) >= 0.017 after normalisation: anything below 1e-5 is float rounding.
TOLERANCE = 1e-5


def torch_bytes(normalised: np.ndarray) -> np.ndarray:
    """The 8-bit image behind a normalised (1, 3, r, r) input."""
    std = np.asarray(IMAGENET_STD, dtype=np.float64)[:, None, None]
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float64)[:, None, None]
    return np.rint((normalised[0] * std + mean) * 255.0).transpose(1, 2, 0)


def check(image: np.ndarray, r: int) -> None:
    expected = to_input_tensor(image, resolution=r).numpy()
    actual = to_input_array(image, resolution=r)
    assert actual.shape == (1, 3, r, r) and actual.dtype == np.float32 and actual.flags.c_contiguous
    assert float(np.abs(actual - expected).max()) <= TOLERANCE, (image.shape, r)
    np.testing.assert_array_equal(resize_u8(image, r), torch_bytes(expected))


@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (224, 224), (120, 150), (1080, 1920)])
def test_camera_frames(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    for r in RESOLUTIONS:
        check(image, r)


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (2, 500), (3000, 41), (97, 1301), (160, 97)])
def test_odd_sizes_up_and_down(shape: tuple[int, int]) -> None:
    """Upscaling, one pass only, extreme ratios (weights split into exact halves), the identity."""
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for r in (96, 160):
        check(image, r)


def test_smooth_and_saturated_images() -> None:
    """Constant and saturated regions: sums at the top of the range are clipped like torch's."""
    ramp = np.linspace(0, 255, 640, dtype=np.float64)
    image = np.broadcast_to(ramp[None, :, None], (480, 640, 3)).astype(np.uint8).copy()
    image[100:200] = 255
    image[300:] = 0
    for r in RESOLUTIONS:
        check(image, r)


def test_real_photos(shared_dir: Path) -> None:
    path = shared_dir / "datasets" / "imagenette" / "val-224px.zip"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.lower().endswith((".jpeg", ".jpg", ".png")))
        photos = [decode_compressed(archive.read(n), fmt="jpeg") for n in names[:: len(names) // 12][:12]]
    for photo in photos:
        for r in RESOLUTIONS:
            check(photo, r)


def test_axis_weights_are_torchs_fixed_point() -> None:
    weights, precision = axis_weights(640, 224)
    assert weights.shape == (224, 640)
    assert np.all(weights >= 0) and np.all(weights == np.round(weights)) and weights.max() < 2**15
    assert np.all(np.abs(weights.sum(axis=1) - 2**precision) <= weights.shape[1])
    identity, bits = axis_weights(5, 5)
    np.testing.assert_array_equal(identity, np.eye(5) * 2**bits)


def test_bad_input() -> None:
    with pytest.raises(ImageError, match="uint8"):
        to_input_array(np.zeros((8, 8, 3), dtype=np.float32), resolution=8)
    with pytest.raises(ImageError, match=r"\(H, W, 3\)"):
        resize_u8(np.zeros((8, 8), dtype=np.uint8), 4)
    with pytest.raises(ImageError, match=r"need \(1, 3, 4, 4\)"):
        to_input_array(
            np.zeros((8, 8, 3), dtype=np.uint8), resolution=4, out=np.zeros((1, 3, 5, 5), np.float32)
        )
    out = np.zeros((1, 3, 4, 4), np.float32)
    assert to_input_array(np.full((8, 8, 3), 255, dtype=np.uint8), resolution=4, out=out) is out
