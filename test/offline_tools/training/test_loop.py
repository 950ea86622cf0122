"""Tests of offline_tools.training.loop: the LR schedule."""

from __future__ import annotations

import pytest

from offline_tools.training.config import TrainConfig
from offline_tools.training.loop import Schedule


def test_schedule_warmup_cosine_and_time_awareness() -> None:
    cfg = TrainConfig(lr=1.0, time_aware_schedule=True)
    sched = Schedule(cfg, total_steps=100, warmup_steps=10, train_budget_s=100.0)
    assert sched.lr(0, 0.0) == pytest.approx(0.1)
    assert sched.lr(10, 0.0) == pytest.approx(1.0)
    assert sched.lr(55, 0.0) == pytest.approx(0.5)
    assert sched.lr(20, 50.0) == pytest.approx(0.5)  # the wall clock is ahead of the steps
    assert sched.progress(20, 100.0) >= 1.0
    fixed = Schedule(TrainConfig(lr=1.0, time_aware_schedule=False), 100, 10, 100.0)
    assert fixed.progress(20, 1e9) < 1.0
    resumable = Schedule(cfg, 100, 10, 100.0, time_aware=False)  # what a resumable run uses
    assert resumable.progress(20, 1e9) == fixed.progress(20, 1e9)
