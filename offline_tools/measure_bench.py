r"""Benchmark of ``dofa-levels measure``: the in-process executor against Ray workers, in one run.

::

    python -m offline_tools.measure_bench --out docs/results/measure-cpu.json \
        --val ../shared/datasets/imagenette/val-224px.zip \
        --calib ../shared/datasets/imagenette/train-128px-part1.zip

measures the same ``--n`` random sub-networks of the embedded super-network twice through
:func:`offline_tools.cli.measure.run_measure` (the command's own code path): ``--executor local``
with 1 thread, then ``--executor ray`` with ``--workers`` workers of 1 thread each, and writes
the speed-up, each run's per-candidate cost split (extract, BN calibration, evaluation,
transfer), the per-image cost, whether the records are identical, the CPU and the machine's load
(1-minute load average sampled every 5 s during each run; it includes the benchmark's own
processes). On a shared machine the wall-time speed-up moves with the other processes' load; the
CPU seconds per candidate (``cpu_share``: CPU seconds per second of compute) give the speed-up
the workers would reach with a core each (``speedup_dedicated_cores_estimate``).
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
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dynamic_ofa_ros.timing import cpu_name, write_json
from offline_tools.cli.measure import MeasureRequest, run_measure
from offline_tools.cli.options import ImageOptions, ModelOptions, SpaceOptions
from offline_tools.executors import ExecutorSpec
from offline_tools.measure import RUN_FIELDS, MeasureSummary

__all__ = ["main", "run_benchmark"]


class _LoadSampler:
    """Samples the 1-minute load average every ``period`` seconds in a background thread."""

    def __init__(self, period: float = 5.0) -> None:
        self.period = period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(round(os.getloadavg()[0], 2))
            self._stop.wait(self.period)

    def __enter__(self) -> _LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        """Min, mean and max of the samples."""
        s = self.samples or [float("nan")]
        return {"min": min(s), "mean": round(sum(s) / len(s), 2), "max": max(s), "samples": len(s)}


def _timed_run(request: MeasureRequest) -> tuple[MeasureSummary, float, dict[str, float]]:
    """``run_measure`` with its end-to-end wall time (model, images, workers) and the load."""
    with _LoadSampler() as load:
        started = time.perf_counter()
        summary = run_measure(request)
        wall = time.perf_counter() - started
    return summary, wall, load.summary()


def _report(summary: MeasureSummary, wall: float, load: dict[str, float]) -> dict[str, Any]:
    assert summary.stats is not None
    stats = summary.stats.to_dict()
    split = dict(stats["per_candidate_s"])  # type: ignore[call-overload]
    compute = sum(v for k, v in split.items() if k != "transfer")
    per_image = compute / summary.stats.images_per_candidate
    return {
        **stats,
        "command_wall_s": round(wall, 2),
        "compute_s_per_candidate": round(compute, 4),
        "compute_ms_per_image": round(1000 * per_image, 3),
        "load_1min": load,
    }


def _lscpu_model() -> str:
    """``Model name`` of ``lscpu`` (empty when lscpu is missing)."""
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Both runs and the report (see the module docstring)."""
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dofa-measure-bench-"))
    base = MeasureRequest(
        out=str(work / "local.json"),
        model=ModelOptions(model="embedded", threads=1, batch_size=args.batch_size),
        # a seeded sample: the first N members of an ImageFolder zip are one class, and BN
        # statistics of one class are a poor calibration
        calibration=ImageOptions(paths=tuple(args.calib), sample=args.calib_images, seed=0),
        validation=ImageOptions(paths=tuple(args.val), sample=args.val_images, seed=0),
        random=args.n,
        seed=args.seed,
        space=SpaceOptions(),
        predictor=args.accuracy_predictor,
        plot=args.plot,
        progress=False,
    )
    for stale in ("local.json", "ray.json"):
        (work / stale).unlink(missing_ok=True)
    torch.set_num_threads(1)
    load_before = round(os.getloadavg()[0], 2)
    local, local_wall, local_load = _timed_run(base)
    ray_request = replace(
        base,
        out=str(work / "ray.json"),
        executor=ExecutorSpec(kind="ray", workers=args.workers, threads=1),
        plot=None,
    )
    ray_summary, ray_wall, ray_load = _timed_run(ray_request)

    def strip(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in RUN_FIELDS} for r in records]

    assert local.stats is not None and ray_summary.stats is not None
    import ray

    return {
        "benchmark": "dofa-levels measure: local executor (1 thread) vs Ray workers (1 thread each)",
        "command": "python -m offline_tools.measure_bench " + " ".join(args.argv),
        "cpu": cpu_name(),
        "lscpu_model_name": _lscpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__.split("+")[0],
        "ray_version": ray.__version__,
        "candidates": args.n,
        "validation_images": ray_summary.stats.images_per_candidate - args.calib_images,
        "calibration_images": args.calib_images,
        "load_1min_before": load_before,
        "identical_records": strip(local.records) == strip(ray_summary.records),
        "speedup_candidates": round(local.stats.wall_s / ray_summary.stats.wall_s, 3),
        "speedup_command": round(local_wall / ray_wall, 3),
        # other processes share this machine: the wall-time speed-up moves with their load. The
        # CPU seconds a candidate needs do not (much): with a core per worker, the speed-up would be
        # workers x (local CPU s per candidate) / (Ray worker's CPU s per candidate)
        "speedup_dedicated_cores_estimate": round(
            args.workers * local.stats.cpu_s / max(ray_summary.stats.cpu_s, 1e-9), 3
        ),
        "local": _report(local, local_wall, local_load),
        "ray": _report(ray_summary, ray_wall, ray_load),
        "records": {"local": str(work / "local.json"), "ray": str(work / "ray.json")},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write ``--out``."""
    p = argparse.ArgumentParser(prog="python -m offline_tools.measure_bench", description=__doc__)
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--val", nargs="+", required=True, help="validation photos (zip/folder)")
    p.add_argument("--calib", nargs="+", required=True, help="calibration photos (zip/folder)")
    p.add_argument("--n", type=int, default=40, help="random sub-networks (default 40)")
    p.add_argument("--val-images", type=int, default=500, help="seeded sample of validation photos (500)")
    p.add_argument("--calib-images", type=int, default=100, help="seeded sample of calibration photos (100)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--accuracy-predictor", help="store predictions beside the records (for --plot)")
    p.add_argument("--plot", help="measured-vs-predicted PNG of the local run")
    p.add_argument("--work-dir", help="where the two record files go (default: a temporary folder)")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    report = run_benchmark(args)
    write_json(args.out, report)
    print(json.dumps({k: report[k] for k in ("identical_records", "speedup_candidates", "speedup_command")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
