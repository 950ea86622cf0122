"""``pip install .`` of the ROS-free parts: the runtime core and the offline tools.

The ROS 2 package itself (node, generated msg/srv, launch files) is built by colcon from
CMakeLists.txt + package.xml (build type ament_cmake); colcon does not use this file.
The version is read from package.xml, the single source of truth.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent


def package_version() -> str:
    """The package version, read from package.xml's ``<version>``."""
    version = ET.parse(HERE / "package.xml").getroot().findtext("version")
    if not version:
        raise RuntimeError("package.xml has no <version>")
    return version.strip()


# Runtime requirements of dynamic_ofa_ros (core) and offline_tools. Ranges here, exact pins in
# requirements.txt. `ofa` imports Pillow and gdown without declaring them.
INSTALL_REQUIRES = [
    "torch>=2.1",
    "torchvision>=0.16",
    "ofa==0.1.0.post202307202001",
    "pillow",
    "gdown",
    "safetensors>=0.4",
    # compiled execution backends (dynamic_ofa_ros/backends); onnx: torch.onnx.export needs it
    "openvino>=2024.0",
    "onnxruntime>=1.17",
    "onnx>=1.15",
    "numpy>=1.24",
    "opencv-python-headless>=4.8",
    "PyYAML>=6",
    "tqdm",
    "matplotlib>=3.7",
    "rosbags>=0.9.20",
]

EXTRAS_REQUIRE = {
    # photos for the demo (dynamic_ofa_ros.ros_tools.demo, which also needs ROS)
    "demo": ["scikit-image"],
    # `dofa-levels measure|search|calibrate|build --executor ray` (offline_tools/executors)
    "distributed": ["ray>=2.9"],
    "dev": ["pytest>=8", "pytest-timeout", "ruff", "mypy", "types-PyYAML"],
}

CONSOLE_SCRIPTS = [
    "dofa-bench = dynamic_ofa_ros.bench:main",
    "dofa-levels = offline_tools.cli:main",
]


if __name__ == "__main__":
    from setuptools import find_packages, setup

    setup(
        name="dynamic_ofa_ros",
        version=package_version(),
        description=(
            "Dynamic-OFA: runtime switching between sub-networks of a Once-for-All MobileNetV3 "
            "super-network to meet latency and accuracy constraints (ROS-free core + offline tools)"
        ),
        long_description=(HERE / "README.md").read_text(encoding="utf-8")
        if (HERE / "README.md").is_file()
        else "",
        long_description_content_type="text/markdown",
        license="MIT",
        # typing.Self and datetime.UTC: 3.11 (so ROS 2 Humble, on Python 3.10, is not supported)
        python_requires=">=3.11",
        packages=find_packages(
            include=["dynamic_ofa_ros", "dynamic_ofa_ros.*", "offline_tools", "offline_tools.*"]
        ),
        # The embedded super-network (fp16 safetensors shards + manifest) ships with the package;
        # py.typed: both packages are typed (PEP 561), so mypy checks code that uses them.
        # imagenet_classes.json: the class names (labels.py), read without torchvision/torch.
        package_data={
            "dynamic_ofa_ros": [
                "embedded/*.safetensors",
                "embedded/*.json",
                "imagenet_classes.json",
                "py.typed",
            ],
            "offline_tools": ["py.typed"],
        },
        install_requires=INSTALL_REQUIRES,
        extras_require=EXTRAS_REQUIRE,
        entry_points={"console_scripts": CONSOLE_SCRIPTS},
        zip_safe=False,
    )
