"""A node round trip per execution backend: the node runs the levels compiled by ``backend``.

The session's random-weight table says torch; relabelled as profiled in OpenVINO or ONNX
Runtime on this CPU (all the node checks), the same three levels run eagerly in torch and
compiled by each runtime (the node preprocessing in NumPy). For every level the node's prediction over
Fast DDS must be what the same backend's engine computes in this process, and the node's engine
must report that backend for every level.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros


@pytest.mark.parametrize("backend", ["torch", "openvino", "onnxruntime"])
def test_round_trip_per_backend(
    harness: Any,
    core: Any,
    photo: np.ndarray,
    image_msg: Any,
    waiter: Any,
    backend: str,
    tmp_path: Path,
) -> None:
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.backends import installed
    from dynamic_ofa_ros.backends.header import profiling_header
    from dynamic_ofa_ros.engine import LevelEngine
    from dynamic_ofa_ros.levels import save_level_table
    from dynamic_ofa_ros.msg import Prediction
    from dynamic_ofa_ros.srv import SetLevel

    if not installed(backend):
        pytest.skip(f"{backend} is not installed")
    table = core.table
    if backend != "torch":
        table = dataclasses.replace(table, profiling={**table.profiling, **profiling_header(backend)})
    table_path = tmp_path / f"cpu-{backend}.json"
    save_level_table(table, table_path, supernet=core.supernet)
    # compiled levels: the node makes its inputs in NumPy, this process's engine with torch's kernel
    preprocessing = "auto" if backend == "torch" else "numpy"
    node = harness.start_node(backend=backend, level_table=str(table_path), preprocessing=preprocessing)
    ns = node.get_fully_qualified_name()
    predictions = harness.collect(Prediction, f"{ns}/prediction")
    pub = harness.publisher(Image, f"{harness.namespace}/image")
    set_level = harness.client(SetLevel, f"{ns}/set_level")
    engine = LevelEngine(core.supernet, table, device="cpu", threads=1, backend=backend)
    execution = node.classifier.engine.execution
    assert node.classifier.engine.backend == backend
    if backend != "torch":
        assert node.classifier.engine.preprocessing == "numpy"
    mode = "eager" if backend == "torch" else "compiled"
    assert {info["mode"] for info in execution.values()} == {mode}, execution

    for level in core.table.numbers:
        response, _ = harness.call(set_level, SetLevel.Request(level=level))
        assert response.accepted, response.message
        expected = engine.infer(photo, level=level)
        top = engine.topk(expected.probs, 5)
        stamp = harness.now_ns()
        msg = image_msg(photo, "rgb8", stamp_ns=stamp)

        def arrived(stamp: int = stamp) -> Any:
            for p in list(predictions):
                if int(p.header.stamp.sec) * 1_000_000_000 + int(p.header.stamp.nanosec) == stamp:
                    return p
            return None

        pred = None
        deadline = time.monotonic() + 30.0
        while pred is None and time.monotonic() < deadline:  # best effort: re-send a lost sample
            pub.publish(msg)
            try:
                pred = waiter(arrived, 2.0, "prediction")
            except AssertionError:
                continue
        assert pred is not None, f"no prediction at level {level}"
        assert pred.level == level
        assert list(pred.top_ids) == [i for i, _ in top], (backend, level)
        np.testing.assert_allclose(pred.top_scores, [p for _, p in top], rtol=1e-4, atol=1e-6)

    assert node.errors == 0
