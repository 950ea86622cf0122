"""Executors of the offline tools: where candidate sub-networks are measured.

Measuring a candidate (extract → BN calibration → top-1) is independent of every other one, so
``dofa-levels measure``, the measured search, ``calibrate`` and ``build`` hand their candidates
to an executor chosen by an :class:`ExecutorSpec` (``--executor``):

* ``local`` (default, :class:`~offline_tools.executors.local.LocalExecutor`): in this process,
  one after another — the tools' behaviour and numbers without Ray;
* ``ray`` (:class:`~offline_tools.executors.ray_executor.RayExecutor`): Ray actors that load the
  super-network and the images once and then measure candidate after candidate, on a local Ray
  instance (``--workers N``) or an existing cluster (``--ray-address``). Ray is optional
  (``pip install .[distributed]``).

Both call :func:`~offline_tools.executors.candidate.evaluate_candidate`, so they give identical
numbers for the same threads and device. Latency profiling refuses a parallel executor
(:func:`refuse_parallel`).
"""

from __future__ import annotations

import importlib.util

from offline_tools.executors.base import (
    EXECUTOR_KINDS,
    CandidateExecutor,
    CandidateResult,
    EvaluationSetup,
    ExecutorError,
    ExecutorKind,
    ExecutorSpec,
    ExecutorStats,
    ImageData,
    ParallelExecutorRefusedError,
    refuse_parallel,
)
from offline_tools.executors.candidate import evaluate_candidate

__all__ = [
    "EXECUTOR_KINDS",
    "CandidateExecutor",
    "CandidateResult",
    "EvaluationSetup",
    "ExecutorError",
    "ExecutorKind",
    "ExecutorSpec",
    "ExecutorStats",
    "ImageData",
    "ParallelExecutorRefusedError",
    "evaluate_candidate",
    "open_executor",
    "ray_available",
    "refuse_parallel",
]


def ray_available() -> bool:
    """Whether Ray is installed (``pip install .[distributed]``)."""
    return importlib.util.find_spec("ray") is not None


def open_executor(
    spec: ExecutorSpec, setup: EvaluationSetup, *, progress: bool = True, desc: str = "measure"
) -> CandidateExecutor:
    """The executor ``spec`` asks for, ready to :meth:`~CandidateExecutor.run`; close it when done.

    Raises:
        ExecutorError: ``ray`` without Ray installed, or a cluster that cannot run the workers.
    """
    if spec.kind == "local":
        from offline_tools.executors.local import LocalExecutor

        return LocalExecutor(setup, progress=progress, desc=desc)
    if not ray_available():
        raise ExecutorError(
            "--executor ray needs Ray: pip install 'dynamic_ofa_ros[distributed]' (or ray==2.60.0)"
        )
    from offline_tools.executors.ray_executor import RayExecutor

    return RayExecutor(setup, spec, progress=progress, desc=desc)
