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
header, nothing else) gets every frame right after the classifier, in lock step on its own topic
(so both see the same machine). Per frame size and level ``relay_roundtrip_ms`` is its round
trip, ``node_added_ms`` the classifier's round trip minus its own inference time, and
``added_over_relay_ms_p50`` the difference of their medians: what the classifier costs beyond
what any ROS node costs. ``classifier_node`` spins rclpy's C++ ``EventsExecutor``
(:mod:`dynamic_ofa_ros.node_main`); a second relay on that executor gives
``relay_events_roundtrip_ms`` and ``added_over_relay_events_ms_p50``, the classifier's own work
alone. The node's executor can be switched with ``DOFA_NODE_EXECUTOR=single`` (recorded as
``node_executor``).

Where that time goes: the processes run with ``DOFA_NODE_TRACE`` (the node's
:class:`~dynamic_ofa_ros.node_frames.StageTrace`, the relays' own), which records the wall clock
(``time.time_ns``, the clock the publisher stamps with) at each stage of every frame.
``breakdown_ms`` gives per stage (p50/p95/p99/mean, ms): for the node ``transport_in`` (stamp ->
subscription callback: serialisation, DDS, executor wake-up, the message taken into Python),
``callback`` (the callback up to the hand-over), ``handover`` (-> the inference thread has the
frame), ``conversion`` (message -> RGB array), ``classify_overhead`` (classify minus the
engine's ``inference_ms``: clock, top-k, manager), ``message`` (building the Prediction) and
``out`` (publish and transport back to the publisher); for each relay ``transport_in`` and
``out`` (its callback, publish and transport back). Inference time that grows because another
thread of the node holds the GIL is inside ``inference_ms``, so compare ``roundtrip_ms`` too.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from dynamic_ofa_ros.node_frames import TRACE_ENV
from dynamic_ofa_ros.node_main import EXECUTOR_ENV
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


#: the floors: the relay on rclpy's SingleThreadedExecutor (a plain node) and on its EventsExecutor
#: (the executor classifier_node runs); (name, --executor, topic)
_RELAYS = (
    ("relay", "single", "/dofa_node_bench/relay_image"),
    ("relay_events", "events", "/dofa_node_bench/relay_events_image"),
)


@dataclass
class _Sent:
    """The frames of one case as sent, per receiver (node, then the relays): stamp (ns) and answer."""

    answers: list[list[tuple[int, Answer]]]
    lost: int = 0


def _send(player: LockStepPlayer, msg: Image, timeout: float) -> tuple[int, Answer | None]:
    """Stamp ``msg`` now (the ROS clock is system time) and send it in lock step."""
    stamp = time.time_ns()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    return stamp, player.classify(msg, stamp, timeout)


def _lockstep(
    players: list[LockStepPlayer], messages: list[Image], args: argparse.Namespace, pids: list[int]
) -> tuple[_Sent, dict[str, float | None]]:
    """``args.frames`` frames (after ``args.warmup``), each to the node and then to every relay."""
    sent = _Sent([[] for _ in players])
    usage = [_Usage({}, 0) for _ in pids]
    for i in range(args.warmup + args.frames):
        if i == args.warmup:
            usage = [_Usage.of(pid) for pid in pids]
        msg = messages[i % len(messages)]
        for k, player in enumerate(players):
            stamp, got = _send(player, msg, args.timeout)
            if got is not None and i >= args.warmup:
                sent.answers[k].append((stamp, got))
            elif got is None and k == 0:
                sent.lost += 1
                if sent.lost >= _MAX_LOST:
                    raise RuntimeError(
                        f"{sent.lost} of {msg.width}x{msg.height} frames got no prediction within "
                        f"{args.timeout:g} s; frames over 512 KiB need FASTDDS_DEFAULT_PROFILES_FILE="
                        "config/fastdds_large_frames.xml (scripts/ros-env sets it) in this process"
                    )
    if not all(sent.answers[1:]):
        raise RuntimeError("a relay node answered no frame; is rclpy's transport working?")
    node_cpu, executor_cpu, node_faults = usage[0].per_frame(pids[0], args.frames)
    cpu: dict[str, float | None] = {
        "process_cpu_ms_per_frame": node_cpu,
        "executor_thread_cpu_ms_per_frame": executor_cpu,
        "page_faults_per_frame": node_faults,
    }
    for (name, _, _), pid, before in zip(_RELAYS, pids[1:], usage[1:], strict=True):
        relay_cpu, _, relay_faults = before.per_frame(pid, args.frames)
        cpu[f"{name}_process_cpu_ms_per_frame"] = relay_cpu
        cpu[f"{name}_page_faults_per_frame"] = relay_faults
    return sent, cpu


def _case_row(sent: _Sent, n: int) -> dict[str, Any]:
    """The statistics of one case's node and relay frames."""
    rows = [answer for _, answer in sent.answers[0]]
    added = _stats([r.roundtrip_ms - r.inference_ms for r in rows])
    row: dict[str, Any] = {
        "frames": n,
        "answered": len(rows),
        "lost": sent.lost,
        "node_latency_ms": _stats([r.latency_ms for r in rows]),
        "node_inference_ms": _stats([r.inference_ms for r in rows]),
        "node_overhead_ms": _stats([r.latency_ms - r.inference_ms for r in rows]),
        "roundtrip_ms": _stats([r.roundtrip_ms for r in rows]),
        "node_added_ms": added,
        "levels_seen": sorted({r.level for r in rows}),
    }
    for (name, _, _), answers in zip(_RELAYS, sent.answers[1:], strict=True):
        floor = _stats([answer.roundtrip_ms for _, answer in answers])
        row[f"{name}_roundtrip_ms"] = floor
        row[f"added_over_{name}_ms_p50"] = round(added["p50"] - floor["p50"], 4)
    return row


def _read_trace(path: Path) -> tuple[list[str], dict[int, list[float]]]:
    """A ``DOFA_NODE_TRACE`` file: its stage names and its rows by header stamp (empty if absent)."""
    try:
        trace = json.loads(path.read_text())
    except (OSError, ValueError):
        return [], {}
    return list(trace["stages"]), {int(row[0]): row for row in trace["frames"]}


#: the node's trace stages (StageTrace.STAGES) and the spans from the stamp to the arrival back:
#: ``out`` is publish + transport back (the publishing thread may be descheduled before
#: publish() returns, after the prediction has arrived: only their sum is meaningful)
_NODE_STAGES = ("callback", "queued", "taken", "converted", "classified", "built")
_NODE_PARTS = ("transport_in", "callback", "handover", "conversion", "classify_overhead", "message", "out")


def _node_breakdown(sent: list[tuple[int, Answer]], stages: list[str], rows: dict[int, list[float]]) -> Any:  # noqa: ANN401 - JSON
    """Per stage of the node's frame path, ms (see the module docstring); None without a trace."""
    parts: dict[str, list[float]] = {name: [] for name in _NODE_PARTS}
    for stamp, answer in sent:
        row = rows.get(stamp)
        if row is None or tuple(stages[: len(_NODE_STAGES)]) != _NODE_STAGES:
            continue
        marks = dict(zip(stages, row[2:], strict=True))
        received = stamp + answer.roundtrip_ms * 1e6  # the publisher's clock: stamp + round trip
        points = [stamp, *(marks[name] for name in _NODE_STAGES), received]
        spans = [(b - a) / 1e6 for a, b in itertools.pairwise(points)]
        # the classified stage includes the engine's inference: count only what classify adds
        spans[_NODE_PARTS.index("classify_overhead")] -= row[1]
        for name, value in zip(_NODE_PARTS, spans, strict=True):
            parts[name].append(value)
    if not parts["out"]:
        return None
    return {"frames": len(parts["out"]), **{name: _stats(values) for name, values in parts.items()}}


def _relay_breakdown(sent: list[tuple[int, Answer]], stages: list[str], rows: dict[int, list[float]]) -> Any:  # noqa: ANN401 - JSON
    """The relay's transport in and out (callback start -> arrival back), ms; None without a trace."""
    parts: dict[str, list[float]] = {"transport_in": [], "out": []}
    for stamp, answer in sent:
        row = rows.get(stamp)
        if row is None or stages != ["callback", "published"]:
            continue
        parts["transport_in"].append((row[2] - stamp) / 1e6)
        parts["out"].append((stamp + answer.roundtrip_ms * 1e6 - row[2]) / 1e6)
    if not parts["out"]:
        return None
    return {"frames": len(parts["out"]), **{name: _stats(values) for name, values in parts.items()}}


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


def _header(
    args: argparse.Namespace, engine: LevelEngine, levels: list[int], table_path: Path
) -> dict[str, Any]:
    execution = engine.execution[levels[0]]
    return {
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
        "transport": "rclpy + Fast DDS (rmw_fastrtps_cpp), classifier_node in its own process",
        "node_executor": os.environ.get(EXECUTOR_ENV, "events"),
        "method": (
            "lock step (next frame after the previous prediction); each frame goes to the classifier, "
            "then to the relay (SingleThreadedExecutor) and the relay_events (EventsExecutor); level "
            "locked by ~/set_level"
        ),
        "frames": args.frames,
        "warmup": args.warmup,
        "runs": [],
    }


def _start_relays(tmp: Path) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "dynamic_ofa_ros.ros_tools.relay"]
            + ["--name", f"dofa_node_bench_{name}", "--topic", topic, "--executor", executor],
            env={**os.environ, TRACE_ENV: str(tmp / f"{name}-trace.json")},
        )
        for name, executor, topic in _RELAYS
    ]


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
    result = _header(args, engine, levels, table_path)
    result["photos"] = where
    cases = [(size, level) for size in args.sizes for level in levels]
    sent: list[_Sent] = []
    with tempfile.TemporaryDirectory(prefix="dofa-node-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        params = {"model": args.model, "device": args.device, "level_table": str(table_path), "threads": 0}
        with _environment(TRACE_ENV, str(tmp / "classifier-trace.json")):
            classifier = ClassifierProcess.start(NODE_NAME, params, tmp / "classifier.log")
        relays = _start_relays(tmp)
        with rclpy.init(args=[]) as context_guard:  # noqa: F841 - keeps the context for the block
            context = rclpy.get_default_context()
            players = [LockStepPlayer(context, classifier=NODE_NAME, topic=CAMERA_TOPIC)]
            players += [
                LockStepPlayer(
                    context, classifier=f"dofa_node_bench_{name}", topic=topic, node_name=f"{name}_player"
                )
                for name, _, topic in _RELAYS
            ]
            pids = [classifier.pid, *(relay.pid for relay in relays)]
            try:
                for size, level in tqdm(cases, desc="node bench", unit="case", file=sys.stderr):
                    frames = [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in pics]
                    baseline = _stats(_engine_baseline(engine, frames, level, args.frames, args.warmup))
                    players[0].set_level(level)
                    case, cpu = _lockstep(players, [image_msg(f) for f in frames], args, pids)
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
                    summary = ("size", "level", "added_over_relay_ms_p50", "added_over_relay_events_ms_p50")
                    print(json.dumps({k: row[k] for k in summary}), file=sys.stderr, flush=True)
            finally:
                for player in players:
                    player.close()
                code = classifier.stop()
                for relay in relays:
                    relay.send_signal(signal.SIGINT)
                for relay in relays:
                    try:
                        relay.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        relay.kill()
                        relay.wait()
                if code not in (0, None):
                    print(f"classifier_node exited with {code}", file=sys.stderr)
        traces = [
            _read_trace(tmp / f"{name}-trace.json") for name in ("classifier", *(r[0] for r in _RELAYS))
        ]
    for row, case in zip(result["runs"], sent, strict=True):
        row["breakdown_ms"] = {"node": _node_breakdown(case.answers[0], *traces[0])}
        for (name, _, _), answers, trace in zip(_RELAYS, case.answers[1:], traces[1:], strict=True):
            row["breakdown_ms"][name] = _relay_breakdown(answers, *trace)
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
