"""InputWatch: never-arrived and stopped input, automatic and fixed timeouts, recovery."""

from __future__ import annotations

import pytest

from dynamic_ofa_ros.input_watch import InputWatch


def feed(watch: InputWatch, start: float, period: float, n: int) -> float:
    t = start
    for _ in range(n):
        watch.arrived(t)
        t += period
    return t - period


def test_no_publishers_no_frames_is_ok() -> None:
    watch = InputWatch()
    state = watch.check(100.0, publishers=0, topics="/image")
    assert state.kind == "ok" and state.warning == "" and not state.changed


def test_publishers_but_no_frame_warns_after_grace_with_hint() -> None:
    watch = InputWatch(hint="load the Fast DDS profile")
    assert watch.check(0.0, publishers=1, topics="/image").kind == "ok"
    state = watch.check(6.0, publishers=1, topics="/image")
    assert state.kind == "never_arrived" and state.changed
    assert "1 publisher(s) on /image" in state.warning and "Fast DDS profile" in state.warning
    again = watch.check(7.0, publishers=1, topics="/image")
    assert again.kind == "never_arrived" and not again.changed  # log once, not every period


def test_stopped_after_frames_is_reported_and_clears_when_frames_resume() -> None:
    watch = InputWatch()
    last = feed(watch, 0.0, 1 / 30, 60)  # 30 Hz for 2 s
    assert watch.timeout_s() == pytest.approx(1.0)  # 10 periods = 0.33 s, raised to the 1 s floor
    assert watch.check(last + 0.5, publishers=1, topics="/image").kind == "ok"
    state = watch.check(last + 1.5, publishers=1, topics="/image")
    assert state.kind == "stopped" and state.changed
    assert "no frame on /image for 1.5 s" in state.warning and "best-effort" in state.warning
    watch.arrived(last + 2.0)
    back = watch.check(last + 2.1, publishers=1, topics="/image")
    assert back.kind == "ok" and back.changed and back.warning == ""


def test_slow_camera_gets_a_longer_automatic_timeout() -> None:
    watch = InputWatch()
    last = feed(watch, 0.0, 0.5, 10)  # 2 Hz
    assert watch.timeout_s() == pytest.approx(5.0)
    assert watch.check(last + 4.0, publishers=1, topics="/image").kind == "ok"
    assert watch.check(last + 5.0, publishers=1, topics="/image").kind == "stopped"


def test_fixed_timeout_and_validation() -> None:
    watch = InputWatch(timeout_s=0.2)
    watch.arrived(10.0)
    assert watch.timeout_s() == 0.2
    assert watch.check(10.3, publishers=0, topics="/image").kind == "stopped"
    with pytest.raises(ValueError, match="0 = automatic"):
        InputWatch(timeout_s=-1.0)
    assert InputWatch().timeout_s() == 30.0  # rate unknown yet: the most tolerant bound
