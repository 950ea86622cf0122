"""``make demo``: the classifier node on a camera stream, latency budgets by service, a co-located model.

What it does (paper Figs. 6-8, on this machine's device):

1. Builds a rosbag (rosbag2, written with ``rosbags``) of a camera stream from real photos:
   the photos that scikit-image ships (``skimage.data``: astronaut, cat, coffee, rocket, ...),
   or an ImageFolder given with ``DATA=<dir>`` / ``--data``.
2. Starts the installed ``classifier_node`` (embedded model + ``config/levels/<device>.json``
   by default) as a subprocess and plays the bag into it in a loop at camera rate (30 fps,
   header stamps = now), with an rclpy publisher.
3. Changes the latency budget by ``~/set_constraints`` service calls: none (warm-up) → tight →
   loose → medium (Fig. 6): a tight budget forces a low level, relaxing it recovers accuracy.
4. Starts a second classifier in the same ``coordination_group`` on the same camera (Figs. 7/8):
   both slow down on the shared CPU/GPU and their managers step down to meet the budgets.
5. Prints a per-phase table (level, window latency vs budget, deadline-hit %) and writes a
   timeline plot (latency, budget and level over time; PNG) plus the raw numbers (JSON).

Options: ``demo --help``. Budgets are derived from the node's own level table and the latency
measured during the warm-up, so the phases mean the same on a fast GPU and a slow CPU.
The phases are :mod:`dynamic_ofa_ros.ros_tools.scenario`; the table and the plot
:mod:`dynamic_ofa_ros.ros_tools.report`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from dynamic_ofa_ros.ros_tools.bags import read_image_bag, write_image_bag
from dynamic_ofa_ros.ros_tools.photos import FRAME_SIZE, load_photos
from dynamic_ofa_ros.ros_tools.report import Recorder, format_table, plot_timeline
from dynamic_ofa_ros.ros_tools.scenario import GROUP, NODE_B, Outcome, Scenario
from dynamic_ofa_ros.timing import device_name, write_json

__all__ = ["main", "run"]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--data",
        default=os.environ.get("DATA") or None,
        help="ImageFolder of photos for the camera stream (default: $DATA, else skimage.data)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="timeline PNG (default: docs/demo.png of the source tree, else ./demo.png)",
    )
    parser.add_argument("--json", default=None, help="numbers as JSON (default: the PNG path with .json)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--model", default="embedded", help="embedded | ofa_zoo | random | checkpoint path")
    parser.add_argument(
        "--level-table", default="", help="level table (default: config/levels/<device>.json)"
    )
    parser.add_argument("--fps", type=float, default=30.0, help="camera rate of the played bag")
    parser.add_argument("--phase-s", type=float, default=12.0, help="seconds per budget phase")
    parser.add_argument(
        "--bag", default=None, help="keep the written rosbag here (default: a temporary folder)"
    )
    parser.add_argument("--threads", type=int, default=0, help="inference threads per node (0 = as profiled)")
    return parser.parse_args(argv)


def _default_out() -> Path:
    """``docs/demo.png`` of the source tree when it is writable, else ``./demo.png``."""
    source_docs = Path(__file__).resolve().parents[2] / "docs"
    if source_docs.is_dir() and os.access(source_docs, os.W_OK):
        return source_docs / "demo.png"
    return Path.cwd() / "demo.png"


def _device_label(device: str) -> str:
    """The CPU model / GPU name behind ``device``, for the plot title."""
    try:
        return device_name(device)
    except (RuntimeError, ValueError, AssertionError):  # an unknown device string: just show it
        return device


def _write_bag(args: argparse.Namespace, bag: Path, frames: list[np.ndarray], photos_from: str) -> None:
    """Two seconds of camera stream (the photos in turn) into a new rosbag at ``bag``."""
    if bag.exists():
        shutil.rmtree(bag)
    n_msgs = write_image_bag(bag, (frames[i % len(frames)] for i in range(int(2 * args.fps))), fps=args.fps)
    print(
        f"[demo] wrote rosbag {bag} ({n_msgs} frames {FRAME_SIZE[0]}x{FRAME_SIZE[1]} rgb8 "
        f"at {args.fps:g} fps from {photos_from})",
        flush=True,
    )


def _report(
    args: argparse.Namespace, outcome: Outcome, recorder: Recorder, photos_from: str, runtime_s: float
) -> dict[str, Any]:
    """The numbers behind the table and the plot (``--json``)."""
    lat, acc, budgets = outcome.latency_ms, outcome.accuracy, outcome.budgets
    return {
        "device": outcome.device,
        "model": args.model,
        "photos": photos_from,
        "fps": args.fps,
        "levels": [{"level": i + 1, "latency_ms": lat[i], "accuracy": acc[i]} for i in range(len(lat))],
        "measured": {
            "slowdown": budgets.slowdown,
            "fixed_ms": budgets.fixed_ms,
            "overhead_ms": budgets.overhead_ms,
        },
        "budgets_ms": {
            "tight": budgets.tight,
            "loose": budgets.loose,
            "medium": budgets.medium,
            NODE_B: outcome.budget_b_ms,
        },
        "phases": [asdict(r) for r in outcome.results],
        "samples_columns": ["t_s", "node", "level", "latency_ms", "inference_ms", "budget_ms"],
        "samples": [
            [
                round(x.t, 3),
                x.node,
                x.level,
                round(x.latency_ms, 2),
                round(x.inference_ms, 2),
                round(x.budget_ms, 2),
            ]
            for x in recorder.samples
        ],
        "runtime_s": runtime_s,
    }


def _finish(
    args: argparse.Namespace, outcome: Outcome, recorder: Recorder, photos_from: str, wall_start: float
) -> None:
    """Print the per-phase table, write the timeline plot and the JSON."""
    out = Path(args.out) if args.out else _default_out()
    json_path = Path(args.json) if args.json else out.with_suffix(".json")
    meaningful = not args.model.startswith("random")
    n = len(outcome.latency_ms)
    print("\n" + format_table(outcome.results, meaningful=meaningful) + "\n", flush=True)
    title = (
        f"Dynamic-OFA node on {outcome.device} ({_device_label(outcome.device)}), model {args.model}"
        f"{'' if meaningful else ' (random weights)'}, {n} levels; camera {args.fps:g} fps "
        f"({photos_from.split(' (', maxsplit=1)[0]})\nbudgets set by ~/set_constraints, then a second, "
        f"co-located classifier in the same coordination group"
    )
    plot_timeline(recorder, outcome.phases, outcome.budget_steps, n, out, title=title)
    runtime = time.monotonic() - wall_start
    report = _report(args, outcome, recorder, photos_from, runtime)
    write_json(json_path, report)
    print(f"[demo] timeline {out}, numbers {json_path}; finished in {runtime:.0f} s", flush=True)


def run(args: argparse.Namespace) -> int:
    """The demo proper (see the module docstring); returns the exit code."""
    import rclpy
    from rclpy.context import Context

    wall_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dofa-demo-"))
    context = Context()
    rclpy.init(context=context)
    scenario: Scenario | None = None
    try:
        frames, photos_from = load_photos(args.data)
        bag = Path(args.bag) if args.bag else work / "camera_bag"
        _write_bag(args, bag, frames, photos_from)
        params: dict[str, Any] = {
            "device": args.device,
            "model": args.model,
            "level_table": args.level_table,
            "coordination_group": GROUP,
            "status_rate": 4.0,
            "threads": args.threads,
        }
        scenario = Scenario(context, work, params)
        outcome = scenario.run(read_image_bag(bag), phase_s=args.phase_s)
        _finish(args, outcome, scenario.recorder, photos_from, wall_start)
        return 0
    except RuntimeError as exc:
        print(f"[demo] FAILED: {exc}", file=sys.stderr, flush=True)
        if scenario is not None:
            scenario.print_logs()
        return 1
    finally:
        if scenario is not None:
            scenario.close()
        if context.ok():
            rclpy.shutdown(context=context)
        if not args.bag:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``demo`` executable (``make demo``)."""
    args = _parse(argv if argv is not None else sys.argv[1:])
    try:
        return run(args)
    except KeyboardInterrupt:
        print("[demo] interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
