"""ImageNet-1k class names, from torchvision's weight metadata (no download).

The names are ``torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1.meta["categories"]``
(index = ImageNet-1k class index, e.g. 0 "tench", 217 "English springer", 701 "parachute"),
loaded once on first use.
"""

from __future__ import annotations

import functools

from dynamic_ofa_ros.errors import DofaError

__all__ = ["NUM_CLASSES", "imagenet_labels", "label"]

NUM_CLASSES = 1000


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order."""
    try:
        from torchvision.models import MobileNet_V3_Large_Weights
    except ImportError as exc:
        raise DofaError(
            "class names come from torchvision's weight metadata: pip install torchvision"
        ) from exc
    names = tuple(str(n) for n in MobileNet_V3_Large_Weights.IMAGENET1K_V1.meta["categories"])
    if len(names) != NUM_CLASSES:
        raise DofaError(f"torchvision lists {len(names)} ImageNet classes, expected {NUM_CLASSES}; update it")
    return names


def label(index: int) -> str:
    """The class name of ImageNet-1k class ``index``; ``"class <i>"`` outside 0..999 (other heads)."""
    names = imagenet_labels()
    if isinstance(index, bool) or not 0 <= int(index) < len(names):
        return f"class {index}"
    return names[int(index)]
