"""A single-slot hand-over between a producer (the camera callback) and one worker.

Only the newest item is kept, so no backlog can build up behind a slow model: replacing an
unprocessed item counts as *dropped*. This is the queue policy of a real-time perception node
(``image_pipeline`` uses the same one-slot queue).

The hand-over is also where a Python node loses time: the worker, woken by :meth:`LatestSlot.put`,
must get the GIL, and the producer (rclpy's executor thread) goes on running Python -- rebuilding
its wait set, about 0.3-0.7 ms on a 2-core machine -- before it releases it. ``put(..., handoff_s=)``
therefore waits, with the GIL released, until an idle worker has taken the item, so the worker
runs first (``docs/node.md``, "What the node adds").
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

__all__ = ["LatestSlot"]

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """The newest unprocessed item, never a queue. Thread-safe.

    :meth:`put` replaces an unprocessed item (counted in :attr:`dropped`);
    :meth:`take` waits for an item and empties the slot.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self._idle_takers = 0  # takers waiting in take() for an item
        self._taken = 0  # items taken so far (a put's hand-over waits for it to grow)
        self.dropped = 0
        self.received = 0

    @property
    def waiting(self) -> int:
        """Takers idle in :meth:`take`, waiting for an item."""
        with self._cond:
            return self._idle_takers

    def put(self, item: T, *, handoff_s: float = 0.0) -> bool:
        """Store ``item``; returns ``True`` when it replaced (dropped) an unprocessed one.

        Args:
            item: the new item.
            handoff_s: when a taker is idle in :meth:`take`, wait up to this long (GIL released)
                until it has taken ``item``: the taker then runs before the producer's own code.
                A busy taker is never waited for (the item stays in the slot). 0: do not wait.
        """
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self.received += 1
            self._item = item
            self._cond.notify()
            if handoff_s > 0.0 and self._idle_takers and not self._closed:
                taken = self._taken
                self._cond.wait_for(lambda: self._taken != taken or self._closed, handoff_s)
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item (emptying the slot), or ``None`` after ``timeout`` s or :meth:`close`."""
        with self._cond:
            self._idle_takers += 1
            try:
                self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            finally:
                self._idle_takers -= 1
            item, self._item = self._item, None
            if item is not None:
                self._taken += 1
                self._cond.notify_all()  # a producer waiting for the hand-over
            return item

    def close(self) -> None:
        """Wake every waiter; later :meth:`take` calls return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
