"""The floor of any ROS classifier node: a plain rclpy relay that does no work.

It subscribes to the camera ``Image`` with the classifier's QoS (sensor data: best effort,
keep last 1) and publishes a ``Prediction`` carrying only the frame's header, from rclpy's
``SingleThreadedExecutor`` (``--executor events``: the ``EventsExecutor`` that
``classifier_node`` runs). ``node_bench`` sends the same frames through it in lock step, in the
same run, so the classifier's added latency can be compared with what the transport and rclpy
alone cost. Its frame buffers are kept in the heap as the classifier's are
(:func:`~dynamic_ofa_ros.node_frames.keep_frame_buffers`): without that a fresh process
page-faults every large frame in, which would make the floor a measure of glibc's thresholds::

    python -m dynamic_ofa_ros.ros_tools.relay --name dofa_relay --topic /camera/image_raw

With ``DOFA_NODE_TRACE=<file>`` it records, like the classifier's
:class:`~dynamic_ofa_ros.node_frames.StageTrace`, when each frame's callback started and its
message was published (``time.time_ns``), written to the file when it stops.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the relay node until SIGINT/SIGTERM (exit 0)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--name", default="dofa_relay", help="node name; it publishes /<name>/prediction")
    parser.add_argument("--topic", default="/camera/image_raw", help="camera topic")
    parser.add_argument(
        "--executor",
        choices=("single", "events"),
        default="single",
        help="rclpy's SingleThreadedExecutor (a plain node) or its EventsExecutor (as classifier_node)",
    )
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import Prediction
    from dynamic_ofa_ros.node_frames import TRACE_ENV, StageTrace, keep_frame_buffers
    from dynamic_ofa_ros.timing import write_json

    keep_frame_buffers()  # as the classifier does: the floor is transport and rclpy, not page faults
    # the EventsExecutor handles SIGINT/SIGTERM itself (as in classifier_node: no rclpy handlers)
    handlers = SignalHandlerOptions.NO if args.executor == "events" else SignalHandlerOptions.ALL
    with (
        contextlib.suppress(KeyboardInterrupt, ExternalShutdownException),
        rclpy.init(signal_handler_options=handlers),
    ):
        node = Node(args.name)
        publisher = node.create_publisher(Prediction, "~/prediction", 10)
        sensor = rclpy.qos.QoSProfile(
            history=qos_profile_sensor_data.history,
            depth=1,
            reliability=qos_profile_sensor_data.reliability,
        )

        trace_path = os.environ.get(TRACE_ENV, "")
        rows: list[list[float]] = []

        def relay(msg: Image) -> None:
            started = time.time_ns() if trace_path else 0
            out = Prediction()
            out.header = msg.header
            publisher.publish(out)
            if trace_path and len(rows) < StageTrace.MAX_FRAMES:
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                rows.append([stamp, 0.0, started, time.time_ns()])

        node.create_subscription(Image, args.topic, relay, sensor)
        if args.executor == "events":
            from rclpy.experimental import EventsExecutor

            executor = EventsExecutor()
        else:
            executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            # a 1 s timeout, as classifier_node: a signal's wake-up can come before the context is
            # shut down, and the EventsExecutor's spin() then never returned
            while node.context.ok():
                executor.spin_once(timeout_sec=1.0)
        finally:
            if trace_path:
                write_json(Path(trace_path), {"stages": ["callback", "published"], "frames": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
