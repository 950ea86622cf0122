"""Top-1 of each level measured *through the running node*: an independent check of a level table.

The shipped level tables claim a top-1 accuracy per level (measured offline by
``dofa-levels calibrate`` through the core). This tool checks that claim end to end the way a
robot would see it: it writes the labelled photos into a rosbag with ``rosbags``, starts the
installed ``classifier_node`` as its own process, locks each level with ``~/set_level`` and plays
the bag's messages into the node's ``image`` topic in lock step (the next frame is published
when the prediction of the previous one has arrived, so the latest-frame policy drops nothing),
then compares the predictions with the labels::

    scripts/ros-env python -m dynamic_ofa_ros.replay_eval \\
        --images ../shared/datasets/imagenette/val-224px.zip --levels 1 7 \\
        --out docs/results/replay-eval-cpu.json

A table profiled on another device kind (``--table config/levels/cuda.json`` with ``--device
cpu``) is checked for accuracy only: the node then runs with ``check_table_device:=false``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dynamic_ofa_ros.demo import CAMERA_TOPIC, read_image_bag, start_classifier, stop_process, write_image_bag
from dynamic_ofa_ros.paths import default_level_table
from dynamic_ofa_ros.timing import atomic_write_text, device_name

NODE_NAME = "dofa_replay_eval_classifier"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="replay_eval", description=__doc__.split("\n\n")[0])
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


@dataclass(frozen=True)
class Answer:
    """The node's prediction of one frame, as the player received it."""

    class_id: int
    level: int
    #: the node's end-to-end latency (header stamp -> prediction ready) and its inference time
    latency_ms: float
    inference_ms: float
    #: publish -> prediction received by the player (both transports included)
    roundtrip_ms: float


class LockStepPlayer:
    """Publishes one frame at a time to a classifier node and waits for its prediction of it.

    The next frame is sent only when the prediction of the previous one has arrived, so the
    node's latest-frame policy drops nothing and nothing queues: every frame measures the node's
    own path (transport, conversion, inference, publishing). Frames are matched to predictions
    by header stamp, so stamps must be unique.
    """

    def __init__(self, context: Any, *, classifier: str, topic: str = CAMERA_TOPIC) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import Image

        from dynamic_ofa_ros.msg import Prediction

        self.classifier = classifier
        self.node = Node("dofa_lockstep_player", context=context)
        self.publisher = self.node.create_publisher(Image, topic, 10)
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.answers: dict[int, Answer] = {}
        self._sent: dict[int, float] = {}
        self.node.create_subscription(Prediction, f"/{classifier}/prediction", self._on_prediction, 50)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_prediction(self, msg: Any) -> None:
        received = time.perf_counter()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.arrived:
            sent = self._sent.pop(stamp, received)
            self.answers[stamp] = Answer(
                class_id=int(msg.class_id),
                level=int(msg.level),
                latency_ms=float(msg.latency_ms),
                inference_ms=float(msg.inference_ms),
                roundtrip_ms=(received - sent) * 1000.0,
            )
            self.arrived.notify_all()

    def classify(self, msg: Any, stamp: int, timeout: float) -> Answer | None:
        """Publish ``msg`` (whose header stamp is ``stamp``, re-sent once if lost); its prediction."""
        for _attempt in range(2):
            with self.arrived:
                self._sent[stamp] = time.perf_counter()
            self.publisher.publish(msg)
            deadline = time.monotonic() + timeout / 2
            with self.arrived:
                while stamp not in self.answers:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.arrived.wait(left)
                if stamp in self.answers:
                    return self.answers.pop(stamp)
        with self.arrived:
            self._sent.pop(stamp, None)
        return None

    def set_level(self, level: int, timeout: float = 30.0) -> None:
        """Lock the classifier at ``level`` with its ``~/set_level`` service (0 = automatic)."""
        from dynamic_ofa_ros.srv import SetLevel

        client = self.node.create_client(SetLevel, f"/{self.classifier}/set_level")
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise RuntimeError(f"/{self.classifier}/set_level did not appear within {timeout:g} s")
            done = threading.Event()
            future = client.call_async(SetLevel.Request(level=level))
            future.add_done_callback(lambda _f: done.set())
            if not done.wait(timeout):
                raise RuntimeError(f"set_level {level} did not answer within {timeout:g} s")
            response = future.result()
            if response is None or not response.accepted:
                raise RuntimeError(f"set_level {level} rejected: {getattr(response, 'message', '')}")
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        """Stop spinning and destroy the player's node."""
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=10.0)
        self.node.destroy_node()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Replay the photos through the node at every requested level; return the comparison."""
    import rclpy
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from offline_tools.datasets import open_image_source

    table_path = Path(args.table) if args.table else default_level_table(args.device)
    table = json.loads(table_path.read_text())
    claimed = {int(row["level"]): row.get("accuracy") for row in table["levels"]}
    levels = args.levels or sorted(claimed)
    source = open_image_source(args.images, limit=args.limit)
    images, labels = [], []
    for rgb, label in tqdm(source, total=len(source), desc="decode", file=sys.stderr):
        if label is None:
            raise SystemExit(f"error: {args.images}: photos need labels (an ImageFolder of wnids)")
        images.append(rgb)
        labels.append(label)
    with tempfile.TemporaryDirectory(prefix="dofa-replay-") as tmp:
        bag = Path(tmp) / "val_bag"
        write_image_bag(bag, images, fps=30.0, start_ns=1_000_000_000)
        messages = [(ts, deserialize_message(raw, Image)) for ts, raw in read_image_bag(bag)]
        del images
        # A table of another device kind (the cuda table on a CPU) is checked for accuracy only.
        other_device = str(table.get("device", args.device)).split(":")[0] != args.device.split(":")[0]
        params = {
            "model": args.model,
            "device": args.device,
            "level_table": str(table_path),
            "threads": 0,
            "check_table_device": not other_device,
        }
        proc, log = start_classifier(NODE_NAME, params, Path(tmp) / "classifier.log")
        result: dict[str, Any] = {
            "tool": "dynamic_ofa_ros.replay_eval",
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
                    player.set_level(level)
                    correct = lost = 0
                    started = time.perf_counter()
                    for (stamp, msg), label in tqdm(
                        list(zip(messages, labels, strict=True)), desc=f"level {level}", file=sys.stderr
                    ):
                        got = player.classify(msg, stamp, args.timeout)
                        if got is None:
                            lost += 1
                            continue
                        if got.level != level:
                            raise RuntimeError(f"prediction at level {got.level}, expected {level}")
                        correct += int(got.class_id == label)
                    answered = len(messages) - lost
                    top1 = 100.0 * correct / len(messages)
                    row = {
                        "level": level,
                        "top1_through_node": round(top1, 3),
                        "table_accuracy": claimed.get(level),
                        "difference": None if claimed.get(level) is None else round(top1 - claimed[level], 3),
                        "frames": len(messages),
                        "answered": answered,
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                    result["levels"].append(row)
                    print(json.dumps(row), flush=True)
            finally:
                player.close()
                stop_process(proc)
                log.close()
    return result


def write_result(result: dict[str, Any], out: Path | None) -> str:
    """``result`` as indented JSON text, also written atomically to ``out`` when given."""
    text = json.dumps(result, indent=1) + "\n"
    if out is not None:
        atomic_write_text(out, text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints one JSON line per level, writes ``--out``; non-zero if frames were lost."""
    args = _parse(argv)
    result = run(args)
    write_result(result, args.out)
    lost = sum(row["frames"] - row["answered"] for row in result["levels"])
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
