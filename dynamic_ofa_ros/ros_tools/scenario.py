"""The demo's timeline: budget phases on one classifier node, then a second, co-located one.

Phases (paper Figs. 6-8), each a few seconds of camera stream:

1. ``no budget``: the most accurate level; measures this machine's slow-down against the table
   and the node's end-to-end overhead, from which the budgets are derived (:class:`Budgets`).
2. ``tight`` -> ``loose`` -> ``medium``: budgets set with ``~/set_constraints`` on node A.
3. ``A+B co-located``: node B starts in the same ``coordination_group`` on the same camera; both
   slow down on the shared CPU/GPU and their managers step down to meet the budgets.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynamic_ofa_ros.ros_tools.bags import BagPlayer
from dynamic_ofa_ros.ros_tools.common import CAMERA_TOPIC, ClassifierProcess, ToolNode, classifier_command
from dynamic_ofa_ros.ros_tools.report import PhaseResult, Recorder, Sample, phase_result

if TYPE_CHECKING:
    from rclpy.context import Context

__all__ = ["GROUP", "NODE_A", "NODE_B", "Budgets", "DemoNode", "Outcome", "Scenario"]

GROUP = "demo_device"
NODE_A = "classifier_a"
NODE_B = "classifier_b"


class DemoNode(ToolNode):
    """The demo's own node: the camera publisher and the classifiers' outputs into a :class:`Recorder`."""

    def __init__(self, context: Context, recorder: Recorder) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        super().__init__("dynamic_ofa_demo", context)
        self.recorder = recorder
        self.publisher = self.node.create_publisher(
            Image, CAMERA_TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        )

    def watch(self, name: str) -> None:
        """Record the ``prediction`` and ``status`` topics of classifier ``name``."""
        from dynamic_ofa_ros.msg import ManagerStatus, Prediction

        recorder = self.recorder
        self.node.create_subscription(
            Prediction, f"/{name}/prediction", lambda m: recorder.on_prediction(name, m), 50
        )
        self.node.create_subscription(
            ManagerStatus, f"/{name}/status", lambda m: recorder.on_status(name, m), 10
        )

    def wait_for_predictions(self, classifier: ClassifierProcess, count: int, timeout: float) -> None:
        """Wait until ``classifier`` has published ``count`` predictions.

        Raises:
            RuntimeError: it exited, or ``timeout`` seconds passed.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.recorder.count(classifier.name) >= count:
                return
            code = classifier.exit_code()
            if code is not None:
                raise RuntimeError(f"{classifier.name} exited with code {code}")
            time.sleep(0.1)
        raise RuntimeError(f"{classifier.name}: no predictions within {timeout:g} s")


@dataclass(frozen=True)
class Budgets:
    """The demo's budgets, derived from the table and the latencies measured without a budget."""

    #: measured inference time per ms of the table's latency (the line through the two probes)
    slowdown: float
    #: measured inference time that does not scale with the level (e.g. resizing a camera frame), ms
    fixed_ms: float
    #: median end-to-end latency minus inference (queueing + conversion), ms
    overhead_ms: float
    tight: float
    loose: float
    medium: float

    @classmethod
    def from_warmup(
        cls, top: Sequence[Sample], bottom: Sequence[Sample], latency_ms: Sequence[float]
    ) -> Budgets:
        """Budgets from predictions at the top level (``top``) and at level 1 (``bottom``).

        A level's expected inference time here is the line through the two measured medians over
        the table's latencies: ``slowdown * table + fixed`` (a busier machine scales every level,
        resizing a camera frame costs about the same at each), plus the measured overhead. Tight
        and medium budgets give level 1 and the middle level 20 % headroom for frame-to-frame
        jitter -- not "half-way to the next level": neighbouring levels can be closer than the
        jitter (levels 1-3 of the CPU table lie within 1 ms), and such a budget tests noise. The
        middle level is the one whose latency is nearest the geometric mean of the fastest and
        the slowest (the levels are not evenly spaced). The loose budget is 1.5x the top level.
        """
        n = len(latency_ms)
        high = statistics.median(s.inference_ms for s in top) if top else latency_ms[-1]
        low = statistics.median(s.inference_ms for s in bottom) if bottom else latency_ms[0]
        span = latency_ms[-1] - latency_ms[0]
        slowdown = (high - low) / span if span > 0 else high / latency_ms[-1]
        if slowdown <= 0:  # the probes did not separate (noise): scale only
            slowdown = high / latency_ms[-1]
        fixed = high - slowdown * latency_ms[-1]
        samples = [*top, *bottom]
        overhead = statistics.median(s.latency_ms - s.inference_ms for s in samples) if samples else 0.0

        def predicted(level: int) -> float:
            return max(slowdown * latency_ms[level - 1] + fixed, 0.0) + max(overhead, 0.0)

        middle = math.sqrt(latency_ms[0] * latency_ms[-1])
        medium_level = min(range(1, n + 1), key=lambda lv: abs(math.log(latency_ms[lv - 1] / middle)))
        return cls(
            slowdown=slowdown,
            fixed_ms=fixed,
            overhead_ms=overhead,
            tight=predicted(1) * 1.2,
            loose=predicted(n) * 1.5,
            medium=predicted(medium_level) * 1.2,
        )


@dataclass
class Outcome:
    """What the scenario measured, for the table, the plot and the JSON."""

    device: str
    latency_ms: list[float]
    accuracy: list[float]
    budgets: Budgets
    budget_b_ms: float
    phases: list[tuple[str, float, float]]
    budget_steps: dict[str, list[tuple[float, float]]]
    results: list[PhaseResult]


class Scenario:
    """Runs the demo's phases against classifier nodes it starts; :meth:`close` stops everything.

    Args:
        context: the rclpy context (initialised by the caller).
        work: folder for the nodes' logs.
        params: ROS parameters of both classifier nodes.
    """

    def __init__(self, context: Context, work: Path, params: dict[str, Any]) -> None:
        self.recorder = Recorder(t0=time.monotonic())
        self.ros = DemoNode(context, self.recorder)
        self.work = work
        self.params = params
        self.classifiers: list[ClassifierProcess] = []
        self.player: BagPlayer | None = None
        self.phases: list[tuple[str, float, float]] = []
        self.budget_steps: dict[str, list[tuple[float, float]]] = {NODE_A: [(0.0, 0.0)], NODE_B: []}
        self.results: list[PhaseResult] = []
        self.accuracy: list[float] = []

    def _start(self, name: str, params: dict[str, Any]) -> ClassifierProcess:
        classifier = ClassifierProcess.start(name, params, self.work / f"{name}.log")
        self.classifiers.append(classifier)
        return classifier

    def _levels(self, classifier: ClassifierProcess) -> tuple[str, list[float], list[float]]:
        """The device and the latency/accuracy per level of ``classifier`` (``~/get_levels``)."""
        from dynamic_ofa_ros.srv import GetLevels

        levels = self.ros.call(
            GetLevels, f"/{classifier.name}/get_levels", GetLevels.Request(), timeout=120.0
        )
        classifier.check_running()
        lat = [float(info.latency_ms) for info in levels.levels]
        acc = [float(info.accuracy) for info in levels.levels]
        print(
            f"[demo] {len(lat)} levels on {levels.device}: "
            + ", ".join(f"L{i + 1} {lat[i]:.1f} ms / {acc[i]:.1f} %" for i in range(len(lat))),
            flush=True,
        )
        return str(levels.device), lat, acc

    def set_budget(self, name: str, budget: float) -> None:
        """Set the latency budget of classifier ``name`` (``~/set_constraints``); refusal raises."""
        from dynamic_ofa_ros.srv import SetConstraints

        response = self.ros.call(
            SetConstraints,
            f"/{name}/set_constraints",
            SetConstraints.Request(latency_budget_ms=budget, min_accuracy=0.0),
        )
        if not response.accepted:
            raise RuntimeError(f"{name} rejected budget {budget:.1f} ms: {response.message}")
        self.recorder.budgets[name] = budget
        self.budget_steps[name].append((self.recorder.now(), budget))
        print(
            f"[demo] {name}: budget {budget:.1f} ms -> level {response.level} ({response.message})",
            flush=True,
        )

    def set_level(self, name: str, level: int) -> None:
        """Hold ``level`` on classifier ``name`` (``~/set_level``; 0 = automatic); refusal raises."""
        message = self.ros.lock_level(name, level)
        print(f"[demo] {name}: level {level or 'automatic'} ({message})", flush=True)

    def phase(self, name: str, seconds: float, nodes: Sequence[str]) -> None:
        """Let the stream run ``seconds``; record the phase's statistics of each of ``nodes``."""
        start = self.recorder.now()
        time.sleep(seconds)
        end = self.recorder.now()
        self.phases.append((name, start, end))
        for node in nodes:
            budget = self.recorder.budgets.get(node, 0.0)
            self.results.append(phase_result(self.recorder, name, node, start, end, budget, self.accuracy))
        for classifier in self.classifiers:
            classifier.check_running()

    def _start_colocated(self, budget_ms: float) -> None:
        """Start classifier B in A's coordination group with ``budget_ms``; wait for its first frame."""
        params_b = dict(self.params, latency_budget_ms=budget_ms)
        classifier_b = self._start(NODE_B, params_b)
        self.recorder.budgets[NODE_B] = budget_ms
        print(f"[demo] started {NODE_B} (budget {budget_ms:.1f} ms, group {GROUP})", flush=True)
        start_b = self.recorder.now()
        self.ros.wait_for_predictions(classifier_b, 1, 120.0)
        self.budget_steps[NODE_B].append((self.recorder.now(), budget_ms))
        self.phases.append(("B starting", start_b, self.recorder.now()))

    def run(self, messages: Sequence[tuple[int, bytes]], *, phase_s: float) -> Outcome:
        """All phases; ``messages`` is the camera bag (played in a loop, restamped at publishing)."""
        for name in (NODE_A, NODE_B):
            self.ros.watch(name)
        classifier_a = self._start(NODE_A, self.params)
        print(
            f"[demo] started {NODE_A}: {' '.join(classifier_command())} (log {classifier_a.log_path})",
            flush=True,
        )
        device, lat, self.accuracy = self._levels(classifier_a)
        self.player = BagPlayer(self.ros.node, self.ros.publisher, messages, loop=True, restamp=True)
        self.player.start()
        self.ros.wait_for_predictions(classifier_a, 5, 60.0)

        # No budget: the most accurate level; then level 1 held briefly. The two give this machine's
        # inference time per level (scaled and fixed parts) and its end-to-end overhead.
        self.phase("no budget", max(4.0, phase_s * 0.5), [NODE_A])
        top = self.recorder.window(NODE_A, *self.phases[-1][1:])
        self.set_level(NODE_A, 1)
        self.phase("level 1 held", max(2.0, phase_s * 0.25), [NODE_A])
        bottom = [x for x in self.recorder.window(NODE_A, *self.phases[-1][1:]) if x.level == 1]
        self.set_level(NODE_A, 0)
        budgets = Budgets.from_warmup(top, bottom, lat)
        print(
            f"[demo] measured: inference {budgets.slowdown:.2f} x table + {budgets.fixed_ms:.1f} ms, "
            f"overhead {budgets.overhead_ms:.1f} ms (queueing + conversion); budgets tight "
            f"{budgets.tight:.1f}, loose {budgets.loose:.1f}, medium {budgets.medium:.1f} ms",
            flush=True,
        )
        for name, budget in (("tight", budgets.tight), ("loose", budgets.loose), ("medium", budgets.medium)):
            self.set_budget(NODE_A, budget)
            self.phase(name, phase_s, [NODE_A])

        # Co-located second model (Figs. 7/8): same device, same camera, same coordination group.
        budget_b = round(budgets.medium * 1.2, 3)
        self._start_colocated(budget_b)
        self.phase("A+B co-located", phase_s * 1.5, [NODE_A, NODE_B])
        self.player.stop()
        self._print_status()
        return Outcome(
            device=device,
            latency_ms=lat,
            accuracy=self.accuracy,
            budgets=budgets,
            budget_b_ms=budget_b,
            phases=self.phases,
            budget_steps=self.budget_steps,
            results=self.results,
        )

    def _print_status(self) -> None:
        for name in (NODE_A, NODE_B):
            status = self.recorder.status.get(name)
            if status is not None:
                print(
                    f"[demo] {name}: frames {status.frames}, switches {status.switches}, dropped "
                    f"{status.dropped}, errors {status.errors}, mode {status.mode}",
                    flush=True,
                )

    def print_logs(self) -> None:
        """The end of each classifier's log on stderr (after a failure)."""
        for classifier in self.classifiers:
            tail = classifier.tail()
            if tail:
                print(f"[demo] last lines of {classifier.name}:\n{tail}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the player and the classifier nodes (last started first), destroy the demo's node."""
        if self.player is not None:
            self.player.stop()
        for classifier in reversed(self.classifiers):
            classifier.stop()
        self.ros.close()
