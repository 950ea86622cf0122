"""What produced a run: software versions and device, git commit, SHA-256 of the training code."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamic_ofa_ros.timing import sha256_file

__all__ = ["REPO_ROOT", "environment_info", "git_info", "source_sha256"]

#: The repository (or source tree) the training code runs from.
REPO_ROOT = Path(__file__).resolve().parents[2]


def _cudnn_version() -> int | None:
    try:
        return int(torch.backends.cudnn.version())  # type: ignore[no-untyped-call]
    except Exception:  # any failure means "unknown", recorded as null
        return None


def _torchvision_version() -> str | None:
    try:
        import torchvision
    except ImportError:  # pragma: no cover - torchvision is present wherever ofa is
        return None
    return str(torchvision.__version__)  # with the build's local label, e.g. "+cu130"


def _ofa_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ofa")
    except PackageNotFoundError:
        return None


def environment_info(device: torch.device) -> dict[str, Any]:
    """Python, platform, torch/CUDA/cuDNN/NumPy/torchvision/ofa versions, device, CPU and GPU."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": _cudnn_version(),
        "numpy": np.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torchvision": _torchvision_version(),
        "ofa": _ofa_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_capability"] = list(torch.cuda.get_device_capability(device))
    return info


def git_info(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of ``repo`` (None each when git or the repository is unavailable)."""

    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def source_sha256(config_file: Path | None) -> dict[str, str | None]:
    """SHA-256 of the training code (entry point + ``offline_tools/training/*.py``) and the config file.

    The device copy of the tree may have no ``.git``: this identifies the code and config by content.
    """
    here = Path(__file__).resolve().parent
    files = [here.parent / "train_supernet.py", *sorted(here.glob("*.py"))]
    out: dict[str, str | None] = {
        p.relative_to(here.parent.parent).as_posix(): sha256_file(p) for p in files if p.is_file()
    }
    out["config"] = sha256_file(config_file) if config_file else None
    return out
