"""``dynamic_ofa_ros.ros_tools.node_bench``: what the running node adds to the engine, measured end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_node_bench_reports_overhead_against_engine(tmp_path: Path) -> None:
    from dynamic_ofa_ros.ros_tools import node_bench

    table = REPO / "config" / "levels" / "cpu.json"
    if not table.is_file():
        pytest.skip("config/levels/cpu.json is not shipped in this checkout")
    out = tmp_path / "node-bench.json"
    argv = ["--table", str(table), "--levels", "1", "--sizes", "96x64", "--frames", "5", "--warmup", "1"]
    assert node_bench.main([*argv, "--out", str(out)]) == 0  # lock step: no frame lost
    result = json.loads(out.read_text())
    assert result["device"] and result["threads"] >= 1 and "Fast DDS" in result["transport"]
    (run,) = result["runs"]
    assert (run["size"], run["level"], run["levels_seen"]) == ("96x64", 1, [1])
    assert run["answered"] == run["frames"] == 5 and run["lost"] == 0
    stats = (
        "engine_infer_ms",
        "node_inference_ms",
        "node_latency_ms",
        "node_overhead_ms",
        "roundtrip_ms",
        "node_added_ms",
        "relay_roundtrip_ms",
    )
    for key in stats:
        assert set(run[key]) == {"p50", "p95", "p99", "mean"}
        assert run[key]["p50"] <= run[key]["p95"] <= run[key]["p99"]
    # the node's latency counts from the stamp set before publishing, so it contains its inference,
    # and the publisher sees the prediction only after the node produced it
    assert run["node_overhead_ms"]["p50"] > 0.0
    assert run["node_latency_ms"]["p50"] > run["node_inference_ms"]["p50"] > 0.0
    assert run["roundtrip_ms"]["p50"] >= run["node_latency_ms"]["p50"] - 0.5
    # the plain relay (same frames, same transport, no work) is the floor of any node
    assert 0.0 < run["relay_roundtrip_ms"]["p50"] < run["roundtrip_ms"]["p50"]
    added = run["node_added_ms"]["p50"] - run["relay_roundtrip_ms"]["p50"]
    assert run["added_over_relay_ms_p50"] == pytest.approx(added, abs=1e-3)
    ratio = run["node_latency_ms"]["p50"] / run["engine_infer_ms"]["p50"]
    assert run["node_latency_over_engine_p50"] == pytest.approx(ratio, rel=1e-2)
    # where the time goes: every answered frame traced by the node and the relays, per stage
    node = run["breakdown_ms"]["node"]
    parts = ("transport_in", "callback", "handover", "conversion", "classify_overhead", "message", "out")
    assert node["frames"] == 5 and set(node) == {"frames", *parts}
    for part in parts:
        assert set(node[part]) == {"p50", "p95", "p99", "mean"}
    for part in ("callback", "handover", "conversion", "message"):  # on the node's own clock
        assert node[part]["p50"] >= 0.0
    for relay in ("relay", "relay_events"):
        assert set(run["breakdown_ms"][relay]) == {"frames", "transport_in", "out"}
        assert run["breakdown_ms"][relay]["frames"] == 5
    # the same floor on the executor the node runs
    assert 0.0 < run["relay_events_roundtrip_ms"]["p50"] < run["roundtrip_ms"]["p50"]
    added_events = run["node_added_ms"]["p50"] - run["relay_events_roundtrip_ms"]["p50"]
    assert run["added_over_relay_events_ms_p50"] == pytest.approx(added_events, abs=1e-3)
    assert run["process_cpu_ms_per_frame"] is None or run["process_cpu_ms_per_frame"] > 0.0
    assert {"cpu", "load_average_start", "load_average_end", "backend", "node_executor"} <= set(result)
