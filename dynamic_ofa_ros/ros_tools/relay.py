"""The floor of any ROS classifier node: a plain rclpy relay that does no work.

It subscribes to the camera ``Image`` with the classifier's QoS (sensor data: best effort,
keep last 1) and publishes a ``Prediction`` carrying only the frame's header, from a
``SingleThreadedExecutor`` like the classifier. ``node_bench`` sends the same frames through it
in lock step, in the same run, so the classifier's added latency can be compared with what
the transport and rclpy alone cost::

    python -m dynamic_ofa_ros.ros_tools.relay --name dofa_relay --topic /camera/image_raw
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the relay node until SIGINT/SIGTERM (exit 0)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--name", default="dofa_relay", help="node name; it publishes /<name>/prediction")
    parser.add_argument("--topic", default="/camera/image_raw", help="camera topic")
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import Prediction

    with contextlib.suppress(KeyboardInterrupt, ExternalShutdownException), rclpy.init():
        node = Node(args.name)
        publisher = node.create_publisher(Prediction, "~/prediction", 10)
        sensor = rclpy.qos.QoSProfile(
            history=qos_profile_sensor_data.history,
            depth=1,
            reliability=qos_profile_sensor_data.reliability,
        )

        def relay(msg: Image) -> None:
            out = Prediction()
            out.header = msg.header
            publisher.publish(out)

        node.create_subscription(Image, args.topic, relay, sensor)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    return 0


if __name__ == "__main__":
    sys.exit(main())
