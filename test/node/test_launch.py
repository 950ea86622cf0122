"""Launch files: statically valid everywhere; loaded through ``launch_ros`` where it is installed.

``launch``/``launch_ros`` are not on PyPI, so on these machines the loading test is skipped
with that reason; the static checks (syntax, declared arguments, executable and parameter
files they refer to) always run.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

LAUNCH_DIR = Path(__file__).resolve().parents[2] / "launch"
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


def _declared_arguments(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
    return names


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGUMENTS))
def test_launch_file_static(name: str) -> None:
    """Parses, defines generate_launch_description, declares the arguments, runs classifier_node."""
    source = (LAUNCH_DIR / name).read_text(encoding="utf-8")
    tree = ast.parse(source, filename=name)
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    assert _declared_arguments(tree) == EXPECTED_ARGUMENTS[name]
    strings = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert "classifier_node" in strings and "dynamic_ofa_ros" in strings
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {"launch", "launch_ros.actions"} <= modules
    compile(source, name, "exec")


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


def _load_launch(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH_DIR / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGUMENTS))
def test_launch_file_loads(name: str) -> None:
    """With launch_ros installed (a system ROS 2): the description builds and yields the node actions."""
    pytest.importorskip("launch_ros", reason="launch/launch_ros are not installable from PyPI here")
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    from launch import LaunchContext, LaunchDescription

    module = _load_launch(name)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    arguments = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert arguments == EXPECTED_ARGUMENTS[name]
    context = LaunchContext()
    for argument in description.entities:
        if isinstance(argument, DeclareLaunchArgument):
            context.launch_configurations[argument.name] = (
                str(CONFIG_DIR / "classifier.yaml") if argument.name == "params_file" else ""
            )
    context.launch_configurations["image_topic"] = "/camera/image_raw"
    functions = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    assert len(functions) == 1
    nodes = functions[0].execute(context)
    assert nodes and all(type(n).__name__ == "Node" for n in nodes)


def test_docs_list_every_parameter() -> None:
    """docs/node.md documents every parameter the node declares."""
    from dynamic_ofa_ros.node import PARAMETERS

    text = (Path(__file__).resolve().parents[2] / "docs" / "node.md").read_text(encoding="utf-8")
    missing = [spec.name for spec in PARAMETERS if f"| `{spec.name}` |" not in text]
    assert not missing, f"docs/node.md lacks parameters {missing}"
