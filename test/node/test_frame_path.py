"""The node's frame path without a node: the one-slot hand-over, stage trace, signals, executor, malloc."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynamic_ofa_ros.latest import LatestSlot

pytestmark = [pytest.mark.ros]


def test_latest_slot_keeps_only_the_newest_item() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True  # replaced the unprocessed 1: dropped
    assert (slot.take(timeout=0.0), slot.dropped, slot.received) == (2, 1, 2)
    assert slot.take(timeout=0.0) is None


def test_close_wakes_takers() -> None:
    slot: LatestSlot[int] = LatestSlot()
    got: list[int | None] = []
    taker = threading.Thread(target=lambda: got.append(slot.take(timeout=None)), daemon=True)
    taker.start()
    slot.close()
    taker.join(timeout=30.0)
    assert got == [None] and slot.take(timeout=None) is None


def _image(stamp_ns: int) -> Any:
    from sensor_msgs.msg import Image

    msg = Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(12))
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return msg


def test_stage_trace_records_complete_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dynamic_ofa_ros.node_frames import TRACE_ENV, Frame, StageTrace

    monkeypatch.delenv(TRACE_ENV, raising=False)
    assert StageTrace.from_env() is None
    monkeypatch.setenv(TRACE_ENV, str(tmp_path / "trace.json"))
    trace = StageTrace.from_env()
    assert trace is not None
    untraced = Frame(msg=_image(5), received_ns=5)
    untraced.mark()  # a no-op without marks
    assert untraced.marks is None
    complete = Frame(msg=_image(1_700_000_000_123_456_789), received_ns=0, marks=trace.start())
    for _ in StageTrace.STAGES[1:]:
        complete.mark()
    failed = Frame(msg=_image(2), received_ns=0, marks=trace.start())  # rejected after the callback
    trace.finish(complete, 3.5)
    trace.finish(failed, 1.0)
    trace.write()
    written = json.loads((tmp_path / "trace.json").read_text())
    assert written["stages"] == list(StageTrace.STAGES)
    (row,) = written["frames"]
    assert row[:2] == [1_700_000_000_123_456_789, 3.5]
    marks = row[2:]
    assert len(marks) == len(StageTrace.STAGES) and marks == sorted(marks)


@pytest.fixture
def restored_signals() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_stop_signals_interrupt_only_where_allowed(restored_signals: None) -> None:
    from dynamic_ofa_ros.node_main import StopSignals

    stop = StopSignals()
    os.kill(os.getpid(), signal.SIGTERM)  # outside interruptible(): recorded, nothing raised
    time.sleep(0.01)
    assert stop.requested
    with pytest.raises(KeyboardInterrupt), stop.interruptible():  # a request from before: at once
        pytest.fail("the block must not run after a stop request")

    fresh = StopSignals()
    with pytest.raises(KeyboardInterrupt), fresh.interruptible():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30.0)  # the handler interrupts the sleep
    assert fresh.requested


def test_keep_frame_buffers_on_glibc() -> None:
    import platform

    from dynamic_ofa_ros.node_frames import keep_frame_buffers

    assert keep_frame_buffers() is (platform.libc_ver()[0] == "glibc")


def test_node_executor_is_the_events_executor_unless_turned_off(
    rclpy_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dynamic_ofa_ros.node_main import EXECUTOR_ENV, events_executor

    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    factory = events_executor()
    assert factory is not None  # Jazzy's and Kilted's rclpy have it
    executor = factory(context=rclpy_context)
    try:
        assert type(executor).__name__ == "EventsExecutor"
    finally:
        executor.shutdown()
    monkeypatch.setenv(EXECUTOR_ENV, "single")
    assert events_executor() is None
