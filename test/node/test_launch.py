"""Launch files: their arguments as ``ros2 launch --show-args`` lists them, the parameter files they load.

The launch files run for real in ``test_commands.py`` (``ros2 launch`` with arguments, both
files, a ``launch_testing`` test and Ctrl-C); here ``ros2 launch --show-args`` (in the
environment the ``ros_deps`` fixture builds from ``../shared/ros-deps``; skipped with the reason
without it) pins the arguments each file declares and their documentation, and the parameter
files are checked against the parameters the node declares (no ROS needed).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

EXPECTED_ARGUMENTS = {
    "classifier.launch.py": {
        "image_topic",
        "params_file",
        "device",
        "latency_budget_ms",
        "namespace",
        "use_compressed",
    },
    "two_classifiers.launch.py": {"image_topic", "params_file", "device", "namespace", "coordination_group"},
}
DEFAULT_PARAMS = {
    "classifier.launch.py": "classifier.yaml",
    "two_classifiers.launch.py": "two_classifiers.yaml",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGUMENTS))
def test_launch_arguments_as_ros2_launch_shows_them(
    name: str, ros_deps: dict[str, str], install_prefix: Path
) -> None:
    """Each declared argument, with a description; params_file defaults to the installed config."""
    done = subprocess.run(
        ["ros2", "launch", "dynamic_ofa_ros", name, "--show-args"],
        env=ros_deps,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    blocks = dict(re.findall(r"^    '(\w+)':\n((?:        .*\n?)+)", done.stdout, re.M))
    assert set(blocks) == EXPECTED_ARGUMENTS[name], done.stdout
    for argument, body in blocks.items():
        description, default = (line.strip() for line in body.strip().splitlines()[:2])
        assert description and default.startswith("(default:"), (argument, body)
    config = DEFAULT_PARAMS[name]
    assert f"'config' + '{config}'" in blocks["params_file"], blocks["params_file"]
    assert (install_prefix / "dynamic_ofa_ros" / "share" / "dynamic_ofa_ros" / "config" / config).is_file()


def test_parameter_files_match_node_parameters() -> None:
    """Every key of the YAML files is a parameter the node declares, with the declared type."""
    from dynamic_ofa_ros.node import PARAMETERS

    declared = {spec.name: spec.default for spec in PARAMETERS}
    for file in ("classifier.yaml", "two_classifiers.yaml"):
        data = yaml.safe_load((CONFIG_DIR / file).read_text(encoding="utf-8"))
        for section, body in data.items():
            params = body["ros__parameters"]
            for key, value in params.items():
                assert key in declared, f"{file} [{section}]: unknown parameter {key}"
                default = declared[key]
                if isinstance(default, float):
                    assert isinstance(value, (int, float)) and not isinstance(value, bool), (file, key)
                else:
                    assert type(value) is type(default), (file, key, value)
    classifier = yaml.safe_load((CONFIG_DIR / "classifier.yaml").read_text(encoding="utf-8"))
    assert set(classifier["/**"]["ros__parameters"]) == set(declared), (
        "classifier.yaml must list every parameter"
    )


def test_docs_list_every_parameter() -> None:
    """docs/node.md documents every parameter the node declares."""
    from dynamic_ofa_ros.node import PARAMETERS

    text = (Path(__file__).resolve().parents[2] / "docs" / "node.md").read_text(encoding="utf-8")
    missing = [spec.name for spec in PARAMETERS if f"| `{spec.name}` |" not in text]
    assert not missing, f"docs/node.md lacks parameters {missing}"
