"""A single-slot hand-over between a producer (the camera callback) and one worker.

Only the newest item is kept, so no backlog can build up behind a slow model: replacing an
unprocessed item counts as *dropped*. This is the queue policy of a real-time perception node
(``image_pipeline`` uses the same one-slot queue).

The hand-over itself costs little; what a Python node loses there is the GIL: the worker woken
by :meth:`LatestSlot.put` runs Python only while the subscription's executor thread does not.
rclpy's ``SingleThreadedExecutor`` rebuilds its wait set in Python after every callback (about
1 ms of CPU per frame on a 2-core machine), which delays the worker by as much; making the
producer wait until the worker has the frame only moved that wait into the worker's inference
(measured), so the node runs rclpy's C++ ``EventsExecutor`` instead (``node_main``).
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
        self.dropped = 0
        self.received = 0

    def put(self, item: T) -> bool:
        """Store ``item``; returns ``True`` when it replaced (dropped) an unprocessed one."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self.received += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item (emptying the slot), or ``None`` after ``timeout`` s or :meth:`close`."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake every waiter; later :meth:`take` calls return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
