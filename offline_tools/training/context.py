"""What the training stages share: the run's clock, its event log, JSON output, the :class:`Context`."""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import torch
from torch import Tensor, nn

from dynamic_ofa_ros.arch import SearchSpace
from offline_tools.training.config import TrainConfig

__all__ = ["Clock", "Context", "RunLog"]


@dataclass
class Clock:
    """Seconds since the run started: the time budget counts from :attr:`start` (``time.monotonic``).

    Run as a script, the entry point starts the clock before importing torch, so the budget covers
    the whole process.
    """

    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        """Seconds since :attr:`start`."""
        return time.monotonic() - self.start

    def say(self, msg: str) -> None:
        """Print a progress line prefixed with the elapsed seconds."""
        print(f"[{self.elapsed():6.1f}s] {msg}", flush=True)


class RunLog:
    """JSON-lines event log (flushed per line, so a crash keeps everything before it)."""

    def __init__(self, path: Path, clock: Clock) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.clock = clock
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run, closed by close()

    def event(self, kind: str, **data: object) -> None:
        """Append ``{"event": kind, "t": <elapsed s>, **data}`` as one line."""
        record = {"event": kind, "t": round(self.clock.elapsed(), 3), **data}
        self._fh.write(json.dumps(record, sort_keys=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass
class Context:
    """Everything the stages share: config, device, network, images and the index sets, log, budget."""

    cfg: TrainConfig
    device: torch.device
    net: nn.Module
    space: SearchSpace
    images: Tensor  # uint8 N x 3 x S x S on the device
    labels: Tensor  # int64 N on the device
    train_idx: Tensor  # int64 on the device
    calib_idx: Tensor  # int64 on the device, in split order
    holdout_idx: Tensor  # int64 on the device
    log: RunLog
    budget_s: float
    clock: Clock = field(default_factory=Clock)

    def autocast(self) -> AbstractContextManager[object]:
        """bf16 autocast on CUDA when the config asks for it; otherwise nothing (fp32)."""
        if self.device.type == "cuda" and self.cfg.bf16_autocast:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def remaining_s(self) -> float:
        """Seconds left of the run's budget."""
        return self.budget_s - self.clock.elapsed()
