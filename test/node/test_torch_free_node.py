"""With a warm compiled-level cache the node process runs its OpenVINO levels without PyTorch.

The cache (a temporary ``DOFA_CACHE_DIR``) is filled here, in the test process, by a
``LevelEngine`` on the embedded model and the shipped ``config/levels/cpu.json``; then the installed
``classifier_node`` is started on the same model, table and cache, classifies camera frames, and
its ``/proc/<pid>/maps`` must hold OpenVINO's libraries and no libtorch.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_a_warm_node_never_maps_libtorch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rclpy
    from rclpy.context import Context
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.backends import installed
    from dynamic_ofa_ros.engine import LevelEngine
    from dynamic_ofa_ros.levels import load_level_table
    from dynamic_ofa_ros.msg import Prediction
    from dynamic_ofa_ros.paths import config_file
    from dynamic_ofa_ros.ros_tools.common import ClassifierProcess, ToolNode, image_msg
    from dynamic_ofa_ros.supernet import load_supernet

    if not installed("openvino"):
        pytest.skip("openvino is not installed")
    monkeypatch.setenv("DOFA_CACHE_DIR", str(tmp_path / "compiled"))
    table_path = config_file("levels/cpu.json")
    model = load_supernet("embedded")
    warmed = LevelEngine(model, load_level_table(table_path, supernet=model), warmup=0)
    assert {info["cache"] for info in warmed.execution.values()} == {"built"}
    del warmed

    name, topic = "torch_free_classifier", "/torch_free/camera"
    params = {"device": "cpu", "model": "embedded", "backend": "openvino", "level_table": str(table_path)}
    context = Context()
    rclpy.init(context=context)
    tool = ToolNode("torch_free_probe", context)
    node = ClassifierProcess.start(name, params, tmp_path / "node.log", topic=topic)
    try:
        got: list[Prediction] = []
        tool.node.create_subscription(Prediction, f"/{name}/prediction", got.append, 10)
        pub = tool.node.create_publisher(Image, topic, qos_profile_sensor_data)
        rgb = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
        deadline = time.monotonic() + 240.0
        while len(got) < 3:
            node.check_running()
            assert time.monotonic() < deadline, f"no predictions:\n{node.tail()}"
            pub.publish(image_msg(rgb))
            time.sleep(0.1)
        maps = Path(f"/proc/{node.pid}/maps").read_text(errors="replace")
        assert "libopenvino" in maps  # the compiled levels run in this process
        assert "libtorch" not in maps, "the node loaded libtorch although every level was in the cache"
        assert all(p.level in (1, 2, 3, 4, 5, 6, 7) for p in got)
    finally:
        node.stop()
        tool.close()
        rclpy.shutdown(context=context)
