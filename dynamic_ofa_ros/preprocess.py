"""The one model-input preprocessing: uint8 RGB image -> normalised float tensor.

**The preprocessing** (used by the engine, BN calibration, accuracy evaluation and
training-time evaluation, on CPU and GPU alike) is :func:`to_input_tensor` /
:func:`to_input_batch`:

1. the uint8 RGB image (H, W, 3) is resized to ``resolution`` × ``resolution``
   (aspect ratio not kept, no crop) with antialiased bilinear interpolation
   (``torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
   antialias=True)``) into an **8-bit image**, like any image resizer's output —
   skipped when the image already has that size (the identity);
2. it becomes float32 (1, 3, r, r) and is normalised with the ImageNet mean/std:
   ``(x / 255 - mean) / std``, computed as ``x * (1 / (255 * std)) + (-mean / std)``.

On the CPU step 1 runs torch's native uint8 kernel (AVX2, fixed-point weights), on
CUDA the float kernel followed by rounding to the nearest integer and clamping to
0..255 (CUDA has no uint8 antialiased kernel). The two agree to within one grey
level (about 10-18 % of the pixels differ by exactly 1, i.e. 0.017 after
normalisation); images that need no resizing give identical inputs. The 8-bit
kernel makes the CPU path 5-9x faster than resizing in float (on this 2-core CPU
at 640x480 under load: 0.5-0.8 ms instead of 3.6-7 ms). OpenCV's INTER_AREA is a
different filter and is not used.

Camera input (raw encodings, JPEG/PNG) becomes that uint8 RGB image in
:mod:`dynamic_ofa_ros.image_input`, which also holds the pixel limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dynamic_ofa_ros.errors import ImageError
from dynamic_ofa_ros.model_input import IMAGENET_MEAN, IMAGENET_STD, check_rgb

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_rgb",
    "to_input_batch",
    "to_input_tensor",
]

_constants: dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor]] = {}


def _norm_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (device.type, device.index)
    if key not in _constants:
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32)
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
        scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(device)
        shift = (-mean / std).view(1, 3, 1, 1).to(device)
        _constants[key] = (scale, shift)
    return _constants[key]


def _as_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image
    if not image.flags.writeable:
        # torch.from_numpy warns on read-only arrays; we never write, but copying is cheap relative to a model
        image = image.copy()
    return torch.from_numpy(np.ascontiguousarray(image))


def _resize_u8(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float32 (N, 3, r, r) holding the 8-bit resized image (values 0..255)."""
    size = (resolution, resolution)
    if image.shape[-2:] == size:
        return image.float()
    if image.device.type == "cpu":
        resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        return resized.float()
    x = F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0.0, 255.0)


def _resize_normalise(image: torch.Tensor, resolution: int, out: torch.Tensor | None) -> torch.Tensor:
    """uint8 (N, 3, H, W) → normalised float32 (N, 3, r, r), written into ``out`` when given."""
    x = _resize_u8(image, resolution)
    scale, shift = _norm_constants(x.device)
    if out is None:
        return torch.addcmul(shift, x, scale)
    return torch.addcmul(shift, x, scale, out=out)


def to_input_tensor(
    rgb: np.ndarray | torch.Tensor,
    *,
    resolution: int,
    device: str | torch.device = "cpu",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The model input (1, 3, r, r) float32 for an (H, W, 3) uint8 RGB image (see the module docstring).

    ``out`` (shape (1, 3, r, r), float32, on ``device``) receives the result (the
    engine's static input buffer on CUDA). A tensor ``rgb`` may already be on the device.
    """
    check_rgb(rgb)
    dev = torch.device(device)
    t = _as_tensor(rgb).to(dev, non_blocking=True)
    if out is not None and (tuple(out.shape) != (1, 3, resolution, resolution) or out.device != t.device):
        raise ImageError(
            f"out has shape {tuple(out.shape)} on {out.device}; need (1, 3, {resolution}, {resolution})"
        )
    return _resize_normalise(t.permute(2, 0, 1).unsqueeze(0), int(resolution), out)


def to_input_batch(
    images: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
    *,
    resolution: int,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(N, 3, r, r) float32 inputs for N RGB uint8 images — same result per image as :func:`to_input_tensor`.

    ``images`` is an (N, H, W, 3) uint8 array/tensor or a sequence of (H, W, 3) images
    (sizes may differ).
    """
    dev = torch.device(device)
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ImageError(f"expected an (N, H, W, 3) uint8 batch, got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ImageError("the batch is empty")
        check_rgb(images[0])
        t = _as_tensor(images).to(dev, non_blocking=True)
        return _resize_normalise(t.permute(0, 3, 1, 2), int(resolution), None)
    items = list(images)
    if not items:
        raise ImageError("the batch is empty")
    out = torch.empty((len(items), 3, resolution, resolution), dtype=torch.float32, device=dev)
    for i, image in enumerate(items):
        to_input_tensor(image, resolution=resolution, device=dev, out=out[i : i + 1])
    return out
