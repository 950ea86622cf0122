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
header, nothing else) gets the same frames in lock step on its own topic, alternating frame by
frame with the classifier (so both see the same machine). Per frame size and level
``relay_roundtrip_ms`` is its round trip, ``node_added_ms`` the classifier's round trip minus
its own inference time, and ``added_over_relay_ms_p50`` the difference of their medians: what the
classifier costs beyond what any ROS node costs.

Where that time goes: both processes run with ``DOFA_NODE_TRACE`` (the node's
:class:`~dynamic_ofa_ros.node_frames.StageTrace`, the relay's own), which records the wall clock
(the publisher's clock, ``time.time_ns``) at each stage of every frame. ``breakdown_ms`` gives
per stage (p50/p95/p99/mean, ms): for the node ``transport_in`` (stamp -> subscription callback:
serialisation, DDS, executor wake-up, the message taken into Python), ``callback`` (the callback
up to the hand-over), ``handover`` (-> the inference thread has the frame), ``conversion``
(message -> RGB array), ``classify_overhead`` (classify minus the engine's ``inference_ms``:
clock, top-k, manager), ``message`` (building the Prediction), ``publish`` and ``transport_out``
(-> the prediction's arrival at the publisher); for the relay ``transport_in``, ``callback``
(build + publish) and ``transport_out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from dynamic_ofa_ros.node_frames import TRACE_ENV
from dynamic_ofa_ros.paths import default_level_table
from dynamic_ofa_ros.ros_tools.common import CAMERA_TOPIC, ClassifierProcess, image_msg, write_result
from dynamic_ofa_ros.ros_tools.lockstep import Answer, LockStepPlayer
from dynamic_ofa_ros.ros_tools.photos import load_photos
from dynamic_ofa_ros.timing import cpu_name, device_name, summarize

if TYPE_CHECKING:
    from sensor_msgs.msg import Image

    from dynamic_ofa_ros.engine import LevelEngine

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


@dataclass(frozen=True)
class _Usage:
    """A process's CPU seconds per thread and its minor page faults so far (Linux /proc)."""

    cpu_s: dict[int, float]
    page_faults: int

    @classmethod
    def of(cls, pid: int) -> _Usage:
        """Read ``/proc/<pid>``; empty (no threads, 0 faults) where it cannot be read."""
        tick = os.sysconf("SC_CLK_TCK")
        cpu: dict[int, float] = {}
        try:
            tids = os.listdir(f"/proc/{pid}/task")
            with open(f"/proc/{pid}/stat") as f:
                faults = int(f.read().rsplit(")", 1)[1].split()[7])  # minflt
        except OSError:
            return cls({}, 0)
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended
                continue
            cpu[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
        return cls(cpu, faults)

    def per_frame(self, pid: int, frames: int) -> tuple[float | None, float | None, float | None]:
        """Since this sample, per frame: CPU ms of all threads, CPU ms of the main thread, page faults."""
        after = _Usage.of(pid)
        if not after.cpu_s or frames <= 0:
            return None, None, None
        total = sum(after.cpu_s.values()) - sum(self.cpu_s.get(tid, 0.0) for tid in after.cpu_s)
        main = after.cpu_s.get(pid, 0.0) - self.cpu_s.get(pid, 0.0)
        faults = (after.page_faults - self.page_faults) / frames
        return round(1000.0 * total / frames, 3), round(1000.0 * main / frames, 3), round(faults, 1)


@dataclass
class _Sent:
    """The frames of one case as sent: header stamps (ns) and what came back."""

    node: list[tuple[int, Answer]] = field(default_factory=list)
    relay: list[tuple[int, Answer]] = field(default_factory=list)
    lost: int = 0


def _send(player: LockStepPlayer, msg: Image, timeout: float) -> tuple[int, Answer | None]:
    """Stamp ``msg`` now (the ROS clock is system time) and send it in lock step."""
    stamp = time.time_ns()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    return stamp, player.classify(msg, stamp, timeout)


def _lockstep(
    players: tuple[LockStepPlayer, LockStepPlayer],
    messages: list[Image],
    args: argparse.Namespace,
    pids: tuple[int, int],
) -> tuple[_Sent, dict[str, float | None]]:
    """``args.frames`` frames (after ``args.warmup``) alternately through the node and the relay."""
    player, relay = players
    sent = _Sent()
    usage = (_Usage({}, 0), _Usage({}, 0))
    for i in range(args.warmup + args.frames):
        if i == args.warmup:
            usage = (_Usage.of(pids[0]), _Usage.of(pids[1]))
        msg = messages[i % len(messages)]
        stamp, got = _send(player, msg, args.timeout)
        if got is None:
            sent.lost += 1
            if sent.lost >= _MAX_LOST:
                raise RuntimeError(
                    f"{sent.lost} of {msg.width}x{msg.height} frames got no prediction within "
                    f"{args.timeout:g} s; "
                    "frames over 512 KiB need FASTDDS_DEFAULT_PROFILES_FILE=config/fastdds_large_frames.xml "
                    "(scripts/ros-env sets it) in this process"
                )
        elif i >= args.warmup:
            sent.node.append((stamp, got))
        stamp, echoed = _send(relay, msg, args.timeout)
        if echoed is not None and i >= args.warmup:
            sent.relay.append((stamp, echoed))
    if not sent.relay:
        raise RuntimeError("the relay node answered no frame; is rclpy's transport working?")
    node_cpu, executor_cpu, node_faults = usage[0].per_frame(pids[0], args.frames)
    relay_cpu, _, relay_faults = usage[1].per_frame(pids[1], args.frames)
    return sent, {
        "process_cpu_ms_per_frame": node_cpu,
        "executor_thread_cpu_ms_per_frame": executor_cpu,
        "page_faults_per_frame": node_faults,
        "relay_process_cpu_ms_per_frame": relay_cpu,
        "relay_page_faults_per_frame": relay_faults,
    }


def _case_row(sent: _Sent, n: int) -> dict[str, Any]:
    """The statistics of one case's node and relay frames."""
    rows = [answer for _, answer in sent.node]
    floor = _stats([answer.roundtrip_ms for _, answer in sent.relay])
    added = _stats([r.roundtrip_ms - r.inference_ms for r in rows])
    return {
        "frames": n,
        "answered": len(rows),
        "lost": sent.lost,
        "node_latency_ms": _stats([r.latency_ms for r in rows]),
        "node_inference_ms": _stats([r.inference_ms for r in rows]),
        "node_overhead_ms": _stats([r.latency_ms - r.inference_ms for r in rows]),
        "roundtrip_ms": _stats([r.roundtrip_ms for r in rows]),
        "node_added_ms": added,
        "levels_seen": sorted({r.level for r in rows}),
        "relay_roundtrip_ms": floor,
        "added_over_relay_ms_p50": round(added["p50"] - floor["p50"], 4),
    }


def _read_trace(path: Path) -> tuple[list[str], dict[int, list[float]]]:
    """A ``DOFA_NODE_TRACE`` file: its stage names and its rows by header stamp (empty if absent)."""
    try:
        trace = json.loads(path.read_text())
    except (OSError, ValueError):
        return [], {}
    return list(trace["stages"]), {int(row[0]): row for row in trace["frames"]}


def _node_breakdown(sent: list[tuple[int, Answer]], stages: list[str], rows: dict[int, list[float]]) -> Any:  # noqa: ANN401 - JSON
    """Per stage of the node's frame path, ms (see the module docstring); None without a trace."""
    parts: dict[str, list[float]] = {name: [] for name in _NODE_PARTS}
    for stamp, answer in sent:
        row = rows.get(stamp)
        if row is None or stages != list(_NODE_STAGES):
            continue
        inference_ms = row[1]
        marks = dict(zip(stages, row[2:], strict=True))
        received = stamp + answer.roundtrip_ms * 1e6  # the publisher's clock: stamp + round trip
        points = [stamp, *(marks[name] for name in _NODE_STAGES), received]
        spans = [(b - a) / 1e6 for a, b in zip(points, points[1:], strict=False)]
        # the classified stage includes the engine's inference: count only what classify adds
        spans[_NODE_PARTS.index("classify_overhead")] -= inference_ms
        for name, value in zip(_NODE_PARTS, spans, strict=True):
            parts[name].append(value)
    if not parts["publish"]:
        return None
    return {"frames": len(parts["publish"]), **{name: _stats(values) for name, values in parts.items()}}


def _relay_breakdown(sent: list[tuple[int, Answer]], stages: list[str], rows: dict[int, list[float]]) -> Any:  # noqa: ANN401 - JSON
    """The relay's transport in, callback (build + publish) and transport out, ms; None without a trace."""
    parts: dict[str, list[float]] = {"transport_in": [], "callback": [], "transport_out": []}
    for stamp, answer in sent:
        row = rows.get(stamp)
        if row is None or stages != ["callback", "published"]:
            continue
        callback, published = row[2], row[3]
        parts["transport_in"].append((callback - stamp) / 1e6)
        parts["callback"].append((published - callback) / 1e6)
        parts["transport_out"].append((stamp + answer.roundtrip_ms * 1e6 - published) / 1e6)
    if not parts["callback"]:
        return None
    return {"frames": len(parts["callback"]), **{name: _stats(values) for name, values in parts.items()}}


#: the node's trace stages (StageTrace.STAGES) and the spans between them, stamp to arrival back
_NODE_STAGES = ("callback", "queued", "taken", "converted", "classified", "built", "published")
_NODE_PARTS = (
    "transport_in",
    "callback",
    "handover",
    "conversion",
    "classify_overhead",
    "message",
    "publish",
    "transport_out",
)


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` inside the block (inherited by the processes started in it)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def _load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every (frame size, level); return the result document."""
    import cv2
    import rclpy

    from dynamic_ofa_ros.engine import LevelEngine
    from dynamic_ofa_ros.levels import load_level_table
    from dynamic_ofa_ros.supernet import open_supernet

    table_path = Path(args.table) if args.table else default_level_table(args.device)
    supernet = open_supernet(args.model, device=args.device)
    table = load_level_table(table_path, supernet=supernet, expected_device=args.device)
    levels = args.levels or sorted({1, len(table.levels)})
    pics, where = load_photos(args.data, limit=8, size=(640, 480))
    engine = LevelEngine(supernet, table, device=args.device)
    execution = engine.execution[levels[0]]
    result: dict[str, Any] = {
        "tool": "dynamic_ofa_ros.ros_tools.node_bench",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_name(args.device),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "backend": execution.get("backend"),
        "backend_version": execution.get("backend_version"),
        "threads": engine.threads,
        "load_average_start": _load_average(),
        "model": args.model,
        "table": str(table_path),
        "photos": where,
        "transport": "rclpy + Fast DDS (rmw_fastrtps_cpp), classifier_node in its own process",
        "method": (
            "lock step (next frame after the previous prediction), classifier and relay frames "
            "alternating; level locked by ~/set_level"
        ),
        "frames": args.frames,
        "warmup": args.warmup,
        "runs": [],
    }
    cases = [(size, level) for size in args.sizes for level in levels]
    with tempfile.TemporaryDirectory(prefix="dofa-node-bench-") as tmp:
        traces = (Path(tmp) / "classifier-trace.json", Path(tmp) / "relay-trace.json")
        params = {"model": args.model, "device": args.device, "level_table": str(table_path), "threads": 0}
        with _environment(TRACE_ENV, str(traces[0])):
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
            ],
            env={**os.environ, TRACE_ENV: str(traces[1])},
        )
        sent: list[_Sent] = []
        with rclpy.init(args=[]) as context_guard:  # noqa: F841 - keeps the context for the block
            context = rclpy.get_default_context()
            player = LockStepPlayer(context, classifier=NODE_NAME, topic=CAMERA_TOPIC)
            relay = LockStepPlayer(
                context, classifier=RELAY_NAME, topic=RELAY_TOPIC, node_name="dofa_relay_player"
            )
            try:
                for size, level in tqdm(cases, desc="node bench", unit="case", file=sys.stderr):
                    frames = [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in pics]
                    baseline = _stats(_engine_baseline(engine, frames, level, args.frames, args.warmup))
                    player.set_level(level)
                    messages = [image_msg(f) for f in frames]
                    case, cpu = _lockstep(
                        (player, relay), messages, args, (classifier.pid, relay_process.pid)
                    )
                    sent.append(case)
                    row = {
                        "size": f"{size[0]}x{size[1]}",
                        "level": level,
                        "table_latency_ms": table.levels[level - 1].latency_ms,
                        "engine_infer_ms": baseline,
                        **_case_row(case, args.frames),
                        **cpu,
                    }
                    row["node_latency_over_engine_p50"] = round(
                        row["node_latency_ms"]["p50"] / baseline["p50"], 3
                    )
                    result["runs"].append(row)
                    summary = ("size", "level", "added_over_relay_ms_p50", "node_latency_over_engine_p50")
                    print(json.dumps({k: row[k] for k in summary}), file=sys.stderr, flush=True)
            finally:
                player.close()
                relay.close()
                relay_process.send_signal(signal.SIGINT)
                relay_process.wait(timeout=15)
                code = classifier.stop()
                if code not in (0, None):
                    print(f"classifier_node exited with {code}", file=sys.stderr)
        node_trace, relay_trace = _read_trace(traces[0]), _read_trace(traces[1])
    for row, case in zip(result["runs"], sent, strict=True):
        row["breakdown_ms"] = {
            "node": _node_breakdown(case.node, *node_trace),
            "relay": _relay_breakdown(case.relay, *relay_trace),
        }
    result["load_average_end"] = _load_average()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: writes ``--out`` (and prints the JSON); non-zero if frames were lost."""
    args = _parse(argv)
    result = run(args)
    print(write_result(result, args.out))
    return 1 if any(row["lost"] for row in result["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
