"""Rosbag replay: real Imagenette photos, written to a rosbag2 with ``rosbags``, played into the node.

The bag (sqlite3, ``sensor_msgs/msg/Image`` rgb8 at 5 fps) is read back with ``rosbags``,
deserialized with rclpy from its CDR bytes and published with the recorded timing and stamps
by the ROS tools' ``BagPlayer`` (a reliable publisher, as ``ros2 bag play`` uses). Every
prediction carries the stamp of one bag message, and its top-1 class (and probabilities)
equal the core's on the same image at the level the node reported.

Runs on the session's random-weight table and on the product default (embedded model +
``config/levels/cpu.json``; skipped while that table is not shipped), where the top-1
accuracy against the Imagenette labels is reported as well.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

PER_CLASS = 2


def _imagenette(shared_dir: Path) -> tuple[list[np.ndarray], list[int]]:
    from offline_tools.datasets import IMAGENETTE_WNIDS

    path = shared_dir / "datasets" / "imagenette" / "val-224px.zip"
    if not path.is_file():
        pytest.skip(f"{path} not found (shared data set)")
    images: list[np.ndarray] = []
    labels: list[int] = []
    taken: dict[str, int] = {}
    with zipfile.ZipFile(path) as zf:
        for name in sorted(zf.namelist()):
            if not name.lower().endswith((".jpeg", ".jpg")):
                continue
            wnid = Path(name).parent.name
            if taken.get(wnid, 0) >= PER_CLASS:
                continue
            bgr = cv2.imdecode(np.frombuffer(zf.read(name), np.uint8), cv2.IMREAD_COLOR)
            assert bgr is not None, name
            images.append(np.ascontiguousarray(bgr[:, :, ::-1]))
            labels.append(int(IMAGENETTE_WNIDS[wnid]))
            taken[wnid] = taken.get(wnid, 0) + 1
    assert len(taken) == 10, taken
    return images, labels


@pytest.fixture(params=["random", "embedded"])
def model(request: pytest.FixtureRequest, core: Any) -> tuple[dict[str, Any], Any]:
    """(node parameters, comparison engine) for the random test table or the product default."""
    if request.param == "random":
        return {"model": "random", "level_table": str(core.table_path)}, core.engine()
    from dynamic_ofa_ros.engine import LevelEngine
    from dynamic_ofa_ros.levels import load_level_table
    from dynamic_ofa_ros.paths import default_level_table
    from dynamic_ofa_ros.supernet import load_supernet

    table_path = default_level_table("cpu")
    if not table_path.is_file():
        pytest.skip(f"product default level table {table_path} not shipped yet")
    supernet = load_supernet("embedded")
    table = load_level_table(table_path, supernet=supernet)
    engine = LevelEngine(supernet, table, device="cpu", threads=1)
    return {"model": "embedded", "level_table": str(table_path)}, engine


def test_rosbag_replay_matches_core(
    harness: Any, model: tuple[dict[str, Any], Any], shared_dir: Path, tmp_path: Path, waiter: Any
) -> None:
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.msg import Prediction
    from dynamic_ofa_ros.ros_tools.bags import BagPlayer, read_image_bag, write_image_bag

    images, labels = _imagenette(shared_dir)
    params, engine = model
    bag = tmp_path / "imagenette_bag"
    start_ns = 1_700_000_000_000_000_000  # a recorded stream: stamps far from now
    assert write_image_bag(bag, images, topic="/camera/image_raw", fps=5.0, start_ns=start_ns) == len(images)
    messages = read_image_bag(bag, "/camera/image_raw")
    assert [ts for ts, _ in messages] == [start_ns + i * 200_000_000 for i in range(len(images))]

    node = harness.start_node("replay", **params)
    predictions = harness.collect(Prediction, f"{node.get_fully_qualified_name()}/prediction")
    pub = harness.publisher(Image, f"{harness.namespace}/image", reliable=True, depth=10)
    player = BagPlayer(harness.probe, pub, messages, rate=1.0, loop=False, restamp=False)
    started = time.perf_counter()
    player.start()
    player.join(timeout=120.0)
    played_s = time.perf_counter() - started
    assert not player.is_alive()
    last = player.published[-1][0]
    waiter(
        lambda: any(p.header.stamp.sec * 10**9 + p.header.stamp.nanosec == last for p in predictions), 60.0
    )
    time.sleep(0.5)

    index_of = dict(player.published)
    matched = 0
    correct = 0
    for pred in list(predictions):
        stamp = pred.header.stamp.sec * 10**9 + pred.header.stamp.nanosec
        assert stamp in index_of, "prediction for a frame that was not played"
        assert pred.header.frame_id == "camera"
        engine.switch(int(pred.level))
        expected = engine.infer(images[index_of[stamp]])
        assert pred.class_id == int(np.argmax(expected.probs)), f"frame {index_of[stamp]}"
        assert pred.score == pytest.approx(float(expected.probs.max()), rel=1e-5)
        # recorded stamps are not "now": latency falls back to the arrival time (documented)
        assert 0.0 < pred.latency_ms < 60_000.0
        matched += 1
        correct += int(pred.class_id == labels[index_of[stamp]])
    print(
        f"{params['model']}: replayed {len(images)} frames in {played_s:.1f} s; {matched} predictions, all "
        f"equal to the core's; top-1 vs Imagenette labels {100.0 * correct / max(matched, 1):.0f} %"
    )
    if params["model"] == "embedded":
        assert correct / matched > 0.3, "the embedded model should classify Imagenette photos"
    assert matched >= len(images) // 2
    assert node.errors == 0
