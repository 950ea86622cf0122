"""The in-process executor (``--executor local``, the default): one candidate after another.

Candidates run in order of resolution so consecutive ones reuse the resized images, exactly as
the offline tools always measured them; the numbers are those of
:func:`~offline_tools.executors.candidate.evaluate_candidate` with this process's torch threads.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynamic_ofa_ros.arch import SubnetConfig
from offline_tools.executors.base import (
    CandidateResult,
    EvaluationSetup,
    ExecutorStats,
    ResultCallback,
    Timer,
)
from offline_tools.executors.candidate import CandidateProgress, CandidateWorker, resolution_order

__all__ = ["LocalExecutor"]


class LocalExecutor:
    """Measures candidates in this process (see the module docstring)."""

    kind = "local"

    def __init__(self, setup: EvaluationSetup, *, progress: bool = True, desc: str = "measure") -> None:
        self.setup = setup
        self.progress = progress
        self.desc = desc
        self._worker: CandidateWorker | None = None
        self._stats = ExecutorStats(kind="local", workers=1, images_per_candidate=setup.images_per_candidate)

    @property
    def stats(self) -> ExecutorStats:
        """What it did so far."""
        return self._stats

    def run(
        self, cfgs: Sequence[SubnetConfig], *, on_result: ResultCallback | None = None
    ) -> list[CandidateResult]:
        """Measure ``cfgs`` one after another (by resolution); results in the order of ``cfgs``."""
        if self._worker is None:
            self._worker = CandidateWorker(self.setup, "local")
            self._stats.setup_s.append(self._worker.setup_s)
        results: list[CandidateResult | None] = [None] * len(cfgs)
        bar = CandidateProgress(len(cfgs), enabled=self.progress and len(cfgs) >= 2, desc=self.desc)
        try:
            with Timer(self._stats):
                for i in resolution_order(cfgs):
                    bar.update(running=1)
                    result = self._worker.evaluate(cfgs[i])
                    result.seconds["transfer"] = 0.0
                    results[i] = result
                    self._stats.add(result)
                    if on_result is not None:
                        on_result(result)
                    bar.update(done=1, running=0)
        finally:
            bar.close()
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Nothing to stop; drops the worker's state."""
        self._worker = None
