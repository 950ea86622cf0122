"""Accuracy parity on real photos: the embedded model's shipped levels, torch vs each compiled backend.

Levels 1 and N of ``config/levels/cpu.json`` (the fastest and the most accurate), 32 Imagenette
validation photos: every photo's top-1 is the same and the probabilities agree closely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from dynamic_ofa_ros import embedded
from dynamic_ofa_ros.engine import LevelEngine
from dynamic_ofa_ros.levels import LevelTable, load_level_table
from dynamic_ofa_ros.paths import default_level_table
from dynamic_ofa_ros.supernet import Supernet, load_supernet

Relabel = Callable[[LevelTable, str], LevelTable]


@pytest.fixture(scope="module")
def model() -> Supernet:
    if not (embedded.EMBEDDED_DIR / embedded.MANIFEST_NAME).exists():
        pytest.skip("the embedded model is not in this checkout")
    return load_supernet("embedded")


@pytest.fixture(scope="module")
def ends(model: Supernet) -> LevelTable:
    """The shipped CPU table cut to its first and last level (renumbered 1, 2)."""
    table = load_level_table(default_level_table("cpu"), supernet=model)
    assert table.bn is not None
    picked = [table.levels[0], table.levels[-1]]
    return dataclasses.replace(
        table,
        levels=[dataclasses.replace(lv, level=i + 1) for i, lv in enumerate(picked)],
        bn={i + 1: table.bn[lv.level] for i, lv in enumerate(picked)},
    )


@pytest.fixture(scope="module")
def reference(model: Supernet, ends: LevelTable, photos: list[np.ndarray]) -> dict[int, np.ndarray]:
    engine = LevelEngine(model, ends, threads=1, warmup=0)
    return {lv.level: engine.infer_batch(photos, level=lv.level) for lv in ends.levels}


@pytest.mark.slow
def test_backend_matches_torch_on_real_photos(
    model: Supernet,
    ends: LevelTable,
    photos: list[np.ndarray],
    reference: dict[int, np.ndarray],
    compiled_backend: str,
    for_backend: Relabel,
) -> None:
    engine = LevelEngine(model, for_backend(ends, compiled_backend), threads=1, warmup=0)
    assert engine.backend == compiled_backend
    for lv in ends.levels:
        probs = engine.infer_batch(photos, level=lv.level)
        want = reference[lv.level]
        assert probs.shape == want.shape == (len(photos), want.shape[1])
        np.testing.assert_array_equal(probs.argmax(axis=1), want.argmax(axis=1))
        assert float(np.abs(probs - want).max()) < 1e-4
        single = [engine.infer(photo, level=lv.level).probs for photo in photos[:4]]
        np.testing.assert_allclose(np.stack(single), probs[:4], atol=1e-6)
