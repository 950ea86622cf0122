#!/usr/bin/env python3
"""The classifier node's footprint in each lifecycle state: RSS and CPU of its process.

Starts the installed ``classifier_node`` (embedded model, this machine's level table,
``autostart``), feeds it a 30 fps camera (320x240 rgb8 photos from ``skimage.data``) for the
whole run, and measures the node process for ``--seconds`` in each state, driving it through
its ``~/change_state`` service exactly as ``ros2 lifecycle set`` does: *active* (classifying),
*inactive* (after ``deactivate``), *unconfigured* (after ``cleanup``), *active* again (after
``configure`` + ``activate``, both timed); finally ``shutdown``, after which the process must exit
with 0. For reference, a node started with ``autostart:=false`` (never configured: the
process with its imports, no model) is measured first. CPU = (user + system time of the
process) / wall time, from ``/proc/<pid>/stat``; RSS from ``/proc/<pid>/status`` sampled every
0.5 s.

    scripts/ros-env python scripts/lifecycle_footprint.py --out docs/results/lifecycle-footprint-cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from dynamic_ofa_ros.ros_tools.startup_footprint import Camera, proc_status

NODE = "footprint_classifier"
TOPIC = "/footprint/camera"


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(pid: int, seconds: float, predictions: list[float]) -> dict[str, Any]:
    """CPU share, RSS and threads of ``pid`` over ``seconds``; predictions received meanwhile."""
    rss, threads = [], []
    count0, cpu0, t0 = len(predictions), _proc_cpu_s(pid), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        status = proc_status(pid, "VmRSS", "Threads")
        rss.append(status["VmRSS"] / 1024.0)
        threads.append(status["Threads"])
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    cpu = _proc_cpu_s(pid) - cpu0
    return {
        "seconds": round(wall, 1),
        "cpu_percent": round(100.0 * cpu / wall, 2),  # 100 = one core busy
        "rss_mb_mean": round(statistics.fmean(rss), 1),
        "rss_mb_max": round(max(rss), 1),
        "threads": max(threads),
        "predictions_per_s": round((len(predictions) - count0) / wall, 2),
    }


def _transition(tool: Any, label: str) -> float:  # noqa: ANN401 - a ToolNode
    """Trigger ``label`` through ``~/change_state``; returns its duration (s); raises if refused."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    started = time.perf_counter()
    request = ChangeState.Request(transition=Transition(label=label))
    response = tool.call(ChangeState, f"/{NODE}/change_state", request, timeout=300.0)
    if not response.success:
        raise RuntimeError(f"transition {label} refused")
    return round(time.perf_counter() - started, 2)


def _wait_for(node: Any, text: str, timeout: float = 300.0) -> None:  # noqa: ANN401 - a ClassifierProcess
    deadline = time.monotonic() + timeout
    while text not in node.log_path.read_text(errors="replace"):
        node.check_running()
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout:g} s:\n{node.tail()}")
        time.sleep(0.5)


def _never_configured(params: dict[str, Any], seconds: float, log: Path, predictions: list[float]) -> Any:  # noqa: ANN401
    """The process with ``autostart:=false``: its imports, no model."""
    from dynamic_ofa_ros.ros_tools.common import ClassifierProcess

    idle = ClassifierProcess.start(NODE, {**params, "autostart": False}, log, topic=TOPIC)
    try:
        _wait_for(idle, "autostart is false")
        time.sleep(2.0)
        return _measure(idle.pid, seconds, predictions)
    finally:
        idle.stop()


def _cycle(
    tool: Any,  # noqa: ANN401 - a ToolNode
    params: dict[str, Any],
    seconds: float,
    log: Path,
    predictions: list[float],
) -> dict[str, Any]:
    """Start with autostart, measure active, inactive, unconfigured, active again; shut down."""
    from dynamic_ofa_ros.ros_tools.common import ClassifierProcess

    node = ClassifierProcess.start(NODE, params, log, topic=TOPIC)
    try:
        started = time.perf_counter()
        _wait_for(node, "ready:")
        result: dict[str, Any] = {"start_to_ready_s": round(time.perf_counter() - started, 1)}
        time.sleep(5.0)  # warm-up: the manager settles, caches fill
        phases = {"active": _measure(node.pid, seconds, predictions)}
        transitions = {"deactivate": _transition(tool, "deactivate")}
        time.sleep(2.0)
        phases["inactive"] = _measure(node.pid, seconds, predictions)
        transitions["cleanup"] = _transition(tool, "cleanup")
        time.sleep(2.0)
        phases["unconfigured"] = _measure(node.pid, seconds, predictions)
        transitions["configure"] = _transition(tool, "configure")
        transitions["activate"] = _transition(tool, "activate")
        time.sleep(5.0)
        phases["active_again"] = _measure(node.pid, seconds, predictions)
        transitions["shutdown"] = _transition(tool, "shutdown")
        result["exit_code_after_shutdown"] = node.process.wait(timeout=30.0)
        return {**result, "transition_s": transitions, "phases": phases}
    finally:
        node.stop()


def run(seconds: float, fps: float, log: Path) -> dict[str, Any]:
    """Start the camera, measure the never-configured node and a whole cycle; the result as a dict."""
    import rclpy
    from rclpy.context import Context

    from dynamic_ofa_ros.paths import default_level_table
    from dynamic_ofa_ros.ros_tools.common import ToolNode
    from dynamic_ofa_ros.timing import cpu_name

    context = Context()
    rclpy.init(context=context)
    tool = ToolNode("footprint_tool", context)
    camera = None
    try:
        params = {"device": "cpu", "model": "embedded", "status_rate": 2.0}
        camera = Camera(tool, fps, topic=TOPIC, prediction_topic=f"/{NODE}/prediction")
        predictions = camera.arrivals  # arrival times: only their count is used
        load_before = os.getloadavg()[0]
        idle = _never_configured(params, seconds, log, predictions)
        cycle = _cycle(tool, params, seconds, log, predictions)
        load_after = os.getloadavg()[0]
    finally:
        if camera is not None:
            camera.stop()
        tool.close()
        rclpy.shutdown(context=context)
    return {
        "what": "RSS and CPU of the classifier_node process in each lifecycle state, a camera publishing",
        "cpu": cpu_name(),
        "model": "embedded",
        "device": "cpu",
        "level_table": str(default_level_table("cpu")),
        "camera": f"320x240 rgb8 at {fps:g} fps, best effort ({camera.source})",
        "cpu_percent": "process user+system time / wall time; 100 = one core",
        # other processes share the machine: the active phases' frame rate depends on it
        "host_load_average_1min": [round(load_before, 2), round(load_after, 2)],
        **cycle,
        "phases": {"never_configured": idle, **cycle["phases"]},
        "command": "scripts/ros-env python scripts/lifecycle_footprint.py",
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print (and with ``--out`` write) the footprint JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement per state (s)")
    parser.add_argument("--fps", type=float, default=30.0, help="camera rate")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument("--log", type=Path, default=Path("/tmp/lifecycle_footprint_node.log"))
    args = parser.parse_args(argv)
    from dynamic_ofa_ros.ros_tools.common import write_result

    print(write_result(run(args.seconds, args.fps, args.log), args.out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
