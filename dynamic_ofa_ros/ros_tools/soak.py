r"""Soak test of the installed node under hostile-but-realistic input (``make soak``, not in CI).

A camera streams real photos at ``--fps`` into the installed ``classifier_node`` (its own
process, real Fast DDS) while this tool, phase after phase:

* **baseline** -- nothing else;
* **flood** -- ``--flood-peers`` fake coordination peers (valid-looking ``ManagerStatus`` with
  distinct names, all claiming a budget violation) re-sent every second for ``--flood-s``;
* **after** -- the flood has stopped;
* **bombs** -- compressed payloads that must be refused before decoding: a TIFF sent as
  ``jpeg``, a PNG whose header claims 20000x20000, a JPEG labelled ``png``;
* **burst** -- ``--burst`` concurrent ``~/get_levels`` calls.

Throughout it measures the classification rate per second, sequential ``~/get_levels`` round
trips, ``/diagnostics`` messages per second and the node's RSS (``/proc/<pid>/status``)::

    scripts/ros-env python -m dynamic_ofa_ros.ros_tools.soak --out docs/results/soak-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dynamic_ofa_ros.paths import default_level_table
from dynamic_ofa_ros.ros_tools.common import (
    CAMERA_TOPIC,
    ClassifierProcess,
    ToolNode,
    image_msg,
)
from dynamic_ofa_ros.ros_tools.photos import load_photos
from dynamic_ofa_ros.timing import device_name, summarize, write_json

if TYPE_CHECKING:
    from dynamic_ofa_ros.msg import ManagerStatus

__all__ = ["fake_peer_statuses", "main", "png_bomb", "run", "tiff_payload"]

NODE_NAME = "dofa_soak_classifier"
GROUP = "soak"
COORDINATION_TOPIC = "/dynamic_ofa/coordination"


# ------------------------------------------------------------------------------ hostile input


def fake_peer_statuses(
    count: int, group: str, *, stamp_ns: int, prefix: str = "/fake_peer_"
) -> list[ManagerStatus]:
    """``count`` valid-looking statuses of distinct fake peers, each claiming a violated budget.

    Each could come from a real classifier: a 3-level table, level 3, window mean 50 ms against a
    10 ms budget. Without a bound on peers and a bounded planner, such a flood froze the node
    (issue 15).
    """
    from dynamic_ofa_ros.msg import ManagerStatus

    statuses = []
    for i in range(count):
        msg = ManagerStatus()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        msg.node_name = f"{prefix}{i}"
        msg.coordination_group = group
        msg.level, msg.n_levels, msg.previous_level = 3, 3, 0
        msg.mode, msg.priority = "reactive", "latency"
        msg.budget_ms, msg.window_mean_ms, msg.window_p95_ms = 10.0, 50.0, 55.0
        msg.expected_accuracy = 80.0
        msg.level_latency_ms = [5.0, 10.0, 20.0]
        msg.level_accuracy = [60.0, 70.0, 80.0]
        statuses.append(msg)
    return statuses


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels (a decompression bomb)."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    rows = zlib.compress(b"\0" * (width * 3 + 1) * 16, 9)  # 16 rows of data is plenty to refuse it
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def tiff_payload(size: int = 64) -> bytes:
    """A real (small) TIFF image: content that is neither JPEG nor PNG."""
    import cv2

    ok, buf = cv2.imencode(".tiff", np.zeros((size, size, 3), np.uint8))
    if not ok:
        raise RuntimeError("OpenCV cannot encode TIFF here")
    return bytes(buf)


# ------------------------------------------------------------------------------ measurement


class _Counters:
    """Per-second counts of predictions and diagnostics, and the node's RSS (thread-safe)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.lock = threading.Lock()
        self.predictions: list[float] = []
        self.diagnostics: list[float] = []
        self.rss: list[tuple[float, float]] = []

    def prediction(self, _msg: object) -> None:
        with self.lock:
            self.predictions.append(time.monotonic())

    def diagnostic(self, msg: Any) -> None:  # noqa: ANN401 - generated message type
        if any(status.name.startswith(f"/{NODE_NAME}") for status in msg.status):
            with self.lock:
                self.diagnostics.append(time.monotonic())

    def sample_rss(self) -> None:
        with self.lock:
            if self.rss and time.monotonic() - self.rss[-1][0] < 1.0:
                return  # one sample a second
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                with self.lock:
                    self.rss.append((time.monotonic(), int(line.split()[1]) / 1024.0))

    def rate(self, times: list[float], start: float, end: float) -> float:
        with self.lock:
            n = sum(1 for t in times if start <= t < end)
        return n / max(end - start, 1e-9)


def _phase(
    name: str,
    seconds: float,
    counters: _Counters,
    client: Any,  # noqa: ANN401 - an rclpy client of a generated service type
    action: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Run ``action(elapsed)`` every 0.1 s for ``seconds`` while timing sequential service calls."""
    from dynamic_ofa_ros.srv import GetLevels

    start = time.monotonic()
    calls: list[float] = []
    unanswered = 0
    next_call = start
    while (now := time.monotonic()) - start < seconds:
        if action is not None:
            action(now - start)
        counters.sample_rss()
        if now >= next_call:
            t0 = time.perf_counter()
            done = threading.Event()
            future = client.call_async(GetLevels.Request())
            future.add_done_callback(lambda _f, event=done: event.set())
            if done.wait(5.0):
                calls.append((time.perf_counter() - t0) * 1000.0)
            else:
                unanswered += 1
            next_call = now + 0.5
        time.sleep(0.1)
    end = time.monotonic()
    return {
        "phase": name,
        "seconds": round(end - start, 2),
        "classification_hz": round(counters.rate(counters.predictions, start, end), 2),
        "diagnostics_hz": round(counters.rate(counters.diagnostics, start, end), 2),
        "get_levels_ms": summarize(calls) if calls else None,
        "get_levels_unanswered": unanswered,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The soak scenario; returns the JSON-ready result."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from sensor_msgs.msg import CompressedImage, Image

    from dynamic_ofa_ros.msg import ManagerStatus, Prediction
    from dynamic_ofa_ros.srv import GetLevels

    photos, photos_from = load_photos(None)
    table = str(args.table or default_level_table("cpu"))
    params = {
        "model": args.model,
        "level_table": table,
        "device": "cpu",
        "threads": 1,
        "coordination_group": GROUP,
        "latency_budget_ms": args.budget_ms,
    }
    log = Path(tempfile.mkdtemp(prefix="dofa-soak-")) / "node.log"
    node = ClassifierProcess.start(NODE_NAME, params, log)
    context = Context()
    rclpy.init(context=context)
    tool = ToolNode("dofa_soak", context)
    counters = _Counters(node.pid)
    stop = threading.Event()
    try:
        tool.node.create_subscription(Prediction, f"/{NODE_NAME}/prediction", counters.prediction, 100)
        tool.node.create_subscription(DiagnosticArray, "/diagnostics", counters.diagnostic, 100)
        camera = tool.node.create_publisher(Image, CAMERA_TOPIC, 1)
        compressed = tool.node.create_publisher(CompressedImage, f"{CAMERA_TOPIC}/compressed", 10)
        peers = tool.node.create_publisher(ManagerStatus, COORDINATION_TOPIC, 1000)
        tool.call(GetLevels, f"/{NODE_NAME}/get_levels", GetLevels.Request(), timeout=120.0)
        client = tool.node.create_client(GetLevels, f"/{NODE_NAME}/get_levels")
        client.wait_for_service(timeout_sec=30.0)
        frames = [image_msg(p) for p in photos]

        def stream() -> None:
            i = 0
            while not stop.is_set():
                msg = frames[i % len(frames)]
                msg.header.stamp = tool.node.get_clock().now().to_msg()
                camera.publish(msg)
                i += 1
                time.sleep(1.0 / args.fps)

        threading.Thread(target=stream, daemon=True).start()
        time.sleep(3.0)
        phases = [_phase("baseline", args.phase_s, counters, client)]
        sent = {"last": -10.0}

        def flood(elapsed: float) -> None:
            if elapsed - sent["last"] >= 1.0:
                sent["last"] = elapsed
                for msg in fake_peer_statuses(args.flood_peers, GROUP, stamp_ns=time.time_ns()):
                    peers.publish(msg)

        phases.append(_phase("flood", args.flood_s, counters, client, flood))
        phases.append(_phase("after", args.phase_s, counters, client))
        bombs = [("jpeg", tiff_payload()), ("png", png_bomb()), ("png", _jpeg(photos[0]))]

        def throw(_elapsed: float) -> None:
            fmt, data = bombs[int(_elapsed * 10) % len(bombs)]
            compressed.publish(CompressedImage(format=fmt, data=data))

        phases.append(_phase("bombs", args.phase_s, counters, client, throw))
        burst = _burst(tool, args.burst)
        node.check_running()
    finally:
        stop.set()
        tool.close()
        rclpy.shutdown(context=context)
        code = node.stop()
    with counters.lock:
        rss = [(round(t - counters.rss[0][0], 2), round(mb, 1)) for t, mb in counters.rss]
    return {
        "tool": "dynamic_ofa_ros.ros_tools.soak",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_name("cpu"),
        "python": platform.python_version(),
        "machine_load_1min": os.getloadavg()[0],
        "model": args.model,
        "table": table,
        "photos": photos_from,
        "fps": args.fps,
        "flood_peers": args.flood_peers,
        "phases": phases,
        "burst": burst,
        "node_exit_code": code,
        "rss_mb": rss,
    }


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    return bytes(cv2.imencode(".jpg", rgb[:, :, ::-1])[1])


def _burst(tool: ToolNode, calls: int) -> dict[str, Any]:
    """``calls`` concurrent get_levels calls from 10 clients; how many were answered."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from dynamic_ofa_ros.srv import GetLevels

    deep = QoSProfile(depth=max(calls, 10), reliability=ReliabilityPolicy.RELIABLE)
    clients = [
        tool.node.create_client(GetLevels, f"/{NODE_NAME}/get_levels", qos_profile=deep) for _ in range(10)
    ]
    for client in clients:
        client.wait_for_service(timeout_sec=20.0)
    done = threading.Semaphore(0)
    start = time.perf_counter()
    futures = []
    for i in range(calls):
        future = clients[i % len(clients)].call_async(GetLevels.Request())
        future.add_done_callback(lambda _f: done.release())
        futures.append(future)
    answered = 0
    deadline = time.monotonic() + 60.0
    while answered < calls and done.acquire(timeout=max(0.0, deadline - time.monotonic())):
        answered += 1
    return {"calls": calls, "answered": answered, "seconds": round(time.perf_counter() - start, 3)}


def build_parser() -> argparse.ArgumentParser:
    """The command line of the soak tool."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--table", default=None, help="level table (default: config/levels/cpu.json)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--flood-s", type=float, default=20.0)
    parser.add_argument("--flood-peers", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak scenario and print (and write) its JSON."""
    args = build_parser().parse_args(argv)
    result = run(args)
    if args.out is not None:
        write_json(args.out, result, one_line_numbers=True)
    print(json.dumps({key: result[key] for key in ("device", "phases", "burst", "node_exit_code")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
