"""Real photos for a simulated camera: an ImageFolder, else the photos scikit-image ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["FRAME_SIZE", "load_photos"]

FRAME_SIZE = (320, 240)  # width, height of the simulated camera
_SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "camera.png",
)


def _skimage_photos() -> tuple[list[np.ndarray], str]:
    """The photos of ``skimage.data`` (nothing is downloaded) and where they came from."""
    import cv2

    try:
        import skimage.data as skdata
    except ImportError as exc:
        raise RuntimeError(
            "no photos: install scikit-image (pip install scikit-image; it ships the demo photos) "
            "or pass an ImageFolder with DATA=<dir> / --data <dir>"
        ) from exc
    folder = Path(skdata.__file__).resolve().parent
    frames: list[np.ndarray] = []
    names = []
    for name in _SKIMAGE_PHOTOS:
        bgr = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        frames.append(np.ascontiguousarray(bgr[:, :, ::-1]))
        names.append(Path(name).stem)
    return frames, f"skimage.data photos ({', '.join(names)})"


def load_photos(
    data: str | None = None, *, limit: int = 48, size: tuple[int, int] = FRAME_SIZE
) -> tuple[list[np.ndarray], str]:
    """RGB uint8 frames of ``size`` (w, h) from an ImageFolder ``data``, else from ``skimage.data``.

    Args:
        data: ImageFolder directory (labels ignored); ``None``/empty: scikit-image's photos.
        limit: at most this many frames (a random sample of a larger folder, seed 0).
        size: (width, height) every frame is resized to.

    Returns:
        The frames and a description of where they came from.

    Raises:
        RuntimeError: no photos are available (says what to install or pass).
    """
    import cv2

    if data:
        from offline_tools.datasets import ImageFolderSource

        source = ImageFolderSource(data, label_map="none", sample=limit if limit else None, seed=0)
        frames = [rgb for rgb, _ in source]
        where = f"ImageFolder {data} ({len(frames)} images)"
    else:
        frames, where = _skimage_photos()
    out = [
        np.ascontiguousarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
        for frame in frames[:limit]
    ]
    if not out:
        raise RuntimeError(f"no photos found in {where}")
    return out, where
