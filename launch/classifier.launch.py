"""Launch one Dynamic-OFA classifier node.

Usage::

    ros2 launch dynamic_ofa_ros classifier.launch.py image_topic:=/camera/image_raw
    ros2 launch dynamic_ofa_ros classifier.launch.py device:=cuda latency_budget_ms:=15 namespace:=front

Every argument left empty keeps the value of the parameters file (``params_file``, by default the
installed ``config/classifier.yaml``); a non-empty one overrides it.
"""

from __future__ import annotations

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchContext, LaunchDescription

PACKAGE = "dynamic_ofa_ros"
SIGTERM_TIMEOUT_S = "15"  # seconds from SIGINT to SIGTERM


def _overrides(context: LaunchContext) -> dict[str, object]:
    """Parameters given as non-empty launch arguments, typed like the node declares them."""
    overrides: dict[str, object] = {}
    device = LaunchConfiguration("device").perform(context).strip()
    if device:
        overrides["device"] = device
    budget = LaunchConfiguration("latency_budget_ms").perform(context).strip()
    if budget:
        overrides["latency_budget_ms"] = float(budget)
    compressed = LaunchConfiguration("use_compressed").perform(context).strip().lower()
    if compressed:
        overrides["use_compressed"] = compressed in ("true", "1", "yes")
    return overrides


def _classifier(context: LaunchContext) -> list[Node]:
    """The classifier node with the resolved arguments."""
    image_topic = LaunchConfiguration("image_topic").perform(context)
    return [
        Node(
            package=PACKAGE,
            executable="classifier_node",
            name="dynamic_ofa_classifier",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), _overrides(context)],
            # The node derives its compressed topic from the resolved `image` topic
            # (<image_topic>/compressed, as image_transport does).
            remappings=[("image", image_topic)],
            output="screen",
            emulate_tty=True,
            # Ctrl-C: the node stops at once, but the interpreter's teardown of torch & co. takes
            # seconds (2.5 s measured for one node, 4.7 s for two at once on 2 busy cores); launch's
            # default of 5 s before SIGTERM cut two of them short.
            sigterm_timeout=SIGTERM_TIMEOUT_S,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    """Arguments: image_topic, params_file, device, latency_budget_ms, namespace, use_compressed."""
    default_params = PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "classifier.yaml"])
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "image_topic", default_value="/camera/image_raw", description="sensor_msgs/Image input topic"
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=default_params,
                description="YAML file with the node's parameters",
            ),
            DeclareLaunchArgument(
                "device", default_value="", description="cpu | cuda | auto (empty: from params_file)"
            ),
            DeclareLaunchArgument(
                "latency_budget_ms",
                default_value="",
                description="latency budget per frame in ms, 0 = none (empty: from params_file)",
            ),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
            DeclareLaunchArgument(
                "use_compressed",
                default_value="",
                description="also subscribe <image_topic>/compressed (true/false; empty: from params_file)",
            ),
            OpaqueFunction(function=_classifier),
        ]
    )
