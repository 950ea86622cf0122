#!/usr/bin/env python3
"""Let a second virtual environment use the non-ROS packages of the main one, without copying them.

The Jazzy environment (``.venv-jazzy``, ``make ROS_DISTRO=jazzy ...``) holds its own ROS 2 wheels
(``ros-jazzy-*``) and the few packages they pull in, but torch, torchvision, ofa, OpenCV, ...
(6 GB) are the same as in the main environment. This script links them in:

* a directory ``<target site-packages>/../dofa-shared-site`` receives one symlink per top-level
  entry of the main environment's site-packages, except the files of its ROS distributions
  (``ros-*``: the other distro's rclpy, message packages, native libraries) and names the target
  already has (its own pip, setuptools, numpy, PyYAML, colcon, ...);
* ``zzz-dofa-shared-site.pth`` in the target's site-packages puts that directory on ``sys.path``
  *after* the target's own site-packages, so the target's packages always win.

Idempotent: the link directory is rebuilt from scratch on each run. Run it with any Python 3.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import sys
from pathlib import Path

PTH_NAME = "zzz-dofa-shared-site.pth"  # sorted last: after every other .pth of the target
LINK_DIR_NAME = "dofa-shared-site"


def site_packages(venv: Path) -> Path:
    """The ``lib/python3.X/site-packages`` directory of ``venv`` (exactly one)."""
    found = sorted(venv.glob("lib/python3.*/site-packages"))
    if len(found) != 1:
        raise SystemExit(f"share_site_packages: expected one site-packages below {venv}, found {found}")
    return found[0]


def ros_entries(site: Path) -> set[str]:
    """Top-level names in ``site`` that belong to ROS distributions (``ros-*`` wheels)."""
    names: set[str] = set()
    for dist in importlib.metadata.distributions(path=[str(site)]):
        if not str(dist.metadata["Name"] or "").lower().startswith("ros-"):
            continue
        for file in dist.files or []:
            if file.parts and file.parts[0] not in ("..", "/"):
                names.add(file.parts[0])
    return names


def share(main: Path, target: Path) -> list[str]:
    """Link the main environment's non-ROS packages into ``target``; the names linked, sorted."""
    main_site, target_site = site_packages(main), site_packages(target)
    link_dir = target_site.parent / LINK_DIR_NAME
    if link_dir.exists():
        shutil.rmtree(link_dir)
    link_dir.mkdir()
    skip = ros_entries(main_site) | {p.name for p in target_site.iterdir()} | {"__pycache__"}
    linked: list[str] = []
    for entry in sorted(main_site.iterdir()):
        if entry.name in skip or entry.suffix == ".pth":
            continue
        (link_dir / entry.name).symlink_to(entry.resolve())
        linked.append(entry.name)
    (target_site / PTH_NAME).write_text(f"{link_dir}\n", encoding="utf-8")
    return linked


def main(argv: list[str] | None = None) -> int:
    """Command line: ``share_site_packages.py MAIN_VENV TARGET_VENV``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("main", type=Path, help="the environment whose packages are shared (.venv)")
    parser.add_argument("target", type=Path, help="the environment that uses them (.venv-jazzy)")
    args = parser.parse_args(argv)
    linked = share(args.main.resolve(), args.target.resolve())
    print(f"[share_site_packages] {len(linked)} entries of {args.main} visible in {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
