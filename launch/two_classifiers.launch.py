"""Launch two Dynamic-OFA classifiers that share one device and coordinate their levels.

Both nodes read the same camera and belong to the same ``coordination_group``: they exchange
``dynamic_ofa_ros/ManagerStatus`` on ``/dynamic_ofa/coordination`` and the core's coordinator
decides which one steps down or up so that both meet their budgets (paper Fig. 8)::

    ros2 launch dynamic_ofa_ros two_classifiers.launch.py image_topic:=/camera/image_raw device:=cuda
"""

from __future__ import annotations

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchContext, LaunchDescription

PACKAGE = "dynamic_ofa_ros"
SIGTERM_TIMEOUT_S = "15"  # seconds from SIGINT to SIGTERM
NODE_NAMES = ("classifier_a", "classifier_b")


def _classifiers(context: LaunchContext) -> list[Node]:
    """Both classifier nodes, with the resolved arguments."""
    image_topic = LaunchConfiguration("image_topic").perform(context)
    overrides: dict[str, object] = {}
    device = LaunchConfiguration("device").perform(context).strip()
    if device:
        overrides["device"] = device
    group = LaunchConfiguration("coordination_group").perform(context).strip()
    if group:
        overrides["coordination_group"] = group
    return [
        Node(
            package=PACKAGE,
            executable="classifier_node",
            name=name,
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), overrides],
            remappings=[("image", image_topic)],
            output="screen",
            emulate_tty=True,
            # Ctrl-C: the node stops at once, but the interpreter's teardown of torch & co. takes
            # seconds (2.5 s measured for one node, 4.7 s for two at once on 2 busy cores); launch's
            # default of 5 s before SIGTERM cut two of them short.
            sigterm_timeout=SIGTERM_TIMEOUT_S,
        )
        for name in NODE_NAMES
    ]


def generate_launch_description() -> LaunchDescription:
    """Arguments: image_topic, params_file, device, namespace, coordination_group."""
    default_params = PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "two_classifiers.yaml"])
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "image_topic", default_value="/camera/image_raw", description="sensor_msgs/Image input topic"
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=default_params,
                description="YAML file with both nodes' parameters (sections classifier_a, classifier_b)",
            ),
            DeclareLaunchArgument(
                "device", default_value="", description="cpu | cuda | auto (empty: from params_file)"
            ),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of both nodes"),
            DeclareLaunchArgument(
                "coordination_group",
                default_value="",
                description="group name shared by both nodes (empty: from params_file)",
            ),
            OpaqueFunction(function=_classifiers),
        ]
    )
