"""DynamicClassifier round trip per backend: the object every front end drives, built from config."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from dynamic_ofa_ros.backends import installed
from dynamic_ofa_ros.classifier import ClassifierConfig, DynamicClassifier
from dynamic_ofa_ros.levels import LevelTable
from dynamic_ofa_ros.manager import LevelSpec, ManagerConfig
from dynamic_ofa_ros.supernet import Supernet

Relabel = Callable[[LevelTable, str], LevelTable]
#: random weights have no accuracy: placeholders for the manager (its choices are not checked here)
SPECS = (
    LevelSpec(level=1, latency_ms=10.0, accuracy=70.0),
    LevelSpec(level=2, latency_ms=20.0, accuracy=75.0),
)


@pytest.mark.parametrize("backend", ["torch", "openvino", "onnxruntime"])
def test_round_trip(rand: Supernet, table: LevelTable, backend: str, for_backend: Relabel) -> None:
    if not installed(backend):
        pytest.skip(f"{backend} is not installed")
    labelled = for_backend(table, backend)
    config = ClassifierConfig(threads=1, backend=backend, manager=ManagerConfig(window_size=2))
    classifier = DynamicClassifier.from_table(rand, labelled, config, levels=SPECS)
    assert classifier.engine.backend == backend and classifier.warnings[-1].startswith("model 'random")
    frame = np.random.default_rng(4).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    first = classifier.classify(frame)
    assert first.level == 2 and len(first.top) == 5 and first.inference_ms > 0  # starts at the top level
    classifier.set_level(1)
    locked = [classifier.classify(frame) for _ in range(3)]
    assert {c.level for c in locked} == {1} and classifier.status().level == 1
    np.testing.assert_allclose(locked[0].probs, locked[1].probs, atol=1e-6)
    classifier.set_level(0)
    classifier.set_constraints(latency_budget_ms=None)
    assert classifier.classify(frame).probs.shape == first.probs.shape
    # "auto" runs the table's backend
    auto = DynamicClassifier.from_table(rand, labelled, ClassifierConfig(threads=1), levels=SPECS)
    assert auto.engine.backend == backend
