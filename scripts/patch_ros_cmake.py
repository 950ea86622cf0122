#!/usr/bin/env python3
"""Point the ROS 2 PyPI wheels' exported CMake files at this virtual environment.

The ``ros-*`` wheels are built in a manylinux container, and their exported targets
``share/<pkg>/cmake/*__rosidl_generator_pyExport.cmake`` hard-code that container's Python
include directory and NumPy include directory. A colcon/CMake build of interfaces that depend
on those packages (``std_msgs`` ...) then fails on missing include directories.

This script replaces the two container paths with the running interpreter's include directory
and ``numpy.get_include()``. It only edits those generated files below ``--prefix`` (the
project's own virtual environment), writes each file atomically and is idempotent: a second
run changes nothing. Run it with the virtual environment's interpreter.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

CONTAINER_PYTHON_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"
CONTAINER_NUMPY_INCLUDE = "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"
EXPORT_GLOB = "share/*/cmake/*__rosidl_generator_pyExport.cmake"


def replacements() -> dict[str, str]:
    """Container path -> path valid for this interpreter."""
    import numpy  # the venv's NumPy, whose headers the generated extensions compile against

    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    for path in (python_include, numpy_include):
        if not Path(path).is_dir():
            raise SystemExit(f"patch_ros_cmake: include directory {path} does not exist")
    if not Path(python_include, "Python.h").is_file():
        raise SystemExit(f"patch_ros_cmake: {python_include}/Python.h missing (install python3.11-dev?)")
    return {CONTAINER_PYTHON_INCLUDE: python_include, CONTAINER_NUMPY_INCLUDE: numpy_include}


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, keeping its permissions.

    A standard-library twin of ``dynamic_ofa_ros.timing.atomic_write_text``: this script runs
    from ``scripts/bootstrap.sh`` before the package is built, so it cannot import the package.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def patch(prefix: Path, *, check: bool = False) -> tuple[int, int]:
    """Patch every export file below ``prefix``; return (files found, files changed)."""
    mapping = replacements()
    found = changed = 0
    for path in sorted(prefix.glob(EXPORT_GLOB)):
        found += 1
        text = path.read_text(encoding="utf-8")
        new = text
        for old, repl in mapping.items():
            new = new.replace(old, repl)
        if new != text:
            changed += 1
            if not check:
                write_atomic(path, new)
    return found, changed


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--prefix VENV`` (default: this interpreter's) and ``--check``; exit status."""
    parser = argparse.ArgumentParser(description="Point the ros-* wheels' CMake exports at this venv.")
    parser.add_argument(
        "--prefix", type=Path, default=Path(sys.prefix), help="virtual environment (default: this one)"
    )
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if a file needs patching")
    args = parser.parse_args(argv)
    prefix: Path = args.prefix.resolve()
    if prefix == Path(sys.base_prefix).resolve():
        raise SystemExit("patch_ros_cmake: refusing to edit a base interpreter; pass a virtual environment")
    found, changed = patch(prefix, check=args.check)
    if found == 0:
        raise SystemExit(f"patch_ros_cmake: no {EXPORT_GLOB} below {prefix}: are the ros-* wheels installed?")
    verb = "need patching" if args.check else "patched"
    print(f"patch_ros_cmake: {found} export files, {changed} {verb}")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
