#!/usr/bin/env python3
"""Check the ROS package description against the code (part of ``make lint`` / ``make test``).

* ``package.xml`` is well-formed, format 3, in the schema's element order, with name, version,
  description, maintainer and license; catkin_pkg (installed with colcon) parses and validates it.
* It declares the build tools, the interface group and every runtime dependency the issue lists.
* ``CMakeLists.txt`` agrees: same project name, every ``msg/*.msg`` / ``srv/*.srv`` file passed to
  ``rosidl_generate_interfaces``, interface dependencies declared, no
  ``ament_python_install_package`` for our own name (rosidl_python #141).
* Every third-party module imported by the package's runtime code (``dynamic_ofa_ros``,
  ``offline_tools``, ``launch``) is declared: a rosdep key in package.xml and/or a pip
  requirement in requirements.txt; pip-only packages (no rosdep key, such as ``ofa``) also in
  requirements-system-ros.txt, for users of a system ROS 2.

Prints the problems and exits 1 if there are any. Uses only the standard library (+ optional
catkin_pkg), so it runs without a build.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_NAME = "dynamic_ofa_ros"
FIRST_PARTY = {"dynamic_ofa_ros", "offline_tools"}
RUNTIME_CODE_DIRS = ("dynamic_ofa_ros", "offline_tools", "launch")
# pip requirements for users of a system ROS 2 (apt): what has no rosdep key.
SYSTEM_ROS_REQUIREMENTS = "requirements-system-ros.txt"

REQUIRED_BUILDTOOL = {"ament_cmake", "ament_cmake_python", "rosidl_default_generators"}
REQUIRED_RUNTIME = {
    "rclpy",
    "std_msgs",
    "sensor_msgs",
    "diagnostic_msgs",
    "rosidl_default_runtime",
    "cv_bridge",
    "launch",
    "launch_ros",
    "python3-numpy",
    "python3-opencv",
    "python3-torch",
    "python3-torchvision",
    "python3-yaml",
}

# Top-level import name -> (rosdep key or None, pip requirement name or None).
# rosdep None: no rosdep key exists, the pip requirement alone declares it.
# pip None: not installable from PyPI (launch, launch_ros): package.xml alone declares it.
KNOWN_IMPORTS: dict[str, tuple[str | None, str | None]] = {
    "numpy": ("python3-numpy", "numpy"),
    "cv2": ("python3-opencv", "opencv-python-headless"),
    "torch": ("python3-torch", "torch"),
    "torchvision": ("python3-torchvision", "torchvision"),
    "PIL": ("python3-pil", "pillow"),
    "yaml": ("python3-yaml", "PyYAML"),
    "tqdm": ("python3-tqdm", "tqdm"),
    "matplotlib": ("python3-matplotlib", "matplotlib"),
    "ofa": (None, "ofa"),
    "safetensors": (None, "safetensors"),
    "gdown": (None, "gdown"),
    "rosbags": (None, "rosbags"),
    "skimage": (None, "scikit-image"),
    "rclpy": ("rclpy", "ros-rclpy"),
    "std_msgs": ("std_msgs", "ros-std-msgs"),
    "std_srvs": ("std_srvs", "ros-std-srvs"),
    "sensor_msgs": ("sensor_msgs", "ros-sensor-msgs"),
    "diagnostic_msgs": ("diagnostic_msgs", "ros-diagnostic-msgs"),
    "builtin_interfaces": ("builtin_interfaces", "ros-builtin-interfaces"),
    "rcl_interfaces": ("rcl_interfaces", "ros-rcl-interfaces"),
    "ament_index_python": ("ament_index_python", "ros-ament-index-python"),
    "cv_bridge": ("cv_bridge", "cv-bridge"),
    "launch": ("launch", None),
    "launch_ros": ("launch_ros", None),
}

DEPEND_TAGS = {
    "depend",
    "build_depend",
    "build_export_depend",
    "buildtool_depend",
    "buildtool_export_depend",
    "exec_depend",
    "test_depend",
    "doc_depend",
}
# package.xml format 3: name, version, description first (in this order), then any of these.
FORMAT3_LATER_TAGS = {
    "maintainer",
    "license",
    "url",
    "author",
    *DEPEND_TAGS,
    "conflict",
    "replace",
    "group_depend",
    "member_of_group",
    "export",
}


@dataclass
class PackageInfo:
    name: str
    version: str
    deps: dict[str, set[str]] = field(default_factory=dict)  # tag -> names
    groups: set[str] = field(default_factory=set)
    build_type: str | None = None

    def runtime(self) -> set[str]:
        return self.deps.get("depend", set()) | self.deps.get("exec_depend", set())

    def buildtool(self) -> set[str]:
        return self.deps.get("buildtool_depend", set())

    def all_deps(self) -> set[str]:
        return set().union(*self.deps.values()) if self.deps else set()


def parse_package_xml(path: Path, problems: list[str]) -> PackageInfo | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        problems.append(f"{path.name}: not well-formed XML: {exc}")
        return None
    if root.tag != "package":
        problems.append(f"{path.name}: root element is <{root.tag}>, expected <package>")
        return None
    if root.get("format") != "3":
        problems.append(f'{path.name}: format="{root.get("format")}", expected format="3"')
    tags = [child.tag for child in root if isinstance(child.tag, str)]
    if tags[:3] != ["name", "version", "description"]:
        problems.append(f"{path.name}: must start with <name>, <version>, <description>; found {tags[:3]}")
    for tag in tags[3:]:
        if tag not in FORMAT3_LATER_TAGS:
            problems.append(f"{path.name}: element <{tag}> is not allowed in format 3")
    for tag in ("name", "version", "description", "maintainer", "license"):
        if not (root.findtext(tag) or "").strip():
            problems.append(f"{path.name}: <{tag}> missing or empty")
    for maintainer in root.findall("maintainer"):
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", maintainer.get("email", "")):
            problems.append(f"{path.name}: <maintainer> needs a valid email attribute")
    version = (root.findtext("version") or "").strip()
    if version and not re.fullmatch(r"\d+\.\d+\.\d+", version):
        problems.append(f"{path.name}: version {version!r} is not MAJOR.MINOR.PATCH")

    info = PackageInfo(name=(root.findtext("name") or "").strip(), version=version)
    for tag in DEPEND_TAGS:
        names = [(el.text or "").strip() for el in root.findall(tag)]
        for name in names:
            if not name:
                problems.append(f"{path.name}: empty <{tag}>")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"{path.name}: duplicate <{tag}> {dupes}")
        info.deps[tag] = {n for n in names if n}
    both = info.deps["depend"] & (
        info.deps["build_depend"] | info.deps["build_export_depend"] | info.deps["exec_depend"]
    )
    if both:
        problems.append(f"{path.name}: {sorted(both)} listed as <depend> and as build/exec depend")
    info.groups = {(el.text or "").strip() for el in root.findall("member_of_group")}
    info.build_type = (root.findtext("export/build_type") or "").strip() or None
    return info


def catkin_pkg_problems(path: Path) -> list[str]:
    """Validation by catkin_pkg (what colcon and rosdep use), when it is installed."""
    try:
        from catkin_pkg.package import InvalidPackage, parse_package
    except ImportError:
        return []
    try:
        package = parse_package(str(path))
        package.validate()
    except InvalidPackage as exc:
        return [f"{path.name}: catkin_pkg: {exc}"]
    return []


def check_package_xml(info: PackageInfo) -> list[str]:
    problems: list[str] = []
    if info.name != PACKAGE_NAME:
        problems.append(f"package.xml: name {info.name!r}, expected {PACKAGE_NAME!r}")
    if missing := sorted(REQUIRED_BUILDTOOL - info.buildtool()):
        problems.append(f"package.xml: missing <buildtool_depend> {missing}")
    if missing := sorted(REQUIRED_RUNTIME - info.runtime()):
        problems.append(f"package.xml: missing runtime (<depend>/<exec_depend>) {missing}")
    if "rosidl_interface_packages" not in info.groups:
        problems.append("package.xml: missing <member_of_group>rosidl_interface_packages</member_of_group>")
    if info.build_type != "ament_cmake":
        problems.append(f"package.xml: <export><build_type> is {info.build_type!r}, expected 'ament_cmake'")
    return problems


def _strip_cmake_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def interface_files(root: Path = ROOT) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for d in ("msg", "srv", "action") for p in (root / d).glob(f"*.{d}")
    )


def interface_dependencies(root: Path = ROOT) -> set[str]:
    """ROS packages referenced by field types (``pkg/Type``) in msg/srv files."""
    deps: set[str] = set()
    for rel in interface_files(root):
        for line in (root / rel).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line == "---":
                continue
            m = re.match(r"([A-Za-z0-9_]+)/[A-Za-z0-9_]+", line.split()[0])
            if m:
                deps.add(m.group(1))
    return deps


def check_cmake(info: PackageInfo | None, root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    text = _strip_cmake_comments((root / "CMakeLists.txt").read_text(encoding="utf-8"))
    project = re.search(r"\bproject\s*\(\s*([A-Za-z0-9_]+)", text)
    if not project or project.group(1) != PACKAGE_NAME:
        problems.append(f"CMakeLists.txt: project() must be {PACKAGE_NAME}")
    gen = re.search(r"rosidl_generate_interfaces\s*\((.*?)\)", text, re.S)
    if not gen:
        return problems + ["CMakeLists.txt: no rosidl_generate_interfaces()"]
    listed = set(re.findall(r'"?((?:msg|srv|action)/[A-Za-z0-9_]+\.(?:msg|srv|action))"?', gen.group(1)))
    files = set(interface_files(root))
    if missing := sorted(files - listed):
        problems.append(f"CMakeLists.txt: rosidl_generate_interfaces() misses {missing}")
    if extra := sorted(listed - files):
        problems.append(f"CMakeLists.txt: rosidl_generate_interfaces() lists missing files {extra}")
    dep_match = re.search(r"DEPENDENCIES\s+([A-Za-z0-9_\s]+)", gen.group(1))
    cmake_deps = set(dep_match.group(1).split()) if dep_match else set()
    if missing := sorted(interface_dependencies(root) - cmake_deps):
        problems.append(f"CMakeLists.txt: rosidl_generate_interfaces() DEPENDENCIES misses {missing}")
    if info is not None:
        declared = info.deps.get("depend", set()) | info.deps.get("build_depend", set())
        if missing := sorted(cmake_deps - declared):
            problems.append(f"package.xml: interface dependencies {missing} must be <depend>")
    own_name = r"(\$\{PROJECT_NAME\}|" + PACKAGE_NAME + r")(?=[\s)])"
    if re.search(r"ament_python_install_package\s*\(\s*" + own_name, text):
        problems.append(
            "CMakeLists.txt: ament_python_install_package() for our own package collides with "
            "rosidl_generate_interfaces() (rosidl_python #141); use install(DIRECTORY)"
        )
    return problems


def _python_files(root: Path, dirs: Iterable[str]) -> Iterator[Path]:
    for d in dirs:
        base = root / d
        if base.is_dir():
            yield from (p for p in sorted(base.rglob("*.py")) if "__pycache__" not in p.parts)


def third_party_imports(root: Path = ROOT, dirs: Iterable[str] = RUNTIME_CODE_DIRS) -> dict[str, set[str]]:
    """Top-level third-party module name -> files (relative) importing it."""
    found: dict[str, set[str]] = {}
    stdlib = set(sys.stdlib_module_names)
    for path in _python_files(root, dirs):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".", 1)[0]
                if top in stdlib or top in FIRST_PARTY or top == "__future__":
                    continue
                found.setdefault(top, set()).add(str(path.relative_to(root)))
    return found


def requirement_names(path: Path) -> set[str]:
    names: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if m:
            names.add(normalize(m.group(0)))
    return names


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_imports(info: PackageInfo | None, root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    reqs = requirement_names(root / "requirements.txt")
    system_ros_file = root / SYSTEM_ROS_REQUIREMENTS
    system_ros_reqs = requirement_names(system_ros_file) if system_ros_file.is_file() else set()
    declared = info.all_deps() if info else set()
    for module, files in sorted(third_party_imports(root).items()):
        where = ", ".join(sorted(files)[:3])
        if module not in KNOWN_IMPORTS:
            problems.append(
                f"import {module} ({where}): unknown dependency; declare it in package.xml (rosdep key) "
                f"and/or requirements.txt + setup.py, and add it to KNOWN_IMPORTS in scripts/check_package.py"
            )
            continue
        rosdep, pip = KNOWN_IMPORTS[module]
        if rosdep and info is not None and rosdep not in declared:
            problems.append(
                f"import {module} ({where}): add <exec_depend>{rosdep}</exec_depend> to package.xml"
            )
        if pip and normalize(pip) not in reqs:
            problems.append(f"import {module} ({where}): add {pip} to requirements.txt")
        if rosdep is None and pip and normalize(pip) not in system_ros_reqs:
            problems.append(
                f"import {module} ({where}): add {pip} to {SYSTEM_ROS_REQUIREMENTS} (no rosdep key)"
            )
    return problems


def run_checks(root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    info = parse_package_xml(root / "package.xml", problems)
    problems += catkin_pkg_problems(root / "package.xml")
    if info is not None:
        problems += check_package_xml(info)
    problems += check_cmake(info, root)
    problems += check_imports(info, root)
    return problems


def main() -> int:
    problems = run_checks()
    for problem in problems:
        print(f"check_package: {problem}")
    if problems:
        return 1
    print("check_package: package.xml, CMakeLists.txt and declared dependencies OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
