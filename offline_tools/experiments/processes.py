"""Small helpers for the experiments' helper processes: a set-up lock, start times, queue draining."""

from __future__ import annotations

import contextlib
import queue
import sys
import time
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Lock
from typing import TypeVar

__all__ = ["drain", "locked", "wait_until"]

_T = TypeVar("_T")


@contextlib.contextmanager
def locked(lock: Lock | None, timeout_s: float = 300.0) -> Iterator[None]:
    """Hold ``lock`` (a multiprocessing lock, or ``None``: nothing) for the block.

    Gives up waiting after ``timeout_s`` (a process that died holding it must not hang the run).
    """
    got = lock.acquire(timeout=timeout_s) if lock is not None else False
    if lock is not None and not got:
        print(f"set-up lock not free after {timeout_s:.0f} s; going on without it", file=sys.stderr)
    try:
        yield
    finally:
        if lock is not None and got:
            lock.release()


def wait_until(t: float | None) -> None:
    """Sleep until ``time.monotonic()`` reaches ``t`` (``None``: return at once)."""
    if t is not None:
        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def drain(box: Queue[_T]) -> list[_T]:
    """Everything waiting in ``box`` now, without blocking."""
    items: list[_T] = []
    while True:
        try:
            items.append(box.get_nowait())
        except queue.Empty:
            return items
