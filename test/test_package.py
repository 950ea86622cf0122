"""Package description and installation: package.xml, CMakeLists.txt, setup.py, install space."""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# (install destination below the prefix, executable, module, function)
ENTRY_POINTS = [
    ("lib/dynamic_ofa_ros", "classifier_node", "dynamic_ofa_ros.node", "main"),
    ("lib/dynamic_ofa_ros", "demo", "dynamic_ofa_ros.ros_tools.demo", "main"),
    ("bin", "dofa-bench", "dynamic_ofa_ros.bench", "main"),
    ("bin", "dofa-levels", "offline_tools.cli", "main"),
]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checker() -> ModuleType:
    return _load(REPO_ROOT / "scripts" / "check_package.py", "dofa_check_package")


@pytest.fixture(scope="module")
def setup_module_() -> ModuleType:
    # Imported, not run: setup() is only called when setup.py is __main__.
    return _load(REPO_ROOT / "setup.py", "dofa_setup_py")


# --- package.xml / CMakeLists.txt -------------------------------------------------------------


def test_package_xml_is_valid_format3(checker: ModuleType) -> None:
    problems: list[str] = []
    info = checker.parse_package_xml(REPO_ROOT / "package.xml", problems)
    problems += checker.catkin_pkg_problems(REPO_ROOT / "package.xml")
    assert info is not None
    problems += checker.check_package_xml(info)
    assert problems == []


def test_cmakelists_matches_interfaces_and_package(checker: ModuleType) -> None:
    problems: list[str] = []
    info = checker.parse_package_xml(REPO_ROOT / "package.xml", problems)
    assert checker.check_cmake(info) == []
    assert set(checker.interface_files()) >= {
        "msg/Prediction.msg",
        "msg/LevelInfo.msg",
        "msg/ManagerStatus.msg",
        "srv/SetConstraints.srv",
        "srv/SetLevel.srv",
        "srv/GetLevels.srv",
    }


def test_every_runtime_import_is_declared(checker: ModuleType) -> None:
    problems: list[str] = []
    info = checker.parse_package_xml(REPO_ROOT / "package.xml", problems)
    assert checker.check_imports(info) == []


def test_checker_reports_broken_package(checker: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "package.xml").write_text(
        """<?xml version="1.0"?>
<package format="2">
  <version>0.1</version>
  <name>dynamic_ofa_ros</name>
  <description>x</description>
  <maintainer email="nobody">x</maintainer>
  <license>MIT</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <exec_depend>rclpy</exec_depend>
  <exec_depend>rclpy</exec_depend>
  <flavour>vanilla</flavour>
  <export><build_type>ament_python</build_type></export>
</package>
"""
    )
    (tmp_path / "msg").mkdir()
    (tmp_path / "msg" / "A.msg").write_text("geometry_msgs/Point p\n")
    (tmp_path / "msg" / "B.msg").write_text("int32 x\n")
    (tmp_path / "CMakeLists.txt").write_text(
        "project(other)\nrosidl_generate_interfaces(${PROJECT_NAME} msg/A.msg DEPENDENCIES std_msgs)\n"
        "ament_python_install_package(${PROJECT_NAME})\n"
    )
    (tmp_path / "requirements.txt").write_text("numpy\n")
    (tmp_path / "dynamic_ofa_ros").mkdir()
    (tmp_path / "dynamic_ofa_ros" / "m.py").write_text(
        "import torch\nimport numpy\nimport frobnicate.x\nfrom ofa.utils import x\n"
    )

    problems: list[str] = []
    info = checker.parse_package_xml(tmp_path / "package.xml", problems)
    assert info is not None
    problems += checker.check_package_xml(info)
    problems += checker.check_cmake(info, tmp_path)
    problems += checker.check_imports(info, tmp_path)
    text = "\n".join(problems)
    for expected in (
        'format="2"',
        "must start with <name>, <version>, <description>",
        "<flavour> is not allowed",
        "valid email",
        "not MAJOR.MINOR.PATCH",
        "duplicate <exec_depend> ['rclpy']",
        "rosidl_default_generators",
        "python3-torch",
        "rosidl_interface_packages",
        "'ament_python'",
        "project() must be dynamic_ofa_ros",
        "misses ['msg/B.msg']",
        "DEPENDENCIES misses ['geometry_msgs']",
        "['std_msgs'] must be <depend>",
        "rosidl_python #141",
        "import torch (dynamic_ofa_ros/m.py): add <exec_depend>python3-torch",
        "import torch (dynamic_ofa_ros/m.py): add torch to requirements.txt",
        "import frobnicate",
        "import ofa (dynamic_ofa_ros/m.py): add ofa to requirements.txt",
        "import ofa (dynamic_ofa_ros/m.py): add ofa to requirements-system-ros.txt",
    ):
        assert expected in text, f"{expected!r} not reported; got:\n{text}"
    assert "add numpy to requirements.txt" not in text


def test_every_declared_dependency_is_imported(checker: ModuleType) -> None:
    problems: list[str] = []
    info = checker.parse_package_xml(REPO_ROOT / "package.xml", problems)
    assert checker.check_declared_are_imported(info) == []


def test_checker_reports_declared_but_unused(checker: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "package.xml").write_text(
        """<?xml version="1.0"?>
<package format="3">
  <name>dynamic_ofa_ros</name>
  <version>0.1.0</version>
  <description>x</description>
  <maintainer email="a@b.org">x</maintainer>
  <license>MIT</license>
  <depend>std_msgs</depend>
  <exec_depend>python3-numpy</exec_depend>
  <exec_depend>python3-yaml</exec_depend>
  <exec_depend>cv_bridge</exec_depend>
  <exec_depend>ros2launch</exec_depend>
  <test_depend>python3-pytest</test_depend>
</package>
"""
    )
    (tmp_path / "msg").mkdir()
    (tmp_path / "msg" / "A.msg").write_text("std_msgs/Header header\n")
    (tmp_path / "setup.py").write_text(
        'INSTALL_REQUIRES = ["numpy>=1.24", "tqdm"]\n'
        'EXTRAS_REQUIRE = {"demo": ["scikit-image"], "dev": ["pytest", "ruff"]}\n'
    )
    (tmp_path / "requirements.txt").write_text("numpy==2.0\nros-std-msgs==5.5.1\ngdown\n# a comment\n")
    (tmp_path / "dynamic_ofa_ros").mkdir()
    (tmp_path / "dynamic_ofa_ros" / "m.py").write_text("import numpy\nimport skimage.data\n")
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "x.launch.py").write_text("import yaml\n")

    problems: list[str] = []
    info = checker.parse_package_xml(tmp_path / "package.xml", problems)
    assert info is not None and problems == []
    allowed = {"ros2launch": "`ros2 launch`", "gdown": "needed by ofa", "PIL": "stale", "colcon": "stale"}
    found = checker.check_declared_are_imported(info, tmp_path, not_imported=allowed)
    text = "\n".join(found)
    for expected in (
        "package.xml: cv-bridge is declared but no known module maps to it",
        "setup.py: tqdm is declared but no module of ours imports tqdm",
        "NOT_IMPORTED: pil is not declared anywhere",
        "NOT_IMPORTED: colcon is not declared anywhere",
    ):
        assert expected in text, f"{expected!r} not reported; got:\n{text}"
    # imported (numpy, skimage; yaml from launch/), an interface dependency (std_msgs),
    # allowed (ros2launch, gdown), a test or tool dependency (pytest, ruff): all fine
    for fine in (
        "numpy",
        "scikit-image",
        "python3-yaml",
        "std-msgs",
        "ros2launch",
        "gdown",
        "pytest",
        "ruff",
    ):
        assert not any(f": {fine} is declared" in line for line in found), f"{fine} reported:\n{text}"
    assert len(found) == 4, text

    (tmp_path / "dynamic_ofa_ros" / "n.py").write_text("import gdown\n")
    found = checker.check_declared_are_imported(info, tmp_path, not_imported=allowed)
    assert "NOT_IMPORTED: gdown is imported now; remove it from the allow-list" in found


# --- rosdep: what a system-ROS user installs ---------------------------------------------------


def test_every_dependency_resolves_in_rosdep_for_jazzy_and_kilted(
    checker: ModuleType, shared_dir: Path
) -> None:
    rosdistro = shared_dir / "rosdistro"
    if not rosdistro.is_dir():
        pytest.skip(f"{rosdistro} not found (snapshot of rosdep's database)")
    db = checker.load_rosdistro(rosdistro)
    problems: list[str] = []
    info = checker.parse_package_xml(REPO_ROOT / "package.xml", problems)
    assert checker.check_rosdep(info, db) == []
    assert set(checker.SUPPORTED_DISTROS) == {"jazzy", "kilted"}
    for distro in ("jazzy", "kilted"):  # how a few of them resolve on noble
        resolve = lambda key, d=distro: checker.resolve_rosdep_key(db, key, d, "noble")  # noqa: E731
        assert resolve("rclpy") == f"ROS package released in {distro}"
        assert resolve("vision_msgs") == f"ROS package released in {distro}"
        assert resolve("python3-torch") == "apt: python3-torch"
        assert resolve("python3-rosbags-pip") == "pip: rosbags"
        assert resolve("python3-onnxruntime-pip") == "pip: onnxruntime"
        assert resolve("no_such_package_or_key") is None
    # what requirements-system-ros.txt lists has no key: openvino, safetensors, ofa, ray, onnx
    listed = checker.requirement_names(REPO_ROOT / "requirements-system-ros.txt")
    assert {"ofa", "safetensors", "openvino", "ray"} <= listed
    assert not listed & {"rosbags", "scikit-image", "onnxruntime", "gdown"}
    pip_keys = db.pip_keys()
    assert not listed & set(pip_keys), {name: pip_keys[name] for name in listed & set(pip_keys)}


def test_rosdep_resolution_rules(checker: ModuleType, tmp_path: Path) -> None:
    """rosdep's rule forms: OS lists, release maps with '*' and null, installer maps, any-OS rules."""
    (tmp_path / "rosdep").mkdir()
    (tmp_path / "rosdep" / "base.yaml").write_text(
        """
plain: {ubuntu: [libplain], debian: [libplain]}
by_release: {ubuntu: {jammy: [old-pkg], noble: [new-pkg]}}
star_release: {ubuntu: {'*': [any-pkg], focal: null}}
dropped_on_noble: {ubuntu: {'*': [x], noble: null}}
only_fedora: {fedora: [y]}
"""
    )
    (tmp_path / "rosdep" / "python.yaml").write_text(
        """
python3-thing-pip: {ubuntu: {pip: {packages: [thing]}}}
python3-any-os-pip: {'*': {pip: {packages: [anything]}}}
python3-release-pip: {ubuntu: {noble: {pip: {packages: [rel]}}}}
python-old-pip: &old {ubuntu: {pip: {packages: [moved]}}}
python3-old-pip: *old
"""
    )
    for distro, body in {
        "jazzy": "repositories:\n  repo_a:\n    release: {packages: [pkg_a1, pkg_a2], version: 1.0.0-1}\n"
        "  single_pkg:\n    release: {version: 2.0.0-1}\n  unreleased:\n    source: {type: git}\n",
        "kilted": "repositories: {}\n",
    }.items():
        (tmp_path / distro).mkdir()
        (tmp_path / distro / "distribution.yaml").write_text(body)
    db = checker.load_rosdistro(tmp_path)

    def resolve(key: str, distro: str = "jazzy", codename: str = "noble") -> str | None:
        return checker.resolve_rosdep_key(db, key, distro, codename)

    assert resolve("pkg_a2") == "ROS package released in jazzy"
    assert resolve("single_pkg") == "ROS package released in jazzy"  # no packages list: the repo
    assert resolve("unreleased") is None
    assert resolve("pkg_a1", "kilted") is None  # released in another distro only
    assert resolve("plain") == "apt: libplain"
    assert resolve("by_release") == "apt: new-pkg"
    assert resolve("by_release", codename="jammy") == "apt: old-pkg"
    assert resolve("by_release", codename="resolute") is None
    assert resolve("star_release") == "apt: any-pkg"
    assert resolve("star_release", codename="focal") is None
    assert resolve("dropped_on_noble") is None
    assert resolve("only_fedora") is None
    assert resolve("python3-thing-pip") == "pip: thing"
    assert resolve("python3-any-os-pip") == "pip: anything"
    assert resolve("python3-release-pip") == "pip: rel"
    assert resolve("python3-old-pip") == "pip: moved"
    assert db.pip_keys()["moved"] == "python3-old-pip"  # the python3- name over the Python 2 one

    (tmp_path / "package.xml").write_text(
        """<?xml version="1.0"?>
<package format="3">
  <name>dynamic_ofa_ros</name><version>0.1.0</version><description>x</description>
  <maintainer email="a@b.org">x</maintainer><license>MIT</license>
  <exec_depend>pkg_a1</exec_depend>
  <exec_depend>plain</exec_depend>
  <exec_depend>dropped_on_noble</exec_depend>
</package>
"""
    )
    (tmp_path / "requirements-system-ros.txt").write_text("thing>=1\nmoved\nfree-of-keys\n")
    problems: list[str] = []
    info = checker.parse_package_xml(tmp_path / "package.xml", problems)
    found = checker.check_rosdep(info, db, tmp_path)
    text = "\n".join(found)
    for expected in (
        "package.xml: pkg_a1 does not resolve for kilted (Ubuntu noble)",
        "package.xml: dropped_on_noble does not resolve for jazzy (Ubuntu noble)",
        "package.xml: dropped_on_noble does not resolve for kilted (Ubuntu noble)",
        "thing has the rosdep key python3-thing-pip",
        "moved has the rosdep key python3-old-pip",
    ):
        assert expected in text, f"{expected!r} not reported; got:\n{text}"
    assert (
        "plain" not in text and "free-of-keys" not in text and "pkg_a1 does not resolve for jazzy" not in text
    )


def test_python_floor_and_supported_distros_agree() -> None:
    """The code needs Python 3.11; setup.py, package.xml and the README say so (Humble: no)."""
    uses_311 = [
        str(path.relative_to(REPO_ROOT))
        for pkg in ("dynamic_ofa_ros", "offline_tools")
        for path in (REPO_ROOT / pkg).rglob("*.py")
        if "datetime.UTC" in (text := path.read_text(encoding="utf-8"))
        or any("import" in line and " Self" in line for line in text.splitlines() if "typing" in line)
    ]
    assert uses_311, "no 3.11-only feature left: the floor (and Humble) can be revisited"
    assert 'python_requires=">=3.11"' in (REPO_ROOT / "setup.py").read_text(encoding="utf-8")
    description = (REPO_ROOT / "package.xml").read_text(encoding="utf-8")
    assert "Jazzy and Kilted" in description and "not Humble" in description
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## With a system ROS 2", 1)[1].split("\n## ", 1)[0]
    assert "Jazzy" in section and "Kilted" in section and "Humble is not\nsupported" in section
    assert "Humble / Jazzy" not in readme


# --- setup.py (pip install of the ROS-free parts) ---------------------------------------------


def test_setup_py_agrees_with_package_xml_and_requirements(
    setup_module_: ModuleType, checker: ModuleType
) -> None:
    problems: list[str] = []
    info = checker.parse_package_xml(REPO_ROOT / "package.xml", problems)
    assert info is not None
    assert setup_module_.package_version() == info.version
    pinned = checker.requirement_names(REPO_ROOT / "requirements.txt")
    for req in setup_module_.INSTALL_REQUIRES:
        name = checker.normalize(req.split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip())
        assert name in pinned, f"setup.py requires {req} but requirements.txt does not pin it"
    scripts = {s.split("=")[0].strip(): s.split("=")[1].strip() for s in setup_module_.CONSOLE_SCRIPTS}
    cmake_bin = {name: f"{module}:{func}" for dest, name, module, func in ENTRY_POINTS if dest == "bin"}
    assert scripts == cmake_bin


@pytest.mark.slow
def test_setup_py_builds_a_wheel_of_the_ros_free_parts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "package.xml", "README.md"):
        if (REPO_ROOT / name).is_file():
            shutil.copy2(REPO_ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("dynamic_ofa_ros", "offline_tools"):
        shutil.copytree(REPO_ROOT / pkg, src / pkg, ignore=ignore)
    out = tmp_path / "dist"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            ".",
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("dynamic_ofa_ros-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
        entry_points = next(whl.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for pkg in ("dynamic_ofa_ros", "offline_tools"):
        for path in (REPO_ROOT / pkg).rglob("*.py"):
            if "__pycache__" not in path.parts:
                assert str(path.relative_to(REPO_ROOT)) in names
    for path in (REPO_ROOT / "dynamic_ofa_ros" / "embedded").glob("*"):
        if path.suffix in (".json", ".safetensors"):
            assert str(path.relative_to(REPO_ROOT)) in names
    assert {"dynamic_ofa_ros/py.typed", "offline_tools/py.typed"} <= names  # PEP 561
    assert "dofa-bench = dynamic_ofa_ros.bench:main" in entry_points
    assert "dofa-levels = offline_tools.cli:main" in entry_points


# --- colcon install space ---------------------------------------------------------------------


@pytest.mark.parametrize(("dest", "name", "module", "func"), ENTRY_POINTS)
def test_entry_point_installed(install_prefix: Path, dest: str, name: str, module: str, func: str) -> None:
    exe = install_prefix / "dynamic_ofa_ros" / dest / name
    assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} missing or not executable"
    lines = exe.read_text(encoding="utf-8").splitlines()
    interpreter = Path(lines[0].removeprefix("#!").strip())
    assert interpreter.is_file() and os.access(interpreter, os.X_OK), f"{exe}: bad shebang {lines[0]}"
    assert f"from {module} import {func}" in (line.strip() for line in lines)
    if dest == "bin":  # on PATH after `source install/setup.bash`
        assert shutil.which(name) == str(exe)
    source = REPO_ROOT.joinpath(*module.split(".")).with_suffix(".py")
    if not source.is_file():  # a package: its __init__.py
        source = REPO_ROOT.joinpath(*module.split("."), "__init__.py")
    assert source.is_file(), (
        f"{name} runs {module}:{func}, but {source.relative_to(REPO_ROOT)} does not exist"
    )
    tree = ast.parse(source.read_text(encoding="utf-8"))
    assert any(isinstance(node, ast.FunctionDef) and node.name == func for node in tree.body), (
        f"{source.relative_to(REPO_ROOT)} has no top-level {func}()"
    )


def test_share_directory_installed(install_prefix: Path) -> None:
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory("dynamic_ofa_ros"))  # what `ros2 launch` uses
    assert share == install_prefix / "dynamic_ofa_ros" / "share" / "dynamic_ofa_ros"
    assert (share / "package.xml").is_file()
    for kind in ("msg", "srv"):
        for path in (REPO_ROOT / kind).glob(f"*.{kind}"):
            assert (share / kind / path.name).is_file()
    for kind in ("launch", "config"):
        for path in (REPO_ROOT / kind).rglob("*"):
            if path.is_file() and path.name != ".gitkeep" and "__pycache__" not in path.parts:
                assert (share / path.relative_to(REPO_ROOT)).is_file(), (
                    f"{path} not installed (run make build)"
                )


def test_python_package_data_installed(install_prefix: Path) -> None:
    site = next((install_prefix / "dynamic_ofa_ros" / "lib").glob("python3*/site-packages"))
    for pkg in ("dynamic_ofa_ros", "offline_tools"):
        for path in (REPO_ROOT / pkg).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                assert (site / path.relative_to(REPO_ROOT)).is_file(), (
                    f"{path} not installed (run make build)"
                )
