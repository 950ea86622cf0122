"""Test configuration shared by the whole suite.

* ``shared_dir``: the project's shared data directory (``$DOFA_SHARED`` or ``<repo>/../shared``);
  tests that need it are skipped, with the reason, when it is absent.
* One ROS 2 domain per pytest session: ``ROS_DOMAIN_ID`` is set before any test runs, to a
  domain that no other pytest session of this suite on this machine holds (file lock), starting
  from the caller's ``ROS_DOMAIN_ID`` (``make test`` picks a random one). Subprocesses started by
  tests inherit it, so parallel runs never cross-talk.
* Markers ``ros`` (real rclpy + DDS), ``slow``, ``cuda`` (skipped without a GPU, with the reason).
* ``rclpy_context``: an initialised, isolated rclpy context, shut down afterwards.
* ``ros_deps``: the environment of the ROS 2 packages that are not on PyPI (``ros2`` CLI,
  ``launch``, ``vision_msgs``), built once from ``<shared>/ros-deps`` by ``scripts/build-ros-deps``
  into ``install-deps/``; skipped, with the reason, without those sources.

pytest runs with ``--import-mode=importlib`` (pyproject.toml), so neither the repository root nor
``test/`` is put on ``sys.path``: ``import dynamic_ofa_ros`` resolves to the colcon install space
(``make test`` / ``scripts/ros-env`` source ``install/setup.bash``), which also holds the
generated ``dynamic_ofa_ros.msg`` / ``dynamic_ofa_ros.srv``.
"""

from __future__ import annotations

import fcntl
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from rclpy.context import Context

REPO_ROOT = Path(__file__).resolve().parent.parent
ROS_DOMAIN_MAX = 101  # highest domain whose default DDS ports stay below the ephemeral range
_DOMAIN_LOCK_DIR = Path(tempfile.gettempdir()) / "dynamic_ofa_ros-domains"
# Lock file descriptor held for the whole session (released when the process exits).
_domain_lock_fd: int | None = None

MARKERS = {
    "ros": "uses real rclpy + Fast DDS transport (needs `source install/setup.bash`)",
    "slow": "takes more than a few seconds",
    "cuda": "needs a CUDA GPU; skipped with the reason when torch sees none",
}


def _allocate_ros_domain() -> tuple[int, int]:
    """Lock and return a ROS domain id (1..101) that no concurrent session of this suite uses."""
    preferred = os.environ.get("ROS_DOMAIN_ID", "").strip()
    start = int(preferred) if preferred.isdigit() and 1 <= int(preferred) <= ROS_DOMAIN_MAX else 0
    if start == 0:
        start = random.randint(1, ROS_DOMAIN_MAX)
    _DOMAIN_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for i in range(ROS_DOMAIN_MAX):
        domain = (start - 1 + i) % ROS_DOMAIN_MAX + 1
        fd = os.open(_DOMAIN_LOCK_DIR / f"{domain}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return domain, fd
    raise RuntimeError(f"all ROS domains 1..{ROS_DOMAIN_MAX} are held by other test sessions")


def pytest_configure(config: pytest.Config) -> None:
    global _domain_lock_fd
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")
    if _domain_lock_fd is None:
        domain, _domain_lock_fd = _allocate_ros_domain()
        os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def pytest_report_header(config: pytest.Config) -> list[str]:
    try:
        import dynamic_ofa_ros

        where = str(Path(dynamic_ofa_ros.__file__ or "?").parent)
    except ImportError as exc:
        where = f"NOT IMPORTABLE ({exc}); run `make build` and use `scripts/ros-env pytest`"
    return [
        f"ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')} (locked for this session), "
        f"RMW_IMPLEMENTATION={os.environ.get('RMW_IMPLEMENTATION')}, "
        f"ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')}",
        f"dynamic_ofa_ros: {where}",
    ]


def _cuda_available() -> tuple[bool, str]:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a hard requirement
        return False, f"torch not importable: {exc}"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU (torch.cuda.is_available() is False)"
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda_items = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda_items:
        return
    ok, reason = _cuda_available()
    if not ok:
        skip = pytest.mark.skip(reason=f"needs CUDA: {reason}")
        for item in cuda_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository (source) root."""
    return REPO_ROOT


def _shared_path() -> Path:
    env = os.environ.get("DOFA_SHARED", "").strip()
    return Path(env) if env else REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Shared data (OFA files, datasets): ``$DOFA_SHARED`` or ``<repo>/../shared``."""
    path = _shared_path()
    if not path.is_dir():
        pytest.skip(f"shared data directory {path} not found (set DOFA_SHARED to its location)")
    return path


@pytest.fixture(scope="session")
def ros_deps() -> dict[str, str]:
    """Environment with ``<shared>/ros-deps`` built and sourced (``ros2``, ``launch``, ``vision_msgs``).

    ``scripts/build-ros-deps`` builds it once into ``install-deps/`` (a stamp makes later calls
    instant; a lock makes concurrent sessions wait); this returns the current environment with
    ``install-deps/setup.bash`` sourced on top, for subprocesses. Skipped when the sources are
    absent (a user's clone has none; a system ROS 2 has these packages anyway).
    """
    shared = _shared_path()
    env = {**os.environ, "DOFA_SHARED": str(shared), "VENV": str(Path(sys.prefix))}
    proc = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-ros-deps")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode == 3:
        pytest.skip(f"ROS 2 dependency sources absent: {proc.stderr.strip()}")
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-ros-deps failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    install = Path(proc.stdout.strip().splitlines()[-1])
    dump = subprocess.run(
        ["bash", "-c", 'source "$1/setup.bash" && env -0', "bash", str(install)],
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    return dict(item.split("=", 1) for item in dump.stdout.decode().split("\0") if "=" in item)


@pytest.fixture(scope="session")
def install_prefix() -> Path:
    """The colcon install space holding this package (``install/`` of the workspace)."""
    for entry in os.environ.get("COLCON_PREFIX_PATH", "").split(os.pathsep):
        if entry and (Path(entry) / "dynamic_ofa_ros" / "share" / "dynamic_ofa_ros").is_dir():
            return Path(entry)
    fallback = REPO_ROOT / "install"
    if (fallback / "dynamic_ofa_ros").is_dir():
        return fallback
    pytest.fail("no colcon install space with dynamic_ofa_ros: run `make build`")


@pytest.fixture
def rclpy_context() -> Iterator[Context]:
    """A fresh, initialised rclpy context (own DDS participant), shut down after the test."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        terminalreporter.write_line("ERROR: no tests were collected", red=True)
