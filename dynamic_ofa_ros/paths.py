"""Where the package's shipped files are: level tables and configuration under ``config/``.

The installed package's share directory (colcon/ament install) wins; a source checkout's
``config/`` is the fallback, so the core and the offline tools find the shipped tables
without ROS.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

__all__ = ["PACKAGE", "config_file", "default_level_table", "resolve_device"]

PACKAGE = "dynamic_ofa_ros"


def config_file(relative: str) -> Path:
    """``config/<relative>`` of the installed package (share dir), else of the source tree.

    Args:
        relative: path below ``config/``, e.g. ``"levels/cpu.json"``.

    Returns:
        The first candidate that exists, else the preferred (share dir) candidate.
    """
    candidates: list[Path] = []
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:  # a pip install without ROS: only the source tree's config/
        pass
    else:
        # OSError: ament_index_python installed but no ROS environment (AMENT_PREFIX_PATH unset)
        with contextlib.suppress(PackageNotFoundError, ValueError, LookupError, OSError):
            candidates.append(Path(get_package_share_directory(PACKAGE)) / "config" / relative)
    candidates.append(Path(__file__).resolve().parent.parent / "config" / relative)
    for path in candidates:
        if path.is_file():
            return path
    return candidates[0]


def default_level_table(device: str) -> Path:
    """The shipped level table of a device kind: ``config/levels/<device>.json``.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (an index such as ``"cuda:1"`` is ignored).
    """
    return config_file(f"levels/{device.split(':', 1)[0]}.json")


#: Device files of a GPU driver torch can use (NVIDIA desktop/server and Jetson, WSL2, ROCm):
#: without any of them torch sees no GPU, so ``auto`` is ``cpu`` without importing torch.
_GPU_DRIVER_FILES = (
    "/dev/nvidiactl",
    "/dev/nvidia0",
    "/proc/driver/nvidia",
    "/dev/nvhost-ctrl",
    "/dev/nvmap",
    "/dev/dxg",
    "/dev/kfd",
)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other values unchanged.

    torch is asked only where a GPU driver is present (a process that runs compiled CPU levels
    never imports torch otherwise).
    """
    if device != "auto":
        return device
    if not any(Path(p).exists() for p in _GPU_DRIVER_FILES):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
