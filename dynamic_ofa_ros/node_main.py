"""The ``classifier_node`` process: start-up, the executor loop, signals and an orderly teardown.

Signals. A Python-level handler that raises ``KeyboardInterrupt`` (Python's default for SIGINT;
the entry-point script's for SIGTERM) can interrupt the main thread at *any* bytecode -- also in
the middle of rclpy code that builds an executor, a wait set or a lifecycle transition. On
Jazzy's rclpy (7.x) a SIGTERM in the instant between activation and spinning left a half-built
executor behind ("Exception ignored in Executor.__del__", once a segfault at teardown). So here:

* :class:`StopSignals` replaces those handlers before rclpy is initialised. It raises
  ``KeyboardInterrupt`` only inside :meth:`StopSignals.interruptible` -- around the long,
  rclpy-free model loading of *configure* -- and otherwise only records the request.
* rclpy's own C-level handlers (installed after the executor exists, so no signal can shut the
  context down while it is being built) shut the context down and wake the executor; the loop
  then ends with ``ExternalShutdownException`` and the main thread tears down in order:
  executor, node (the inference thread is joined before any entity is destroyed), context.
* An rclpy call that fails because a signal has just shut the context down is a clean stop too.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.signals import SignalHandlerOptions, install_signal_handlers

from dynamic_ofa_ros.node import NODE_NAME, ClassifierNode, StartupError
from dynamic_ofa_ros.node_frames import keep_frame_buffers

__all__ = ["StopSignals", "main", "spin"]


class StopSignals:
    """SIGINT/SIGTERM of the node process: a request to stop, an interruption only where safe.

    Constructing it installs the Python-level handlers (main thread only).
    """

    def __init__(self) -> None:
        self.requested = False
        self._interruptible = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self._interruptible:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Inside the block a signal (also one that came before it) raises ``KeyboardInterrupt``."""
        self._interruptible = True
        try:
            if self.requested:
                raise KeyboardInterrupt
            yield
        finally:
            self._interruptible = False


def spin(node: ClassifierNode, executor: SingleThreadedExecutor) -> None:
    """Run ``node``'s callbacks until a signal shuts the context down or its lifecycle shutdown.

    The lifecycle ``shutdown`` transition runs on this thread, so the loop sees it at once. A
    signal wakes the executor through rclpy's guard condition, but that can come before rclpy's
    signal thread has shut the context down, and the executor then waits again (measured: for
    good, with no timeout); the 1 s timeout bounds that.
    """
    executor.add_node(node)
    while node.context.ok() and not node.finalized:
        executor.spin_once(timeout_sec=1.0)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``classifier_node``: 0 on a clean shutdown, 1 when the node cannot start.

    With ``autostart`` (default) the node configures and activates itself; otherwise it waits
    unconfigured for ``ros2 lifecycle set``. SIGINT/SIGTERM at any moment -- while the model
    loads, between activation and spinning, or while frames flow -- end with 0 and no traceback;
    a bad ``--params-file`` or parameter ends with one FATAL line and 1.
    """
    try:
        stop = StopSignals()
        return _run(list(sys.argv if args is None else args), stop)
    except KeyboardInterrupt:  # before the handlers were replaced, or while loading the model
        return 0


def _run(argv: list[str], stop: StopSignals) -> int:
    logger = get_logger(NODE_NAME)
    try:
        # Not `with rclpy.init()`: Jazzy's rclpy (7.x) returns None there. rclpy's signal handlers
        # come once the executor exists (below).
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except RCLError as exc:  # e.g. a missing or unparsable --params-file
        logger.fatal(f"cannot start: {str(exc).strip()}; check the --ros-args (--params-file, -p)")
        return 1
    context = rclpy.get_default_context()
    executor = SingleThreadedExecutor(context=context)
    install_signal_handlers(SignalHandlerOptions.ALL)
    node: ClassifierNode | None = None
    try:
        if stop.requested:
            return 0
        node = ClassifierNode(interruptible=stop.interruptible)
        if node.autostart:
            node.start()
        else:
            node.get_logger().info(
                f"autostart is false: unconfigured; ros2 lifecycle set "
                f"{node.get_fully_qualified_name()} configure (then activate)"
            )
        keep_frame_buffers()
        spin(node, executor)
    except StartupError as exc:
        if context.ok() and not stop.requested:
            logger.fatal(f"cannot start: {exc}")
            return 1
    except ExternalShutdownException:
        pass
    except Exception:
        if context.ok() and not stop.requested:
            raise
        # an rclpy call failed because a signal had just shut the context down: a clean stop
    finally:
        _teardown(executor, node)
    return 0


def _teardown(executor: SingleThreadedExecutor, node: ClassifierNode | None) -> None:
    """Executor, then node (its inference thread joined first), then the context."""
    executor.shutdown()
    if node is not None:
        node.destroy_node()
    rclpy.try_shutdown()
