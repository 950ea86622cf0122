"""ImageNet-1k class names, shipped with the package (``imagenet_classes.json``), read without torch.

The names are torchvision's ``MobileNet_V3_Large_Weights.IMAGENET1K_V1.meta["categories"]``
(index = ImageNet-1k class index, e.g. 0 "tench", 217 "English springer", 701 "parachute"),
written to ``imagenet_classes.json`` once so that a node running compiled levels never imports
torchvision (and with it torch) to name a class; ``test_labels.py`` checks the file against
torchvision. Loaded once on first use.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from dynamic_ofa_ros.errors import DofaError

__all__ = ["NUM_CLASSES", "imagenet_labels", "label"]

NUM_CLASSES = 1000
_NAMES_FILE = Path(__file__).resolve().with_name("imagenet_classes.json")


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order."""
    try:
        names = json.loads(_NAMES_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DofaError(
            f"cannot read the ImageNet class names {_NAMES_FILE} ({exc}); reinstall the package"
        ) from exc
    if not isinstance(names, list) or len(names) != NUM_CLASSES or not all(isinstance(n, str) for n in names):
        raise DofaError(f"{_NAMES_FILE} must list {NUM_CLASSES} class names; reinstall the package")
    return tuple(names)


def label(index: int) -> str:
    """The class name of ImageNet-1k class ``index``; ``"class <i>"`` outside 0..999 (other heads)."""
    names = imagenet_labels()
    if isinstance(index, bool) or not 0 <= int(index) < len(names):
        return f"class {index}"
    return names[int(index)]
