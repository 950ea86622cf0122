"""One object for the whole runtime: engine + manager + optional coordinator.

:class:`DynamicClassifier` is what every front end drives -- the ROS node, ``dofa-bench``, the
demo and the paper's experiments -- so they all run the same frame loop: classify a frame with
the level the manager chose, feed the measured latency back, and run the level the manager
returns for the next frame. It imports no rclpy; the node only translates ROS messages,
parameters and services into these calls.

The manager is the one owner of the current level: :meth:`DynamicClassifier.classify` asks it
which level to run and passes that level to the engine explicitly, so there is no second copy
that could disagree. Switching is therefore a reference lookup on the next frame, as in the
paper (Fig. 2, "runtime").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from dynamic_ofa_ros.coordinator import MAX_LEVELS, Coordinator, PeerStatus
from dynamic_ofa_ros.engine import LevelEngine, topk
from dynamic_ofa_ros.errors import ConstraintError
from dynamic_ofa_ros.levels import LevelTable
from dynamic_ofa_ros.manager import (
    Decision,
    LevelSpec,
    ManagerConfig,
    ManagerState,
    RuntimeManager,
    level_specs,
)
from dynamic_ofa_ros.supernet import Supernet, SupernetSource

if TYPE_CHECKING:  # frames may be tensors where torch is in use; this module never imports it
    import torch

__all__ = ["Classification", "ClassifierConfig", "DynamicClassifier"]


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """How :meth:`DynamicClassifier.from_table` builds the runtime.

    Attributes:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (resolve ``"auto"`` with
            :func:`dynamic_ofa_ros.paths.resolve_device` first).
        threads: CPU threads; ``None`` = as the table was profiled.
        backend: ``auto`` (the backend the table was profiled in), ``openvino``,
            ``onnxruntime`` or ``torch``; see :mod:`dynamic_ofa_ros.backends`.
        preprocessing: how a compiled level's input is made on the CPU: ``auto`` (torch's
            uint8 kernel when torch is already loaded, else NumPy), ``numpy`` or ``torch``
            (byte-identical inputs; torch's kernel is faster on large frames but loads PyTorch).
        max_image_pixels: frames larger than this are refused before any work.
        check_table_device: refuse a table profiled on another device kind. When ``False``
            such a table runs, but only in ``reactive`` mode (its latencies do not apply).
        manager: the runtime manager's settings (mode, window, margins).
        coordination_group: non-empty = coordinate with the peers of this group.
        coordination_timeout_s: a peer not heard from for this long is forgotten.
        coordination_max_peers: at most this many peers are remembered and planned with; statuses
            of further new peers are ignored and counted (a flood of invented names costs nothing).
        top_k: default number of classes in :attr:`Classification.top`.
    """

    device: str = "cpu"
    threads: int | None = None
    backend: str = "auto"
    preprocessing: str = "auto"
    max_image_pixels: int = 40_000_000
    check_table_device: bool = True
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    coordination_group: str = ""
    coordination_timeout_s: float = 2.0
    coordination_max_peers: int = 16
    top_k: int = 5


@dataclass(frozen=True)
class Classification:
    """One classified frame.

    Attributes:
        level: the level that ran.
        probs: class probabilities, shape ``(n_classes,)``.
        top: the ``top_k`` most probable classes as ``(class index, probability)``.
        inference_ms: preprocessing + model (the engine's own time).
        latency_ms: what the manager observed (end to end; see :meth:`DynamicClassifier.classify`).
        expected_accuracy: the table's top-1 (%) of the level that ran.
        next_level: the level the manager chose for the next frame.
    """

    level: int
    probs: np.ndarray
    top: tuple[tuple[int, float], ...]
    inference_ms: float
    latency_ms: float
    expected_accuracy: float
    next_level: int


class DynamicClassifier:
    """Classify frames within a latency budget by switching between the levels of a table.

    Args:
        engine: every level materialised (see :class:`~dynamic_ofa_ros.engine.LevelEngine`).
        manager_config: the runtime manager's settings (default :class:`ManagerConfig`).
        levels: the levels as the manager sees them; default: the engine's table. Pass
            measured latencies here to drive the look-up with them (the experiments do).
        name: this model's name among coordination peers (the node's full name).
        coordinator: plans levels with peers at each window boundary; ``None`` = alone.
        group: the coordination group (with ``coordinator``).
        publish: called with this model's status at each window boundary (coordination).
        clock: seconds, monotonic; the manager's and coordinator's clock.
        frame_clock: the clock of ``captured_at`` in :meth:`classify`; default ``clock``.
        on_switch: called after every level change (any cause), outside the manager's lock.
        top_k: default number of classes in :attr:`Classification.top`.

    All methods are thread-safe: one thread may classify while others set constraints,
    read the status or hand over peer statuses.
    """

    def __init__(
        self,
        engine: LevelEngine,
        *,
        manager_config: ManagerConfig | None = None,
        levels: Sequence[LevelSpec] | None = None,
        name: str = "dynamic_ofa",
        coordinator: Coordinator | None = None,
        group: str = "",
        publish: Callable[[PeerStatus], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        frame_clock: Callable[[], float] | None = None,
        on_switch: Callable[[Decision], None] | None = None,
        top_k: int = 5,
    ) -> None:
        specs = tuple(levels) if levels is not None else level_specs(engine.table)
        engine_levels = sorted(level.level for level in engine.levels)
        if [spec.level for spec in specs] != engine_levels:
            raise ConstraintError(
                f"levels {[spec.level for spec in specs]} do not match the engine's {engine_levels}; "
                "give one LevelSpec per level of the table"
            )
        self._check_top_k(top_k)
        self._engine = engine
        self._name = name
        self._group = group
        self._clock = clock
        self._frame_clock = frame_clock if frame_clock is not None else clock
        self._top_k = top_k
        self._coordinator = coordinator
        self._publish = publish
        self._manager = RuntimeManager(specs, manager_config, clock=clock, on_switch=on_switch)
        self._accuracy = {spec.level: spec.accuracy for spec in specs}
        if coordinator is not None:
            self._manager.set_window_policy(self._coordination_policy)

    @classmethod
    def from_table(
        cls,
        supernet: Supernet | SupernetSource,
        table: LevelTable,
        config: ClassifierConfig | None = None,
        *,
        name: str = "dynamic_ofa",
        levels: Sequence[LevelSpec] | None = None,
        publish: Callable[[PeerStatus], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        frame_clock: Callable[[], float] | None = None,
        on_switch: Callable[[Decision], None] | None = None,
    ) -> DynamicClassifier:
        """Build the engine, manager and (with a group) coordinator for ``table``.

        ``supernet`` may be a :class:`~dynamic_ofa_ros.supernet.SupernetSource` (from
        :func:`~dynamic_ofa_ros.supernet.open_supernet`): compiled levels found in the cache then
        never load its weights, and torch is not imported.

        Raises:
            LevelTableError: the table does not fit the super-network or the device.
            ConstraintError: ``mode="lut"`` with a table profiled on another device kind.
        """
        cfg = config if config is not None else ClassifierConfig()
        manager_config = cfg.manager
        warnings: list[str] = []
        table_kind, device_kind = table.device.split(":")[0], cfg.device.split(":")[0]
        if table_kind != device_kind and not cfg.check_table_device:
            # Only measured latencies (reactive mode) can drive levels profiled elsewhere.
            if manager_config.mode == "lut":
                raise ConstraintError(
                    f"mode 'lut' needs latencies of this device, but {table.path or 'the table'} was "
                    f"profiled on {table.device!r}; use mode 'reactive' or a table built here"
                )
            manager_config = _with_mode(manager_config, "reactive")
            warnings.append(
                f"level table {table.path or ''} was profiled on {table.device!r} ({table.device_name}), "
                f"not on {cfg.device!r}: its latencies do not apply here, running in reactive mode"
            )
        engine = LevelEngine(
            supernet,
            table,
            device=cfg.device,
            threads=cfg.threads,
            max_pixels=cfg.max_image_pixels,
            check_device=cfg.check_table_device,
            initial_level=table.levels[-1].level,
            backend=cfg.backend,
            preprocessing=cfg.preprocessing,
        )
        warnings.extend(engine.warnings)
        if not engine.meaningful_accuracy:
            warnings.append(
                f"model {supernet.source!r} has random weights: predictions and accuracies are meaningless"
            )
        coordinator = None
        if cfg.coordination_group:
            if len(table.levels) > MAX_LEVELS:
                raise ConstraintError(
                    f"coordination needs a table of at most {MAX_LEVELS} levels (the planner's bound), "
                    f"{table.path or 'this table'} has {len(table.levels)}; pick fewer levels or run alone"
                )
            coordinator = Coordinator(
                name,
                timeout_s=cfg.coordination_timeout_s,
                clock=clock,
                margin=manager_config.up_margin,
                down_margin=manager_config.down_margin,
                up_windows=manager_config.up_windows,
                max_peers=cfg.coordination_max_peers,
            )
        classifier = cls(
            engine,
            manager_config=manager_config,
            levels=levels,
            name=name,
            coordinator=coordinator,
            group=cfg.coordination_group,
            publish=publish,
            clock=clock,
            frame_clock=frame_clock,
            on_switch=on_switch,
            top_k=cfg.top_k,
        )
        classifier.warnings = tuple(warnings)
        return classifier

    #: Things the user should know about this set-up (another device's table, random weights).
    warnings: tuple[str, ...] = ()

    # ------------------------------------------------------------------------------ properties

    @property
    def engine(self) -> LevelEngine:
        """The engine that runs the levels."""
        return self._engine

    @property
    def manager(self) -> RuntimeManager:
        """The runtime manager (the owner of the current level)."""
        return self._manager

    @property
    def coordinator(self) -> Coordinator | None:
        """The coordinator, when this model coordinates with peers."""
        return self._coordinator

    @property
    def table(self) -> LevelTable:
        """The level table the engine runs."""
        return self._engine.table

    @property
    def levels(self) -> tuple[LevelSpec, ...]:
        """The levels as the manager sees them, level 1 first."""
        return self._manager.levels

    @property
    def current_level(self) -> int:
        """The level the next frame runs at."""
        return self._manager.current_level

    @property
    def name(self) -> str:
        """This model's name among coordination peers."""
        return self._name

    @property
    def group(self) -> str:
        """The coordination group (``""`` = alone)."""
        return self._group

    @property
    def top_k(self) -> int:
        """Default number of classes in :attr:`Classification.top`."""
        return self._top_k

    @top_k.setter
    def top_k(self, value: int) -> None:
        self._check_top_k(value)
        self._top_k = value

    # ------------------------------------------------------------------------------ frames

    def classify(
        self, rgb: np.ndarray | torch.Tensor, *, captured_at: float | None = None, top_k: int | None = None
    ) -> Classification:
        """Classify one (H, W, 3) uint8 RGB frame and let the manager choose the next level.

        Args:
            rgb: the frame.
            captured_at: when the frame was captured, in ``frame_clock`` seconds. The latency the
                manager observes is ``frame_clock() - captured_at`` once the result is ready
                (end to end, as the paper's budget); without it, this call's own duration.
            top_k: classes in :attr:`Classification.top` (default: the classifier's).

        Raises:
            ImageError: the frame is not a usable image (nothing is observed then).
        """
        k = self._top_k if top_k is None else top_k
        started = time.perf_counter()
        result = self._engine.infer(rgb, level=self._manager.current_level)
        if captured_at is None:
            latency = (time.perf_counter() - started) * 1000.0
        else:
            latency = (self._frame_clock() - captured_at) * 1000.0
        next_level = self._manager.observe(latency, inference_ms=result.inference_ms)
        return Classification(
            level=result.level,
            probs=result.probs,
            top=tuple(topk(result.probs, k)),
            inference_ms=result.inference_ms,
            latency_ms=latency,
            expected_accuracy=self._accuracy[result.level],
            next_level=next_level,
        )

    # ------------------------------------------------------------------------------ requests

    def set_constraints(
        self, *, latency_budget_ms: float | None, min_accuracy: float | None = None
    ) -> Decision:
        """Set or clear (``None``) the latency budget (ms) and the accuracy floor (top-1 %).

        Validated by the manager; raises :class:`ConstraintError` with nothing changed.
        """
        return self._manager.set_constraints(latency_budget_ms=latency_budget_ms, min_accuracy=min_accuracy)

    def set_level(self, level: int) -> Decision:
        """Lock ``level`` (1..N) for every following frame, or return to automatic with 0."""
        return self._manager.set_manual_level(level)

    def set_mode(self, mode: str) -> Decision:
        """Switch the automatic mode: ``auto``, ``lut`` or ``reactive``."""
        return self._manager.set_mode(mode)

    def status(self) -> ManagerState:
        """A consistent snapshot of the manager (level, constraints, window, counters)."""
        return self._manager.status()

    # ------------------------------------------------------------------------------ coordination

    def update_peer(self, peer: PeerStatus) -> bool:
        """Hand over a peer's status; ``False`` when it is ignored (own status, or alone)."""
        if self._coordinator is None or peer.group != self._group:
            return False
        return self._coordinator.update(peer)

    def reject_peer(self) -> None:
        """Count a peer status the front end could not parse or validate (see :meth:`peer_counts`)."""
        if self._coordinator is not None:
            self._coordinator.count_rejected()

    def peer_counts(self) -> tuple[int, int]:
        """``(ignored, rejected)`` peer statuses: beyond ``max_peers``, and invalid ones."""
        if self._coordinator is None:
            return 0, 0
        return self._coordinator.ignored, self._coordinator.rejected

    def peer_status(self, *, stamp: float | None = None) -> PeerStatus:
        """This model's status as its peers need it (window measured at the current level)."""
        return PeerStatus.from_manager(self._manager, name=self._name, group=self._group, stamp=stamp)

    def peer_names(self) -> list[str]:
        """Names of the live peers of this model's group."""
        if self._coordinator is None:
            return []
        return [peer.name for peer in self._coordinator.peers(self._group)]

    def _coordination_policy(self, manager: RuntimeManager) -> int | None:
        """Window policy: the coordinator's plan when peers are alive, else the manager's own rule."""
        coordinator = self._coordinator
        if coordinator is None:
            return None
        own = PeerStatus.from_manager(manager, name=self._name, group=self._group)
        if self._publish is not None:
            self._publish(own)
        # The coordinator's lock is held only to snapshot the peers; the plan itself runs on the
        # snapshot, bounded by max_peers (<= 1 ms for 16 peers, docs/manager.md).
        return coordinator.decide(own)

    @staticmethod
    def _check_top_k(value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConstraintError(f"top_k={value!r} must be an integer >= 1")


def _with_mode(config: ManagerConfig, mode: str) -> ManagerConfig:
    return replace(config, mode=mode)
