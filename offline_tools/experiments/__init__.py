"""Runtime experiments of the Dynamic-OFA paper (Figs. 6, 7 and 8) on one device, GPU or CPU.

``python -m offline_tools.experiments --device cuda --table config/levels/cuda.json --model embedded
--out docs/results [--only fig6 fig7 fig8] [--quick] [--images DIR_OR_ZIP]``
(or ``dofa-levels experiments ...``).

Every experiment drives a camera-like frame loop through
:class:`~dynamic_ofa_ros.classifier.DynamicClassifier`, the object the ROS node runs: frames are
captured at ``--fps`` (0 = back-to-back), each real image is classified with the level the
manager chose, the latency of the call (preprocessing included) is fed back, and the level the
manager returns runs the next frame.

* **fig6** -- the latency budget changes over time (tight -> loose -> medium) on an otherwise idle
  device; the levels must follow within one window.
* **fig7** -- a co-located training job (torchvision ResNet-18, SGD, random data) starts in
  another process in the middle of the run and stops later; the manager steps down until the
  budget is met and back up after the job ends.
* **fig8** -- two classifiers (two processes, one classifier each) share the device with
  different budgets; their statuses travel through multiprocessing queues to each one's
  :class:`~dynamic_ofa_ros.coordinator.Coordinator`. Compared with the same two classifiers
  reacting alone (``uncoordinated``).

Each experiment is also run, the same way, with two static baselines locked at one level:
``static_alone`` (the level the look-up table picks for the budget: it meets the budget only
when the model is alone) and ``static_safe`` (the level that meets the budget even under the
load: measured). Budgets are chosen automatically from per-level latencies measured at
start-up, alone and under the load (:mod:`~offline_tools.experiments.budgets`,
``docs/experiments.md``). Results: ``<out>/fig{6,7,8}-<tag>.json`` and ``.png``.

Modules: ``settings`` (what shapes a run), ``runs`` (the frame loop), ``records`` (timelines and
metrics), ``budgets`` (budget rules), ``loads`` (fig. 7's training job), ``workers`` (fig. 8's
processes), ``figures`` (figs. 6/7), ``fig8``, ``plots``, ``context`` (set-up, result files),
``suite`` (all of them in one go), ``cli``.
"""

from offline_tools.experiments.budgets import fig6_budgets, load_budget, lut_level, monotone
from offline_tools.experiments.cli import add_arguments, main, run
from offline_tools.experiments.context import Context, build_context, load_images
from offline_tools.experiments.fig8 import run_fig8
from offline_tools.experiments.figures import run_fig6, run_fig7
from offline_tools.experiments.loads import TrainingLoad
from offline_tools.experiments.records import Event, RunRecord, analyse_run, find_events, metric_fields
from offline_tools.experiments.runs import Rig, Schedule, measure_levels, run_frames
from offline_tools.experiments.settings import EXPERIMENTS, Inputs, Settings
from offline_tools.experiments.suite import run_experiments
from offline_tools.experiments.workers import WorkerPair

__all__ = [
    "EXPERIMENTS",
    "Context",
    "Event",
    "Inputs",
    "Rig",
    "RunRecord",
    "Schedule",
    "Settings",
    "TrainingLoad",
    "WorkerPair",
    "add_arguments",
    "analyse_run",
    "build_context",
    "fig6_budgets",
    "find_events",
    "load_budget",
    "load_images",
    "lut_level",
    "main",
    "measure_levels",
    "metric_fields",
    "monotone",
    "run",
    "run_experiments",
    "run_fig6",
    "run_fig7",
    "run_fig8",
    "run_frames",
]
