"""Start-up time and memory of the classifier node: compiled levels (warm / cold cache) vs torch.

In one run, the installed ``classifier_node`` (embedded model, device cpu, the table's thread
count, ``autostart``) is started in each configuration while a camera publishes 320x240 rgb8
photos at 30 fps:

* ``openvino_cold`` -- backend openvino, ``config/levels/cpu.json``, an empty compiled-level cache
  (``DOFA_CACHE_DIR`` = a fresh folder): every level exported (torch) and compiled;
* ``openvino_warm`` -- the same with the cache that run filled: ONNX files and OpenVINO blobs
  from disk, the model identified by checksum, no torch;
* ``openvino_warm_torch_preprocessing`` -- the warm start with ``preprocessing: torch`` (the
  compiled levels, frames resized by torch's kernel: PyTorch in the process);
* ``torch`` -- backend torch on ``config/levels/cpu-torch.json`` (eager PyTorch levels).

Per start: seconds from the process start (just before ``Popen``) to the first prediction received
(the node classifies only after configure has materialised every level), the node's RSS while it
classifies with all levels resident (``VmRSS`` sampled every 0.25 s for ``--seconds`` after the
first prediction: mean and max), its lifetime peak (``VmHWM``), and whether libtorch is mapped
into the process (``/proc/<pid>/maps``). The CPU (``lscpu`` model name) and the load average
before and after are recorded: other processes may share the machine.

    scripts/ros-env python -m dynamic_ofa_ros.ros_tools.startup_footprint --out <json>
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

NODE = "startup_classifier"
TOPIC = "/startup/camera"


def proc_status(pid: int, *keys: str) -> dict[str, int]:
    """The fields ``keys`` of ``/proc/<pid>/status`` as integers (memory in kB, e.g. VmRSS; Threads)."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            values[key] = int(rest.split()[0])
    return values


def _status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MiB."""
    return {key: kb / 1024.0 for key, kb in proc_status(pid, "VmRSS", "VmHWM").items()}


def torch_mapped(pid: int) -> bool:
    """Whether a libtorch shared object is mapped into process ``pid``."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text(errors="replace")


def uptime() -> str:
    """``uptime``'s line (its load averages), or ``""`` where the command is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def cpu_model() -> str:
    """``lscpu``'s "Model name" (``/proc/cpuinfo`` when lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    for line in out.splitlines():
        if line.strip().startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    from dynamic_ofa_ros.timing import cpu_name

    return cpu_name()


class Camera:
    """Publishes photos at ``fps`` (stamped now) from its own thread on ``topic``.

    It collects the arrival times of the predictions on ``prediction_topic`` in :attr:`arrivals`.
    """

    def __init__(self, tool: Any, fps: float, *, topic: str, prediction_topic: str) -> None:  # noqa: ANN401 - a ToolNode
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from dynamic_ofa_ros.msg import Prediction
        from dynamic_ofa_ros.ros_tools.common import image_msg
        from dynamic_ofa_ros.ros_tools.photos import load_photos

        frames, self.source = load_photos(None, size=(320, 240))
        self.msgs = [image_msg(rgb) for rgb in frames]
        self.pub = tool.node.create_publisher(Image, topic, qos_profile_sensor_data)
        self.clock = tool.node.get_clock()
        self.period = 1.0 / fps
        self.arrivals: list[float] = []
        tool.node.create_subscription(
            Prediction, prediction_topic, lambda _msg: self.arrivals.append(time.perf_counter()), 100
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i, next_t = 0, time.perf_counter()
        while not self._stop.is_set():
            msg = self.msgs[i % len(self.msgs)]
            msg.header.stamp = self.clock.now().to_msg()
            self.pub.publish(msg)
            i += 1
            next_t += self.period
            self._stop.wait(max(0.0, next_t - time.perf_counter()))

    def stop(self) -> None:
        """Stop publishing."""
        self._stop.set()
        self._thread.join(timeout=5.0)


def _start_once(
    camera: Camera, params: dict[str, Any], cache: Path, seconds: float, log: Path
) -> dict[str, Any]:
    """Start the node with compiled-level cache ``cache``; time to the first prediction, RSS, torch."""
    from dynamic_ofa_ros.ros_tools.common import ClassifierProcess

    os.environ["DOFA_CACHE_DIR"] = str(cache)
    count = len(camera.arrivals)
    started = time.perf_counter()
    node = ClassifierProcess.start(NODE, params, log, topic=TOPIC)
    try:
        deadline = started + 600.0
        while len(camera.arrivals) == count:
            node.check_running()
            if time.perf_counter() > deadline:
                raise RuntimeError(f"no prediction within 600 s:\n{node.tail()}")
            time.sleep(0.02)
        first_s = camera.arrivals[count] - started
        rss: list[float] = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            rss.append(_status(node.pid)["VmRSS"])
            time.sleep(0.25)
        result = {
            "first_prediction_s": round(first_s, 2),
            "rss_mb_mean": round(statistics.fmean(rss), 1),
            "rss_mb_max": round(max(rss), 1),
            "rss_peak_lifetime_mb": round(_status(node.pid)["VmHWM"], 1),
            "libtorch_mapped": torch_mapped(node.pid),
            "predictions_per_s": round(
                (len(camera.arrivals) - count) / (time.perf_counter() - started - first_s), 1
            ),
            "ready_line": next(
                (line for line in log.read_text(errors="replace").splitlines() if "ready:" in line), ""
            ).strip(),
        }
    finally:
        node.stop()
    return result


def run(seconds: float, fps: float, repeats: int, log: Path) -> dict[str, Any]:
    """Measure cold, warm and torch starts (each ``repeats`` times) with one camera; the result dict."""
    import rclpy
    from rclpy.context import Context

    from dynamic_ofa_ros.paths import config_file
    from dynamic_ofa_ros.ros_tools.common import ToolNode

    base = {"device": "cpu", "model": "embedded", "status_rate": 2.0}
    compiled = {**base, "backend": "openvino", "level_table": str(config_file("levels/cpu.json"))}
    eager = {**base, "backend": "torch", "level_table": str(config_file("levels/cpu-torch.json"))}
    workdir = Path(tempfile.mkdtemp(prefix="dofa-startup-"))
    context = Context()
    rclpy.init(context=context)
    tool = ToolNode("startup_footprint_tool", context)
    camera = None
    torch_input = {**compiled, "preprocessing": "torch"}
    runs: dict[str, list[dict[str, Any]]] = {
        "openvino_cold": [],
        "openvino_warm": [],
        "openvino_warm_torch_preprocessing": [],
        "torch": [],
    }
    try:
        camera = Camera(tool, fps, topic=TOPIC, prediction_topic=f"/{NODE}/prediction")
        load_before, uptime_before = os.getloadavg(), uptime()
        warm = workdir / "warm"
        for i in range(repeats):
            cold = workdir / f"cold{i}" if i else warm  # the first cold start fills the warm cache
            runs["openvino_cold"].append(_start_once(camera, compiled, cold, seconds, log))
        for _ in range(repeats):
            runs["openvino_warm"].append(_start_once(camera, compiled, warm, seconds, log))
        for _ in range(repeats):
            runs["openvino_warm_torch_preprocessing"].append(
                _start_once(camera, torch_input, warm, seconds, log)
            )
        for _ in range(repeats):
            runs["torch"].append(_start_once(camera, eager, workdir / "torch", seconds, log))
        load_after, uptime_after = os.getloadavg(), uptime()
    finally:
        if camera is not None:
            camera.stop()
        tool.close()
        rclpy.shutdown(context=context)
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "what": "classifier_node start-up (process start -> first prediction, all levels materialised) "
        "and RSS with all levels resident, compiled OpenVINO levels with a warm / cold cache vs torch",
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "uptime": {"before": uptime_before, "after": uptime_after},
        "load_average_1_5_15": {
            "before": [round(v, 2) for v in load_before],
            "after": [round(v, 2) for v in load_after],
        },
        "model": "embedded",
        "device": "cpu",
        "configurations": {
            "openvino_cold": {**compiled, "cache": "empty (export + compile every level)"},
            "openvino_warm": {**compiled, "cache": "filled by the cold start (ONNX files, OpenVINO blobs)"},
            "openvino_warm_torch_preprocessing": {**torch_input, "cache": "the warm cache"},
            "torch": {**eager, "cache": "not used"},
        },
        "camera": f"320x240 rgb8 at {fps:g} fps, best effort ({camera.source if camera else ''})",
        "rss_window_s": seconds,
        "runs": runs,
        "command": "scripts/ros-env python -m dynamic_ofa_ros.ros_tools.startup_footprint "
        "--out docs/results/startup-memory-cpu.json",
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print (and with ``--out`` write) the start-up/memory JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="RSS sampling after the first prediction")
    parser.add_argument("--fps", type=float, default=30.0, help="camera rate")
    parser.add_argument("--repeats", type=int, default=1, help="starts per configuration")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument("--log", type=Path, default=Path("/tmp/startup_footprint_node.log"))
    args = parser.parse_args(argv)
    from dynamic_ofa_ros.ros_tools.common import write_result

    print(write_result(run(args.seconds, args.fps, max(1, args.repeats), args.log), args.out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
