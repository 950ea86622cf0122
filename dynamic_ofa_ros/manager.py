"""The runtime manager (the paper's RTM): picks the level for the next frame.

A :class:`RuntimeManager` holds the level family of one model (profiled latency
and accuracy per level, level 1 fastest) and the user's constraints (a latency
budget and an accuracy floor). The caller reports the measured latency of every
frame with :meth:`RuntimeManager.observe` and runs the next frame at the level
it returns. Three automatic modes exist (see ``docs/manager.md``):

* ``lut``: open loop. The most accurate level whose *profiled* latency fits the
  budget, chosen when the constraints change; measurements never move it.
* ``reactive``: closed loop. Measured latencies are collected in windows of
  ``window_size`` frames taken at one level; at the end of each window the
  manager steps down on a violation (directly to the best level predicted to
  fit, using the measured slow-down) or steps up one level after
  ``up_windows`` windows of predicted slack (hysteresis). A constraint change
  takes effect at once, using the latest measured slow-down.
* ``auto`` (default): a constraint change picks the LUT choice (capped by the
  prediction from the latest measurements, if any); afterwards the reactive
  rule runs.

``set_manual_level(n)`` locks a level; ``0`` returns to the automatic mode.

Everything is deterministic: time comes from an injected ``clock`` and
latencies from the caller, so tests replay scripted traces.
"""

from __future__ import annotations

import math
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dynamic_ofa_ros.errors import ConstraintError, LevelTableError, UnknownLevelError
from dynamic_ofa_ros.timing import percentile
from dynamic_ofa_ros.window import WindowSummary, estimate, window_statistic

MODES = ("auto", "lut", "reactive")
PRIORITIES = ("latency", "accuracy")
STATISTICS = ("mean", "p95")

#: ``unmet`` values: nothing, the latency budget, the accuracy floor, or both.
UNMET_VALUES = ("", "latency", "accuracy", "both")


@dataclass(frozen=True)
class LevelSpec:
    """What the manager needs to know about one level: number, profiled latency, accuracy.

    ``latency_ms`` is the profiled (p50) latency of the level alone on the device;
    ``accuracy`` is top-1 in percent.
    """

    level: int
    latency_ms: float
    accuracy: float

    def __post_init__(self) -> None:
        try:
            number = operator.index(self.level)
        except TypeError:
            raise LevelTableError(
                f"level number {self.level!r} is not an integer; number levels 1, 2, ... from the fastest"
            ) from None
        if isinstance(self.level, bool) or number < 1:
            raise LevelTableError(f"level number {self.level!r} must be an integer >= 1 (level 1 = fastest)")
        latency = _as_float(self.latency_ms, "latency_ms", number)
        accuracy = _as_float(self.accuracy, "accuracy", number)
        if not latency > 0.0:
            raise LevelTableError(
                f"level {number}: latency_ms={latency} must be a positive number of milliseconds; "
                "re-profile the level"
            )
        if not 0.0 <= accuracy <= 100.0:
            raise LevelTableError(
                f"level {number}: accuracy={accuracy} must be a top-1 percentage in [0, 100]"
            )
        object.__setattr__(self, "level", number)
        object.__setattr__(self, "latency_ms", latency)
        object.__setattr__(self, "accuracy", accuracy)

    @classmethod
    def from_level(cls, level: object) -> LevelSpec:
        """Build from any object with ``level``, ``latency_ms`` and ``accuracy`` attributes.

        This is how a row of a level table (``levels.Level``) becomes a spec. When
        ``accuracy`` is ``None`` the row's ``predicted_accuracy`` is used instead.
        """
        if isinstance(level, LevelSpec):
            return level
        missing = [name for name in ("level", "latency_ms") if not hasattr(level, name)]
        if missing:
            raise LevelTableError(
                f"{type(level).__name__} has no {', '.join(missing)}; pass level-table rows "
                "(attributes level, latency_ms, accuracy)"
            )
        number = level.level  # type: ignore[attr-defined]
        accuracy = getattr(level, "accuracy", None)
        if accuracy is None:
            accuracy = getattr(level, "predicted_accuracy", None)
        if accuracy is None:
            raise LevelTableError(
                f"level {number} has neither a measured nor a predicted accuracy; calibrate the table first"
            )
        latency = level.latency_ms  # type: ignore[attr-defined]
        return cls(level=number, latency_ms=latency, accuracy=accuracy)


def _as_float(value: object, name: str, level: int) -> float:
    if isinstance(value, bool):
        raise LevelTableError(f"level {level}: {name}={value!r} is not a number")
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LevelTableError(f"level {level}: {name}={value!r} is not a number") from None
    if not math.isfinite(result):
        raise LevelTableError(f"level {level}: {name}={result} must be finite; re-profile or re-measure it")
    return result


def level_specs(source: object) -> tuple[LevelSpec, ...]:
    """Level specs from a level table (anything with ``.levels``) or an iterable of rows.

    The result is validated like the manager's input (see :func:`validate_levels`).
    """
    rows = getattr(source, "levels", source)
    if not isinstance(rows, Iterable):
        raise LevelTableError(f"{type(source).__name__} is neither a level table nor a list of levels")
    return validate_levels([LevelSpec.from_level(row) for row in rows])


def validate_levels(levels: Sequence[LevelSpec]) -> tuple[LevelSpec, ...]:
    """Check a level family: numbered 1..N, latency strictly increasing, accuracy non-decreasing.

    Raises :class:`LevelTableError` naming the first problem.
    """
    specs = tuple(levels)
    if not specs:
        raise LevelTableError("the level family is empty; load a level table with at least one level")
    for index, spec in enumerate(specs):
        if not isinstance(spec, LevelSpec):
            raise LevelTableError(
                f"item {index} is a {type(spec).__name__}, not a LevelSpec; build specs with level_specs()"
            )
        if spec.level != index + 1:
            raise LevelTableError(
                f"levels must be numbered 1..{len(specs)} in order; item {index} is level {spec.level}"
            )
    for low, high in zip(specs, specs[1:], strict=False):
        if not high.latency_ms > low.latency_ms:
            raise LevelTableError(
                f"level {high.level} ({high.latency_ms:g} ms) is not slower than level {low.level} "
                f"({low.latency_ms:g} ms); levels must be sorted by strictly increasing latency"
            )
        if high.accuracy < low.accuracy:
            raise LevelTableError(
                f"level {high.level} ({high.accuracy:g} %) is less accurate than level {low.level} "
                f"({low.accuracy:g} %); a level family must be Pareto-sorted (accuracy non-decreasing)"
            )
    return specs


@dataclass(frozen=True, kw_only=True)
class ManagerConfig:
    """Settings of the runtime manager (all validated; see ``docs/manager.md``).

    * ``window_size``: frames per measurement window; the controller decides at most
      once per window.
    * ``mode``: ``auto`` | ``lut`` | ``reactive``.
    * ``priority``: which constraint wins when no level meets both: ``latency``
      (default) or ``accuracy``.
    * ``violation_statistic``: ``mean`` or ``p95`` of the window compared with the budget.
    * ``up_margin``: step up only when the next level's predicted latency is at most
      ``up_margin`` x budget ...
    * ``up_windows``: ... for this many consecutive windows.
    * ``down_margin``: on a violation, jump to the most accurate level predicted to
      run within ``down_margin`` x budget.
    * ``max_budget_ms``: larger budgets are rejected as mistakes.
    * ``early_verdict``: end a window as soon as its violation is certain -- so many frames
      already exceed the budget that the window's statistic would exceed it whatever the
      remaining frames measure -- instead of waiting for its last frame (with a 10-frame p95
      window one frame far over budget can decide: the p95 interpolates towards the maximum).
      Only once the level has run for a full window: moves stay at least a window apart, so
      the controller never oscillates faster.
    """

    window_size: int = 10
    mode: str = "auto"
    priority: str = "latency"
    violation_statistic: str = "mean"
    up_margin: float = 0.85
    up_windows: int = 2
    down_margin: float = 0.95
    max_budget_ms: float = 60_000.0
    early_verdict: bool = True

    def __post_init__(self) -> None:
        _check_int(self.window_size, "window_size", 1, 100_000)
        _check_int(self.up_windows, "up_windows", 1, 10_000)
        _check_choice(self.mode, "mode", MODES)
        _check_choice(self.priority, "priority", PRIORITIES)
        _check_choice(self.violation_statistic, "violation_statistic", STATISTICS)
        for name in ("up_margin", "down_margin", "max_budget_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConstraintError(f"manager config: {name}={value!r} must be a finite number")
            object.__setattr__(self, name, float(value))
        if not 0.0 < self.up_margin <= self.down_margin <= 1.0:
            raise ConstraintError(
                f"manager config: need 0 < up_margin ({self.up_margin}) <= down_margin "
                f"({self.down_margin}) <= 1; the gap between them is the hysteresis band"
            )
        if not self.max_budget_ms > 0.0:
            raise ConstraintError(f"manager config: max_budget_ms={self.max_budget_ms} must be positive")


def _check_int(value: object, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConstraintError(f"manager config: {name}={value!r} must be an integer in [{low}, {high}]")


def _check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConstraintError(f"{name}={value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class Decision:
    """The outcome of a request or of a window: the level for the next frame and why.

    ``reason`` is one of ``constraints``, ``mode``, ``manual``, ``violation``,
    ``slack``, ``coordinator``. ``unmet`` is ``""``, ``"latency"``, ``"accuracy"``
    or ``"both"`` for the chosen level. ``mode`` is ``lut``, ``reactive`` or ``manual``.
    """

    level: int
    previous_level: int
    switched: bool
    mode: str
    unmet: str
    reason: str


@dataclass(frozen=True)
class ManagerState:
    """A snapshot of the manager; the first fields mirror the ROS ``ManagerStatus`` message.

    ``budget_ms`` is ``None`` when no budget is set. ``window_mean_ms``/``window_p95_ms``
    cover the last ``window_size`` valid frames (0.0 before the first frame).
    ``slowdown`` is the last complete window's mean over the profiled latency of
    its level (0.0 before the first window). ``last_reaction_frames``/``_ms``:
    frames / milliseconds from the first over-budget frame of a violating window
    to the start of the next window within budget (0 until one reaction completed).
    ``expected_latency_ms`` is the predicted statistic at the current level.
    """

    level: int
    n_levels: int
    mode: str
    budget_ms: float | None
    min_accuracy: float
    window_mean_ms: float
    window_p95_ms: float
    frames: int
    violations: int
    switches: int
    unmet: str
    expected_accuracy: float
    last_reaction_frames: int
    slowdown: float
    last_reaction_ms: float
    expected_latency_ms: float
    ignored: int
    priority: str
    previous_level: int
    level_since: float
    level_since_frame: int
    last_window: WindowSummary | None


#: Called at every window boundary in ``auto``/``reactive`` mode (with a budget set).
#: Returns the level for the next window, or ``None`` to let the manager's own rule decide.
WindowPolicy = Callable[["RuntimeManager"], "int | None"]


class RuntimeManager:
    """Chooses the level of each frame from constraints and measured latencies.

    ``levels`` is the level family (see :func:`level_specs`); ``clock`` returns
    seconds (monotonic; it must be comparable between processes when the
    manager's status is used for coordination, which ``time.monotonic`` is on
    one host). ``on_switch`` is called with the :class:`Decision` after every
    level change (from any cause), outside the manager's lock, so it may call
    :meth:`status`. ``window_policy`` (see :meth:`set_window_policy`) lets a
    coordinator decide instead of the manager's own reactive rule.

    Until :meth:`set_constraints` is called there is no budget and the most
    accurate level runs. All methods are thread-safe.
    """

    def __init__(
        self,
        levels: Sequence[LevelSpec],
        config: ManagerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_switch: Callable[[Decision], None] | None = None,
        window_policy: WindowPolicy | None = None,
    ) -> None:
        self._specs = validate_levels(levels)
        self._cfg = config if config is not None else ManagerConfig()
        if not isinstance(self._cfg, ManagerConfig):
            raise ConstraintError(f"config must be a ManagerConfig, not {type(self._cfg).__name__}")
        self._lat = tuple(spec.latency_ms for spec in self._specs)
        self._acc = tuple(spec.accuracy for spec in self._specs)
        self._n = len(self._specs)
        self._clock = clock
        self._on_switch = on_switch
        self._policy = window_policy
        self._lock = threading.RLock()
        self._window_size = self._cfg.window_size
        self._use_p95 = self._cfg.violation_statistic == "p95"

        self._mode = self._cfg.mode
        self._manual = 0
        self._budget: float | None = None
        self._min_acc = 0.0
        self._floor = 1  # lowest level meeting min_accuracy; n + 1 when none does
        self._level = self._n
        self._previous = self._n
        self._since = float(clock())
        self._since_frame = 0
        self._closed_loop = False  # auto mode: a measurement-driven move happened since the last request

        self._win_lat: list[float] = []
        self._win_inf: list[float] = []
        self._win_t0 = 0.0
        self._win_first = 0
        self._win_over_frame = -1
        self._win_over_t = 0.0
        self._recent: deque[float] = deque(maxlen=self._window_size)

        self._frames = 0
        self._violations = 0
        self._switches = 0
        self._ignored = 0
        self._slack = 0
        self._est: tuple[float, float, float, float] | None = None
        self._last_window: WindowSummary | None = None
        self._pending_frame = -1
        self._pending_t = 0.0
        self._reaction_frames = 0
        self._reaction_ms = 0.0
        self._unmet = ""

    # ------------------------------------------------------------------ properties

    @property
    def levels(self) -> tuple[LevelSpec, ...]:
        """The level family, level 1 first."""
        return self._specs

    @property
    def config(self) -> ManagerConfig:
        """The configuration the manager was built with (``mode`` may since have changed)."""
        return self._cfg

    @property
    def current_level(self) -> int:
        """The level to run for the next frame."""
        return self._level

    @property
    def mode(self) -> str:
        """The automatic mode in force (``auto``, ``lut`` or ``reactive``), also while a level is locked."""
        return self._mode

    @property
    def manual_level(self) -> int:
        """The locked level, or 0 in automatic operation."""
        return self._manual

    @property
    def budget_ms(self) -> float | None:
        """The latency budget in ms, or ``None`` before the first :meth:`set_constraints`."""
        return self._budget

    @property
    def min_accuracy(self) -> float:
        """The accuracy floor in percent (0 = none)."""
        return self._min_acc

    @property
    def last_window(self) -> WindowSummary | None:
        """The most recent completed window, or ``None`` before the first."""
        return self._last_window

    # ------------------------------------------------------------------ requests

    def set_constraints(
        self, *, latency_budget_ms: float | None, min_accuracy: float | None = None
    ) -> Decision:
        """Set the latency budget (ms, end to end) and the accuracy floor (top-1 %).

        ``None`` clears a constraint: no budget (the most accurate level allowed runs and no
        frame counts as a violation), no accuracy floor. Validates both first and raises
        :class:`ConstraintError` without changing anything when either is unusable. Takes
        effect for the very next frame: the level is chosen now (by the LUT, or by the
        prediction from the latest measurements in ``reactive`` mode), the measurement window
        restarts and a reaction in progress is abandoned. Returns the decision, with ``unmet``
        naming a constraint that the chosen level cannot meet.
        """
        budget = None if latency_budget_ms is None else self._check_budget(latency_budget_ms)
        floor_acc = 0.0 if min_accuracy is None else _check_accuracy(min_accuracy)
        with self._lock:
            self._budget = budget
            self._min_acc = floor_acc
            self._floor = next((s.level for s in self._specs if s.accuracy >= floor_acc), self._n + 1)
            decision = self._restart("constraints")
        self._notify(decision)
        return decision

    def set_mode(self, mode: str) -> Decision:
        """Switch the automatic mode (``auto``, ``lut`` or ``reactive``); the level is re-chosen now.

        A locked level (:meth:`set_manual_level`) stays locked; the new mode applies
        when it is released. Raises :class:`ConstraintError` for an unknown mode.
        """
        _check_choice(mode, "mode", MODES)
        with self._lock:
            self._mode = mode
            decision = self._restart("mode")
        self._notify(decision)
        return decision

    def set_manual_level(self, level: int) -> Decision:
        """Lock ``level`` (1..N) for every following frame, or release the lock with 0.

        Raises :class:`UnknownLevelError` for a level the family does not have.
        Releasing re-chooses the level as a constraint change would.
        """
        try:
            number = operator.index(level)
        except TypeError:
            raise UnknownLevelError(
                f"level {level!r} is not an integer; give 1..{self._n}, or 0 for automatic"
            ) from None
        if isinstance(level, bool) or not 0 <= number <= self._n:
            raise UnknownLevelError(
                f"level {level!r} is not in the table (levels 1..{self._n}); "
                f"give 1..{self._n}, or 0 for automatic"
            )
        with self._lock:
            self._manual = number
            decision = self._restart("manual")
        self._notify(decision)
        return decision

    def set_window_policy(self, policy: WindowPolicy | None) -> None:
        """Install (or remove with ``None``) a policy consulted at every window boundary.

        The policy is called with this manager (inside its lock: it may call
        :meth:`status`, not the setters) in ``auto``/``reactive`` mode when a budget
        is set. Returning a level moves there (reason ``coordinator``); returning
        ``None`` lets the manager's own reactive rule decide. A coordinator is
        attached this way (``Coordinator.attach``).
        """
        with self._lock:
            self._policy = policy

    # ------------------------------------------------------------------ measurements

    def observe(self, latency_ms: float, *, inference_ms: float | None = None) -> int:
        """Record the measured end-to-end latency of the frame just finished; return the next level.

        ``inference_ms`` (the model alone), when given, separates the part of the
        latency that scales with the level from fixed overhead, which improves the
        prediction. NaN, infinite or negative latencies are ignored (counted in
        ``status().ignored``); an unusable ``inference_ms`` is treated as absent.
        """
        try:
            lat = float(latency_ms)
        except (TypeError, ValueError):
            lat = math.nan
        if not 0.0 <= lat < math.inf:
            with self._lock:
                self._ignored += 1
                return self._level
        inf = lat
        if inference_ms is not None:
            try:
                value = float(inference_ms)
            except (TypeError, ValueError):
                value = math.nan
            if 0.0 <= value <= lat:
                inf = value
        decision: Decision | None = None
        with self._lock:
            index = self._frames
            self._frames = index + 1
            self._recent.append(lat)
            win = self._win_lat
            if not win:
                self._win_t0 = self._clock() - lat / 1000.0
                self._win_first = index
            budget = self._budget
            if budget is not None and lat > budget:
                self._violations += 1
                if self._win_over_frame < 0:
                    self._win_over_frame = index
                    self._win_over_t = self._clock() - lat / 1000.0
            win.append(lat)
            self._win_inf.append(inf)
            if len(win) >= self._window_size or (
                budget is not None and lat > budget and self._violation_certain(budget)
            ):
                decision = self._window_boundary()
            level = self._level
        if decision is not None:
            self._notify(decision)
        return level

    def status(self) -> ManagerState:
        """A consistent snapshot of levels, constraints, window statistics and counters."""
        with self._lock:
            recent = list(self._recent)
            mean = sum(recent) / len(recent) if recent else 0.0
            p95 = percentile(recent, 95.0) if recent else 0.0
            last = self._last_window
            slowdown = last.mean_ms / self._lat[last.level - 1] if last is not None else 0.0
            return ManagerState(
                level=self._level,
                n_levels=self._n,
                mode=self._reported_mode(),
                budget_ms=self._budget,
                min_accuracy=self._min_acc,
                window_mean_ms=mean,
                window_p95_ms=p95,
                frames=self._frames,
                violations=self._violations,
                switches=self._switches,
                unmet=self._unmet,
                expected_accuracy=self._acc[self._level - 1],
                last_reaction_frames=self._reaction_frames,
                slowdown=slowdown,
                last_reaction_ms=self._reaction_ms,
                expected_latency_ms=self._predict(self._level),
                ignored=self._ignored,
                priority=self._cfg.priority,
                previous_level=self._previous,
                level_since=self._since,
                level_since_frame=self._since_frame,
                last_window=last,
            )

    # ------------------------------------------------------------------ internals

    def _check_budget(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConstraintError(f"latency budget {value!r} is not a number; give milliseconds, e.g. 50.0")
        budget = float(value)
        if not math.isfinite(budget) or budget <= 0.0:
            raise ConstraintError(
                f"latency budget {budget} ms is not usable; give a positive, finite number of milliseconds"
            )
        if budget > self._cfg.max_budget_ms:
            raise ConstraintError(
                f"latency budget {budget:g} ms exceeds max_budget_ms={self._cfg.max_budget_ms:g}; "
                "check the unit (milliseconds) or raise max_budget_ms"
            )
        return budget

    def _reported_mode(self) -> str:
        if self._manual:
            return "manual"
        if self._mode == "lut" or (self._mode == "auto" and not self._closed_loop):
            return "lut"
        return "reactive"

    def _lower_bound(self) -> int:
        """The lowest level the automatic modes may use (the accuracy floor under priority=accuracy)."""
        if self._cfg.priority == "accuracy":
            return min(self._floor, self._n)
        return 1

    def _predict(self, level: int) -> float:
        """Predicted window statistic (ms) of ``level`` from the latest window, else its profiled latency."""
        profiled = self._lat[level - 1]
        est = self._est
        if est is None:
            return profiled
        slow, over, slow_recent, over_recent = est
        return max(profiled * slow + over, profiled * slow_recent + over_recent)

    def _highest_fitting(self, predict: Callable[[int], float], threshold: float) -> int:
        best = 1
        for level in range(self._n, 0, -1):
            if predict(level) <= threshold:
                best = level
                break
        return max(best, self._lower_bound())

    def _lut_choice(self) -> int:
        if self._budget is None:
            return self._n
        return self._highest_fitting(lambda level: self._lat[level - 1], self._budget)

    def _choice(self) -> int:
        """The level a request selects now, by the automatic mode in force."""
        if self._manual:
            return self._manual
        lut = self._lut_choice()
        if self._budget is None or self._est is None or self._mode == "lut":
            return lut
        predicted = self._highest_fitting(self._predict, self._cfg.down_margin * self._budget)
        return predicted if self._mode == "reactive" else min(lut, predicted)

    def _unmet_for(self, level: int) -> str:
        latency = self._budget is not None and self._predict(level) > self._budget
        accuracy = self._acc[level - 1] < self._min_acc
        if latency and accuracy:
            return "both"
        return "latency" if latency else ("accuracy" if accuracy else "")

    def _clear_window(self) -> None:
        self._win_lat.clear()
        self._win_inf.clear()
        self._win_over_frame = -1

    def _restart(self, reason: str) -> Decision:
        """After a request: restart measurement and hysteresis, re-choose the level now."""
        self._closed_loop = False
        self._slack = 0
        self._pending_frame = -1
        self._clear_window()
        return self._move(self._choice(), reason)

    def _move(self, target: int, reason: str) -> Decision:
        previous = self._level
        switched = target != previous
        if switched:
            self._previous = previous
            self._level = target
            self._since = float(self._clock())
            self._since_frame = self._frames
            self._switches += 1
            self._slack = 0
            self._clear_window()
        self._unmet = self._unmet_for(target)
        return Decision(
            level=target,
            previous_level=previous,
            switched=switched,
            mode=self._reported_mode(),
            unmet=self._unmet,
            reason=reason,
        )

    def _violation_certain(self, budget: float) -> bool:
        """Whether the open window violates ``budget`` whatever its remaining frames measure."""
        if not self._cfg.early_verdict or self._frames - self._since_frame < self._window_size:
            return False
        win = self._win_lat
        missing = self._window_size - len(win)
        if self._use_p95:  # the lowest the full window's p95 can be: the missing frames at 0 ms
            return percentile([*win, *([0.0] * missing)], 95.0) > budget
        return sum(win) > budget * self._window_size

    def _window_boundary(self) -> Decision | None:
        lat = self._win_lat
        inf = self._win_inf
        n = len(lat)
        level = self._level
        profiled = self._lat[level - 1]
        mean = sum(lat) / n
        p95 = percentile(lat, 95.0)
        statistic = p95 if self._use_p95 else mean
        slow, over = estimate(statistic, inf, profiled, self._use_p95)
        half = (n + 1) // 2
        recent_lat = lat[n - half :]
        recent_stat = window_statistic(recent_lat, self._use_p95)
        slow_recent, over_recent = estimate(recent_stat, inf[n - half :], profiled, self._use_p95)
        self._est = (slow, over, slow_recent, over_recent)
        budget = self._budget
        violated = budget is not None and statistic > budget
        now = float(self._clock())
        self._last_window = WindowSummary(
            level=level,
            frames=n,
            first_frame=self._win_first,
            mean_ms=mean,
            p95_ms=p95,
            statistic_ms=statistic,
            violated=violated,
            slowdown=slow,
            overhead_ms=over,
            start=self._win_t0,
            end=now,
        )
        if violated:
            if self._pending_frame < 0:
                if self._win_over_frame >= 0:
                    self._pending_frame, self._pending_t = self._win_over_frame, self._win_over_t
                else:  # the mean is over budget although no single frame is (cannot happen; be safe)
                    self._pending_frame, self._pending_t = self._win_first, self._win_t0
        elif budget is not None and self._pending_frame >= 0:
            self._reaction_frames = self._win_first - self._pending_frame
            self._reaction_ms = (self._win_t0 - self._pending_t) * 1000.0
            self._pending_frame = -1
        self._clear_window()

        # Without a budget the own rule has nothing to react to, but a coordinator may still
        # move this model for its peers' sake.
        if self._manual or self._mode == "lut" or (budget is None and self._policy is None):
            self._unmet = self._unmet_for(level)
            return None
        target: int | None = None
        reason = "coordinator"
        if self._policy is not None:
            target = self._policy(self)
            if target is not None:
                target = operator.index(target)
                if not 1 <= target <= self._n:
                    raise UnknownLevelError(
                        f"the window policy chose level {target}, outside 1..{self._n}; fix the coordinator"
                    )
                self._slack = 0
        if target is None:
            if budget is None:
                self._unmet = self._unmet_for(level)
                return None
            target, reason = self._reactive_rule(violated, budget)
        if target == level:
            self._unmet = self._unmet_for(level)
            return None
        self._closed_loop = True
        return self._move(target, reason)

    def _reactive_rule(self, violated: bool, budget: float) -> tuple[int, str]:
        level = self._level
        bound = self._lower_bound()
        if level < bound:  # only reachable through a coordinator; climb back to the floor
            self._slack = 0
            return bound, "slack"
        if violated:
            self._slack = 0
            target = self._highest_fitting(self._predict, self._cfg.down_margin * budget)
            return min(target, level), "violation"
        if level < self._n and self._predict(level + 1) <= self._up_threshold(level + 1, budget):
            self._slack += 1
            if self._slack >= self._cfg.up_windows:
                self._slack = 0
                return level + 1, "slack"
        else:
            self._slack = 0
        return level, "slack"

    def _up_threshold(self, level: int, budget: float) -> float:
        """Largest predicted latency that allows a step up to ``level``.

        ``up_margin`` x budget, except in ``auto`` mode for levels up to the LUT choice
        (the level the model would run alone): those only need to fit like a step-down
        target (``down_margin`` x budget), so that the model returns to the LUT choice
        once a co-located load has gone.
        """
        if self._mode == "auto" and level <= self._lut_choice():
            return self._cfg.down_margin * budget
        return self._cfg.up_margin * budget

    def _notify(self, decision: Decision) -> None:
        if decision.switched and self._on_switch is not None:
            self._on_switch(decision)


def _check_accuracy(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConstraintError(f"min_accuracy {value!r} is not a number; give a top-1 percentage in [0, 100]")
    accuracy = float(value)
    if not 0.0 <= accuracy <= 100.0:  # also rejects NaN
        raise ConstraintError(
            f"min_accuracy {accuracy} is outside [0, 100]; give a top-1 percentage (0 = no accuracy floor)"
        )
    return accuracy
