"""The ``classifier_node`` process: start-up, the executor loop, signals and an orderly teardown.

Signals. A Python-level handler that raises ``KeyboardInterrupt`` (Python's default for SIGINT;
the entry-point script's for SIGTERM) can interrupt the main thread at *any* bytecode -- also in
the middle of rclpy code that builds an executor, a wait set or a lifecycle transition. On
Jazzy's rclpy (7.x) a SIGTERM in the instant between activation and spinning left a half-built
executor behind ("Exception ignored in Executor.__del__", once a segfault at teardown). So here:

* :class:`StopSignals` replaces those handlers before rclpy is initialised (with no rclpy signal
  handlers). It raises ``KeyboardInterrupt`` only inside :meth:`StopSignals.interruptible` --
  around the long, rclpy-free model loading of *configure* -- and otherwise only records the
  request, which the start-up checks before it spins and the executor loop after every spin.
* With the ``EventsExecutor`` that is all: no thread shuts the context down under the running
  node; the loop ends (within 0.25 s) and the main thread tears down with the context intact,
  in order: executor, node (the inference thread is joined before any entity is destroyed),
  context. With the ``SingleThreadedExecutor`` rclpy's handlers are installed once it exists (so
  that no signal can shut the context down while it is being built): they shut the context down
  and wake it, and an rclpy call that fails because of that is a clean stop too.

Executor. rclpy's C++ ``EventsExecutor`` (``rclpy.experimental``, in Jazzy's and Kilted's rclpy)
where it exists, else the ``SingleThreadedExecutor``; ``DOFA_NODE_EXECUTOR=single`` forces the
latter. The Python executor rebuilds its wait set after every callback, about 1 ms of Python per
frame on a 2-core machine, and the inference thread cannot run Python meanwhile (the GIL): in
lock step it added that to every frame (``node_bench``, ``docs/node.md``). With rclpy's signal
handlers also installed, the ``EventsExecutor`` aborted the process at teardown in 4 of 51
starts that got a SIGTERM right after activation ("Destroying callback manager with callbacks
remaining", rclpy 9.1.2); with StopSignals alone, 0 of 40 on Kilted and 0 of 40 on Jazzy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.signals import SignalHandlerOptions, install_signal_handlers

from dynamic_ofa_ros.node import NODE_NAME, ClassifierNode, StartupError
from dynamic_ofa_ros.node_frames import keep_frame_buffers

__all__ = ["EXECUTOR_ENV", "StopSignals", "events_executor", "main", "spin"]

#: ``DOFA_NODE_EXECUTOR=single``: rclpy's SingleThreadedExecutor instead of its EventsExecutor
EXECUTOR_ENV = "DOFA_NODE_EXECUTOR"
#: the longest a spin waits before the loop checks for a stop request again
_SPIN_TIMEOUT_S = 0.25


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


def events_executor() -> Callable[..., Executor] | None:
    """The factory of rclpy's ``EventsExecutor``; None where missing or ``DOFA_NODE_EXECUTOR=single``."""
    if os.environ.get(EXECUTOR_ENV, "events") == "single":
        return None
    try:
        from rclpy.experimental import EventsExecutor
    except ImportError:  # an rclpy without it: the Python executor
        return None
    return EventsExecutor


def spin(node: ClassifierNode, executor: Executor, stop: StopSignals) -> None:
    """Run ``node``'s callbacks until a signal, a context shutdown or the node's lifecycle shutdown.

    The lifecycle ``shutdown`` transition runs on this thread, so the loop sees it at once. A
    signal reaches the loop through :class:`StopSignals` (Python runs the handler between two
    ``spin_once`` calls) or, with the ``SingleThreadedExecutor``, through rclpy's handlers, whose
    wake-up can come before their thread has shut the context down, after which the executor
    waits again (measured: for good, with no timeout). Hence the short timeout: a stop takes at
    most ``_SPIN_TIMEOUT_S``.
    """
    executor.add_node(node)
    while node.context.ok() and not node.finalized and not stop.requested:
        executor.spin_once(timeout_sec=_SPIN_TIMEOUT_S)


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
        # Not `with rclpy.init()`: Jazzy's rclpy (7.x) returns None there. No rclpy signal handlers
        # yet: until the executor exists, StopSignals alone handles SIGINT/SIGTERM.
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except RCLError as exc:  # e.g. a missing or unparsable --params-file
        logger.fatal(f"cannot start: {str(exc).strip()}; check the --ros-args (--params-file, -p)")
        return 1
    context = rclpy.get_default_context()
    events = events_executor()
    executor: Executor | None = None
    if events is None:
        # rclpy's handlers shut the context down and wake this executor; installed once it exists,
        # so that no signal can shut the context down while it is being built
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
        if executor is None:
            # with it, StopSignals alone takes SIGINT/SIGTERM: no thread shuts the context down
            # under the running node; the loop ends and the teardown runs with the context intact
            executor = events(context=context)
        if stop.requested:
            return 0
        spin(node, executor, stop)
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


def _teardown(executor: Executor | None, node: ClassifierNode | None) -> None:
    """Executor, then node (its inference thread joined first), then the context."""
    if executor is not None:
        executor.shutdown()
    if node is not None:
        node.destroy_node()
    rclpy.try_shutdown()
