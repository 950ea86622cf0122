r"""What the ROS node adds to inference: end-to-end latency of the running classifier vs the engine.

The engine's latency (``dofa-bench``) is not what a robot sees: a camera frame also crosses
DDS into the node, is converted, waits for the inference thread, and its prediction is
published. This benchmark measures that path on the installed ``classifier_node`` (its own
process, real Fast DDS transport) with the level locked by ``~/set_level``, one frame at a
time (lock step: the next frame is published when the previous prediction has arrived, so
nothing queues), for each frame size and level. The baseline, measured in the same run on
the same frames while the node is idle, is :meth:`LevelEngine.infer` in this process::

    scripts/ros-env python -m dynamic_ofa_ros.ros_tools.node_bench --device cpu \
        --out docs/results/node-bench-cpu.json

Per frame size and level it reports (p50/p95/p99, milliseconds): ``node_latency_ms`` (the
Prediction's ``latency_ms``: header stamp, set just before publishing, to prediction ready),
``node_inference_ms`` (its ``inference_ms``), ``node_overhead_ms`` (the difference per
frame: transport in, conversion, hand-over to the inference thread), ``roundtrip_ms`` (publish
to the prediction's arrival back at the publisher) and ``engine_infer_ms`` (the baseline);
and the node process's CPU time per frame, in all and in its main (executor) thread.

The floor, measured in the same run over the same transport: a plain rclpy relay node
(:mod:`dynamic_ofa_ros.ros_tools.relay`: subscribe the Image, publish a Prediction with its
header, nothing else) gets the same frames in lock step on its own topic. Per frame size
``relay_roundtrip_ms`` is its round trip, ``node_added_ms`` the classifier's round trip minus
its own inference time, and ``added_over_relay_ms_p50`` the difference of their medians: what the
classifier costs beyond what any ROS node costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from dynamic_ofa_ros.paths import default_level_table
from dynamic_ofa_ros.ros_tools.common import CAMERA_TOPIC, ClassifierProcess, image_msg, write_result
from dynamic_ofa_ros.ros_tools.lockstep import Answer, LockStepPlayer
from dynamic_ofa_ros.ros_tools.photos import load_photos
from dynamic_ofa_ros.timing import device_name, summarize

if TYPE_CHECKING:
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.engine import LevelEngine
    from dynamic_ofa_ros.levels import LevelTable

__all__ = ["NODE_NAME", "main", "run"]

NODE_NAME = "dofa_node_bench_classifier"
RELAY_NAME = "dofa_node_bench_relay"
RELAY_TOPIC = "/dofa_node_bench/relay_image"
_MAX_LOST = 3  # a case with this many lost frames is a transport problem, not a measurement


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame size {text!r}: give WIDTHxHEIGHT, e.g. 640x480") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"frame size {text!r} must be positive")
    return w, h


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="node_bench", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="the node's device parameter (cpu | cuda)")
    p.add_argument("--model", default="embedded", help="the node's model parameter")
    p.add_argument("--table", default="", help="level table (default: config/levels/<device>.json)")
    p.add_argument("--levels", type=int, nargs="*", default=None, help="levels (default: first and last)")
    p.add_argument("--sizes", type=_size, nargs="+", default=[(224, 224), (640, 480)], help="frame sizes WxH")
    p.add_argument("--frames", type=int, default=200, help="measured frames per size and level")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured frames first")
    p.add_argument("--data", default=None, help="ImageFolder of photos (default: scikit-image's)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for one prediction")
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = p.parse_args(argv)
    if args.frames < 1 or args.warmup < 0:
        p.error("--frames must be >= 1 and --warmup >= 0")
    return args


def _stats(values: Sequence[float]) -> dict[str, float]:
    s = summarize(values)
    return {key: round(s[key], 4) for key in ("p50", "p95", "p99", "mean")}


def _engine_baseline(
    engine: LevelEngine, frames: list[np.ndarray], level: int, n: int, warmup: int
) -> list[float]:
    """``LevelEngine.infer`` times (ms) of ``n`` frames at ``level`` in this process, after ``warmup``."""
    engine.switch(level)
    times = []
    for i in range(warmup + n):
        result = engine.infer(frames[i % len(frames)])
        if i >= warmup:
            times.append(result.inference_ms)
    return times


def _thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) per thread of process ``pid`` (Linux /proc; empty elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _cpu_per_frame(pid: int, before: dict[int, float], frames: int) -> dict[str, float | None]:
    """CPU ms per frame of the node process: all threads, and its main (executor) thread alone."""
    after = _thread_cpu_s(pid)
    if not after or frames <= 0:
        return {"process_cpu_ms_per_frame": None, "executor_thread_cpu_ms_per_frame": None}
    total = sum(after.values()) - sum(before.get(tid, 0.0) for tid in after)
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    return {
        "process_cpu_ms_per_frame": round(1000.0 * total / frames, 3),
        "executor_thread_cpu_ms_per_frame": round(1000.0 * main / frames, 3),
    }


def _node_run(
    player: LockStepPlayer, messages: list[Image], n: int, warmup: int, timeout: float, pid: int
) -> dict[str, Any]:
    """``n`` frames (after ``warmup``) through the node in lock step; their statistics."""
    rows: list[Answer] = []
    lost = 0
    cpu_before: dict[int, float] = {}
    for i in range(warmup + n):
        if i == warmup:
            cpu_before = _thread_cpu_s(pid)
        msg = messages[i % len(messages)]
        stamp = time.time_ns()  # the ROS clock is system time: latency_ms counts from here
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        got = player.classify(msg, stamp, timeout)
        if got is None:
            lost += 1
            if lost >= _MAX_LOST:
                raise RuntimeError(
                    f"{lost} of {msg.width}x{msg.height} frames got no prediction within {timeout:g} s; "
                    "frames over 512 KiB need FASTDDS_DEFAULT_PROFILES_FILE=config/fastdds_large_frames.xml "
                    "(scripts/ros-env sets it) in this process"
                )
        elif i >= warmup:
            rows.append(got)
    return {
        "frames": n,
        "answered": len(rows),
        "lost": lost,
        "node_latency_ms": _stats([r.latency_ms for r in rows]),
        "node_inference_ms": _stats([r.inference_ms for r in rows]),
        "node_overhead_ms": _stats([r.latency_ms - r.inference_ms for r in rows]),
        "roundtrip_ms": _stats([r.roundtrip_ms for r in rows]),
        "node_added_ms": _stats([r.roundtrip_ms - r.inference_ms for r in rows]),
        "levels_seen": sorted({r.level for r in rows}),
        **_cpu_per_frame(pid, cpu_before, n),
    }


def _relay_floor(
    relay: LockStepPlayer, messages: list[Image], n: int, warmup: int, timeout: float
) -> dict[str, float]:
    """Round trips (ms) of ``n`` frames through the plain relay node, in lock step."""
    times = []
    for i in range(warmup + n):
        msg = messages[i % len(messages)]
        stamp = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        got = relay.classify(msg, stamp, timeout)
        if got is not None and i >= warmup:
            times.append(got.roundtrip_ms)
    if not times:
        raise RuntimeError("the relay node answered no frame; is rclpy's transport working?")
    return _stats(times)


def _measure_case(
    args: argparse.Namespace,
    engine: LevelEngine,
    table: LevelTable,
    player: LockStepPlayer,
    classifier: ClassifierProcess,
    frames: list[np.ndarray],
    level: int,
    relay: LockStepPlayer,
) -> dict[str, Any]:
    """One (frame size, level): the engine baseline, then the same frames through the node."""
    baseline = _stats(_engine_baseline(engine, frames, level, args.frames, args.warmup))
    player.set_level(level)
    messages = [image_msg(f) for f in frames]
    row = _node_run(player, messages, args.frames, args.warmup, args.timeout, classifier.pid)
    floor = _relay_floor(relay, messages, args.frames, args.warmup, args.timeout)
    height, width = frames[0].shape[:2]
    return {
        "size": f"{width}x{height}",
        "level": level,
        "table_latency_ms": table.levels[level - 1].latency_ms,
        "engine_infer_ms": baseline,
        **row,
        "node_latency_over_engine_p50": round(row["node_latency_ms"]["p50"] / baseline["p50"], 3),
        "relay_roundtrip_ms": floor,
        "added_over_relay_ms_p50": round(row["node_added_ms"]["p50"] - floor["p50"], 4),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every (frame size, level); return the result document."""
    import cv2
    import rclpy
    import torch

    from dynamic_ofa_ros.engine import LevelEngine
    from dynamic_ofa_ros.levels import load_level_table
    from dynamic_ofa_ros.supernet import load_supernet

    table_path = Path(args.table) if args.table else default_level_table(args.device)
    supernet = load_supernet(args.model, device=args.device)
    table = load_level_table(table_path, supernet=supernet, expected_device=args.device)
    levels = args.levels or sorted({1, len(table.levels)})
    pics, where = load_photos(args.data, limit=8, size=(640, 480))
    engine = LevelEngine(supernet, table, device=args.device)
    result: dict[str, Any] = {
        "tool": "dynamic_ofa_ros.ros_tools.node_bench",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_name(args.device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": engine.threads,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "model": args.model,
        "table": str(table_path),
        "photos": where,
        "transport": "rclpy + Fast DDS (rmw_fastrtps_cpp), classifier_node in its own process",
        "method": "lock step (next frame after the previous prediction); level locked by ~/set_level",
        "frames": args.frames,
        "warmup": args.warmup,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="dofa-node-bench-") as tmp:
        params = {"model": args.model, "device": args.device, "level_table": str(table_path), "threads": 0}
        classifier = ClassifierProcess.start(NODE_NAME, params, Path(tmp) / "classifier.log")
        relay_process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dynamic_ofa_ros.ros_tools.relay",
                "--name",
                RELAY_NAME,
                "--topic",
                RELAY_TOPIC,
            ]
        )
        with rclpy.init(args=[]) as context_guard:  # noqa: F841 - keeps the context for the block
            context = rclpy.get_default_context()
            player = LockStepPlayer(context, classifier=NODE_NAME, topic=CAMERA_TOPIC)
            relay = LockStepPlayer(
                context, classifier=RELAY_NAME, topic=RELAY_TOPIC, node_name="dofa_relay_player"
            )
            try:
                cases = [(size, level) for size in args.sizes for level in levels]
                for size, level in tqdm(cases, desc="node bench", unit="case", file=sys.stderr):
                    frames = [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in pics]
                    row = _measure_case(args, engine, table, player, classifier, frames, level, relay)
                    result["runs"].append(row)
                    print(
                        json.dumps({k: row[k] for k in ("size", "level", "node_latency_over_engine_p50")}),
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                player.close()
                relay.close()
                relay_process.send_signal(signal.SIGINT)
                relay_process.wait(timeout=15)
                code = classifier.stop()
                if code not in (0, None):
                    print(f"classifier_node exited with {code}", file=sys.stderr)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: writes ``--out`` (and prints the JSON); non-zero if frames were lost."""
    args = _parse(argv)
    result = run(args)
    print(write_result(result, args.out))
    return 1 if any(row["lost"] for row in result["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
