"""launch_testing: the installed ``classifier.launch.py`` classifies a real photo and exits cleanly.

Run by ``launch_test`` (test/node/test_commands.py does, in the ros-deps environment); not
collected by pytest itself. The launch file is included as a user's launch file would include
it, with ``device:=cpu`` and a namespace of its own; the test publishes a real photo
(``$DOFA_TEST_PHOTO``, an RGB ``.npy`` file) on the image topic and waits for a ``Prediction`` of
its class (``$DOFA_TEST_PHOTO_CLASS``); after shutdown, every process exited with 0.
"""

from __future__ import annotations

import os
import time
import unittest
from pathlib import Path

import launch_testing.actions
import launch_testing.asserts
import numpy as np
import rclpy
from ament_index_python.packages import get_package_share_directory
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from sensor_msgs.msg import Image

from dynamic_ofa_ros.msg import Prediction
from launch import LaunchDescription

NS = f"/lt{os.getpid()}"
IMAGE_TOPIC = f"{NS}/camera/image_raw"


def generate_test_description() -> LaunchDescription:
    launch_file = Path(get_package_share_directory("dynamic_ofa_ros")) / "launch" / "classifier.launch.py"
    classifier = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(launch_file)),
        launch_arguments={"namespace": NS, "image_topic": IMAGE_TOPIC, "device": "cpu"}.items(),
    )
    return LaunchDescription([classifier, launch_testing.actions.ReadyToTest()])


class TestClassifierOutputs(unittest.TestCase):
    """While the launch runs."""

    def test_ready_then_the_photo_is_classified(self, proc_output: launch_testing.ActiveIoHandler) -> None:
        proc_output.assertWaitFor("ready:", timeout=180)
        rgb = np.load(os.environ["DOFA_TEST_PHOTO"])
        h, w, _ = rgb.shape
        predictions: list[Prediction] = []
        rclpy.init()  # not `with rclpy.init()`: Jazzy's rclpy returns None
        try:
            node = rclpy.create_node("launch_test_probe")
            node.create_subscription(
                Prediction, f"{NS}/dynamic_ofa_classifier/prediction", predictions.append, 10
            )
            publisher = node.create_publisher(Image, IMAGE_TOPIC, 10)
            image = Image(height=h, width=w, encoding="rgb8", step=w * 3, data=rgb.tobytes())
            deadline = time.monotonic() + 60.0
            while not predictions and time.monotonic() < deadline:
                image.header.stamp = node.get_clock().now().to_msg()
                publisher.publish(image)
                rclpy.spin_once(node, timeout_sec=0.1)
            node.destroy_node()
        finally:
            rclpy.try_shutdown()
        self.assertTrue(predictions, "no Prediction within 60 s")
        self.assertEqual(predictions[0].class_id, int(os.environ["DOFA_TEST_PHOTO_CLASS"]), predictions[0])


@launch_testing.post_shutdown_test()
class TestClassifierShutdown(unittest.TestCase):
    """After the launch was shut down (launch_testing sends SIGINT)."""

    def test_exit_codes(self, proc_info: launch_testing.ProcInfoHandler) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
