"""What the model input is, without torch: the ImageNet mean/std and the frame check.

:mod:`dynamic_ofa_ros.preprocess` (torch) and :mod:`dynamic_ofa_ros.resize` (NumPy) both build
the model input from these; the engine checks every frame with :func:`check_rgb` before either
runs, so a process that runs compiled levels never imports torch for it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

from dynamic_ofa_ros.errors import ImageError
from dynamic_ofa_ros.image_input import DEFAULT_MAX_PIXELS, check_size

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "check_rgb"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _is_uint8(image: object) -> bool | None:
    """Whether ``image`` is uint8 (``None``: neither a NumPy array nor a torch tensor)."""
    if isinstance(image, np.ndarray):
        return bool(image.dtype == np.uint8)
    torch_module = sys.modules.get("torch")  # a tensor exists only where torch is already imported
    if torch_module is not None and isinstance(image, torch_module.Tensor):
        return bool(image.dtype == torch_module.uint8)
    return None


def check_rgb(image: np.ndarray | torch.Tensor, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise :class:`ImageError` unless ``image`` is an (H, W, 3) uint8 array/tensor within the size limit."""
    dtype_ok = _is_uint8(image)
    if dtype_ok is None:
        raise ImageError(f"expected an (H, W, 3) uint8 numpy array or tensor, got {type(image).__name__}")
    shape = tuple(image.shape)
    if len(shape) != 3 or shape[2] != 3:
        raise ImageError(
            f"expected an (H, W, 3) RGB image, got shape {shape}; convert it with image_from_buffer"
        )
    if not dtype_ok:
        raise ImageError(f"expected dtype uint8, got {image.dtype}; scale/convert to 8-bit RGB first")
    check_size(int(shape[1]), int(shape[0]), max_pixels, "image")
