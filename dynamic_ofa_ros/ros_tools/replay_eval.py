r"""Top-1 of each level measured *through the running node*: an independent check of a level table.

The shipped level tables claim a top-1 accuracy per level (measured offline by
``dofa-levels calibrate`` through the core). This tool checks that claim end to end the way a
robot would see it: it writes the labelled photos into a rosbag with ``rosbags``, starts the
installed ``classifier_node`` as its own process, locks each level with ``~/set_level`` and plays
the bag's messages into the node's ``image`` topic in lock step (the next frame is published
when the prediction of the previous one has arrived, so the latest-frame policy drops nothing),
then compares the predictions with the labels::

    scripts/ros-env python -m dynamic_ofa_ros.ros_tools.replay_eval \
        --images ../shared/datasets/imagenette/val-224px.zip --levels 1 7 \
        --out docs/results/replay-eval-cpu.json

A table profiled on another device kind (``--table config/levels/cuda.json`` with ``--device
cpu``) is checked for accuracy only: the node then runs with ``check_table_device:=false``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from dynamic_ofa_ros.paths import default_level_table
from dynamic_ofa_ros.ros_tools.bags import read_image_bag, write_image_bag
from dynamic_ofa_ros.ros_tools.common import ClassifierProcess, write_result
from dynamic_ofa_ros.ros_tools.lockstep import LockStepPlayer
from dynamic_ofa_ros.timing import device_name

if TYPE_CHECKING:
    from sensor_msgs.msg import Image

__all__ = ["NODE_NAME", "main", "run"]

NODE_NAME = "dofa_replay_eval_classifier"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="replay_eval", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--images", required=True, help="labelled photos: ImageFolder dir or zip (Imagenette wnids)"
    )
    p.add_argument("--device", default="cpu", help="the node's device parameter (cpu | cuda)")
    p.add_argument("--model", default="embedded", help="the node's model parameter")
    p.add_argument("--table", default="", help="level table (default: config/levels/<device>.json)")
    p.add_argument("--levels", type=int, nargs="*", default=None, help="levels to check (default: all)")
    p.add_argument("--limit", type=int, default=None, help="first N photos only")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for one prediction")
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    return p.parse_args(argv)


def _labelled_photos(images: str, limit: int | None) -> tuple[list[np.ndarray], list[int]]:
    """The photos of ``images`` (RGB) and their class indices; unlabelled photos exit with an error."""
    from offline_tools.datasets import open_image_source

    source = open_image_source(images, limit=limit)
    photos, labels = [], []
    for rgb, label in tqdm(source, total=len(source), desc="decode", file=sys.stderr):
        if label is None:
            raise SystemExit(f"error: {images}: photos need labels (an ImageFolder of wnids)")
        photos.append(rgb)
        labels.append(label)
    return photos, labels


def _as_messages(photos: list[np.ndarray], bag: Path) -> list[tuple[int, Image]]:
    """``(stamp ns, Image)`` of each photo, written to and read back from a rosbag at ``bag``."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    write_image_bag(bag, photos, fps=30.0, start_ns=1_000_000_000)
    return [(ts, deserialize_message(raw, Image)) for ts, raw in read_image_bag(bag)]


def _check_level(
    player: LockStepPlayer,
    level: int,
    messages: Sequence[tuple[int, Image]],
    labels: Sequence[int],
    claimed: float | None,
    timeout: float,
) -> dict[str, Any]:
    """Top-1 of ``level`` through the node on every message, next to the table's ``claimed`` value."""
    player.set_level(level)
    correct = lost = 0
    started = time.perf_counter()
    for (stamp, msg), label in tqdm(
        list(zip(messages, labels, strict=True)), desc=f"level {level}", file=sys.stderr
    ):
        got = player.classify(msg, stamp, timeout)
        if got is None:
            lost += 1
            continue
        if got.level != level:
            raise RuntimeError(f"prediction at level {got.level}, expected {level}")
        correct += int(got.class_id == label)
    top1 = 100.0 * correct / len(messages)
    return {
        "level": level,
        "top1_through_node": round(top1, 3),
        "table_accuracy": claimed,
        "difference": None if claimed is None else round(top1 - claimed, 3),
        "frames": len(messages),
        "answered": len(messages) - lost,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Replay the photos through the node at every requested level; return the comparison."""
    import rclpy

    table_path = Path(args.table) if args.table else default_level_table(args.device)
    table = json.loads(table_path.read_text())
    claimed = {int(row["level"]): row.get("accuracy") for row in table["levels"]}
    levels = args.levels or sorted(claimed)
    photos, labels = _labelled_photos(args.images, args.limit)
    with tempfile.TemporaryDirectory(prefix="dofa-replay-") as tmp:
        messages = _as_messages(photos, Path(tmp) / "val_bag")
        del photos
        # A table of another device kind (the cuda table on a CPU) is checked for accuracy only.
        other_device = str(table.get("device", args.device)).split(":")[0] != args.device.split(":")[0]
        params = {
            "model": args.model,
            "device": args.device,
            "level_table": str(table_path),
            "threads": 0,
            "check_table_device": not other_device,
        }
        classifier = ClassifierProcess.start(NODE_NAME, params, Path(tmp) / "classifier.log")
        result: dict[str, Any] = {
            "tool": "dynamic_ofa_ros.ros_tools.replay_eval",
            "images": f"{args.images} ({len(messages)} photos, rosbag replay through {NODE_NAME})",
            "table": str(table_path),
            "table_device": f"{table.get('device')} ({table.get('device_name')})",
            "device": device_name(args.device),
            "levels": [],
        }
        with rclpy.init(args=[]) as context_guard:  # noqa: F841 - keeps the context for the block
            player = LockStepPlayer(rclpy.get_default_context(), classifier=NODE_NAME)
            try:
                for level in levels:
                    row = _check_level(player, level, messages, labels, claimed.get(level), args.timeout)
                    result["levels"].append(row)
                    print(json.dumps(row), flush=True)
            finally:
                player.close()
                classifier.stop()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints one JSON line per level, writes ``--out``; non-zero if frames were lost."""
    args = _parse(argv)
    result = run(args)
    write_result(result, args.out)
    lost = sum(row["frames"] - row["answered"] for row in result["levels"])
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
