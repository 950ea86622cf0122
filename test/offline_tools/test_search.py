"""Tests of offline_tools.search: Algorithm 1, evolution, anchors, the whole search, determinism, errors."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from dynamic_ofa_ros.arch import SearchSpace, SubnetConfig
from offline_tools.accuracy import MLPAccuracyPredictor
from offline_tools.errors import SearchError
from offline_tools.latency.table import LatencyTable
from offline_tools.pareto import Candidate
from offline_tools.search import (
    Evaluator,
    LatencySource,
    SearchSettings,
    accuracy_constrained_random_search,
    crossover,
    find_extremes,
    mutate,
    regularized_evolution,
    search_family,
)

torch.set_num_threads(1)

SPACE = SearchSpace(resolutions=(160, 176, 192, 208, 224))
FAST = SearchSettings(itr_max=400, itr_n=50, population=24, generations=5, targets=4, seed=0)


@pytest.fixture(scope="module")
def predictor(shared_dir: Path) -> MLPAccuracyPredictor:
    path = shared_dir / "ofa" / "acc_predictor.pth"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return MLPAccuracyPredictor.load(path)


@pytest.fixture(scope="module")
def gpu_table(shared_dir: Path) -> LatencyTable:
    path = shared_dir / "ofa" / "latency_tables" / "jetson_xavier_nx_gpu"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return LatencyTable.load(path, resolutions=SPACE.resolutions)


class CountingLatency:
    """A latency source that counts the networks it is asked about."""

    def __init__(self, inner: LatencySource) -> None:
        self.inner = inner
        self.keys: list[str] = []

    def predict(self, cfg: SubnetConfig) -> float:
        self.keys.append(cfg.key())
        return self.inner.predict(cfg)


def test_mutation_and_crossover_stay_in_space() -> None:
    rng = random.Random(3)
    a, b = SPACE.sample(rng), SPACE.sample(rng)
    for _ in range(50):
        SPACE.check(mutate(a, SPACE, rng, 0.3))
        child = crossover(a, b, rng)
        SPACE.check(child)
        assert child.resolution in (a.resolution, b.resolution)


# ----------------------------------------------------------------------------------- Algorithm 1


def test_algorithm1_accepts_only_constrained_architectures(
    predictor: MLPAccuracyPredictor, gpu_table: LatencyTable
) -> None:
    ev = Evaluator(predictor, gpu_table)
    run, found = accuracy_constrained_random_search(
        SPACE,
        ev,
        acc_max=82.0,
        acc_r=1.0,
        lat_init=18.0,
        lat_add=1.0,
        lat_max=26.0,
        itr_n=50,
        itr_max=600,
        population=16,
        rng=random.Random(0),
    )
    assert found and run.found == len(found) <= 16
    assert all(81.0 <= c.accuracy <= 82.0 and c.latency_ms < run.lat_c for c in found)
    assert 18.0 <= run.lat_c <= 26.0
    assert len({c.key for c in found}) == len(found)
    final = regularized_evolution(
        SPACE,
        ev,
        found,
        lat_c=run.lat_c,
        generations=4,
        population=16,
        mutation_prob=0.1,
        parent_ratio=0.25,
        mutation_ratio=0.5,
        rng=random.Random(1),
    )
    assert all(c.latency_ms <= run.lat_c for c in final)
    assert max(c.accuracy for c in final) >= max(c.accuracy for c in found)


def test_evaluator_never_evaluates_a_network_twice(
    predictor: MLPAccuracyPredictor, gpu_table: LatencyTable
) -> None:
    lat = CountingLatency(gpu_table)
    ev = Evaluator(predictor, lat)
    rng = random.Random(5)
    cfgs = [SPACE.sample(rng) for _ in range(20)]
    ev.evaluate(cfgs + cfgs)
    ev.evaluate([c.canonical() for c in cfgs])
    assert len(lat.keys) == len(set(lat.keys)) == len({c.key() for c in cfgs})
    assert ev.accuracy_evaluations == len(lat.keys)


def test_extremes_anchor_the_sweep(predictor: MLPAccuracyPredictor, gpu_table: LatencyTable) -> None:
    ev = Evaluator(predictor, gpu_table)
    fastest, slowest, top = find_extremes(SPACE, ev)
    rng = random.Random(0)
    sample = ev.evaluate([SPACE.sample(rng) for _ in range(500)])
    assert fastest.latency_ms <= min(c.latency_ms for c in sample) + 1e-9
    assert top.accuracy >= max(c.accuracy for c in sample)
    assert slowest.latency_ms > fastest.latency_ms


# ----------------------------------------------------------------------------------- whole search


def family(result_levels: Sequence[Candidate]) -> list[tuple[str, float, float]]:
    return [(c.key, round(c.accuracy, 6), round(c.latency_ms, 6)) for c in result_levels]


def test_search_is_deterministic_per_seed(predictor: MLPAccuracyPredictor, gpu_table: LatencyTable) -> None:
    space = SearchSpace(resolutions=(176, 224))
    first = search_family(space, predictor, gpu_table, FAST, n_levels=5, progress=False)
    again = search_family(space, predictor, gpu_table, FAST, n_levels=5, progress=False)
    assert family(first.levels) == family(again.levels)
    assert len(first.candidates) == len(again.candidates)
    other = search_family(
        space,
        predictor,
        gpu_table,
        SearchSettings(**{**FAST.to_dict(), "seed": 7}),
        n_levels=5,
        progress=False,
    )
    assert [c.key for c in other.candidates] != [c.key for c in first.candidates]
    levels = first.levels
    assert 2 <= len(levels) <= 5
    for a, b in zip(levels, levels[1:], strict=False):
        assert b.latency_ms > a.latency_ms and b.accuracy - a.accuracy >= 1.0 - 1e-9
    assert {c.key for c in first.front} <= {c.key for c in first.candidates}
    assert first.summary()["candidates"] == len(first.candidates)


def test_infeasible_constraints_raise_with_closest(
    predictor: MLPAccuracyPredictor, gpu_table: LatencyTable
) -> None:
    impossible = SearchSettings(**{**FAST.to_dict(), "acc_max": 99.0, "acc_r": 0.5})
    with pytest.raises(SearchError, match="closest found") as info:
        search_family(SPACE, predictor, gpu_table, impossible, progress=False)
    assert "relax" in str(info.value)
    too_fast = SearchSettings(**{**FAST.to_dict(), "lat_max": 1.0})
    with pytest.raises(SearchError, match="fastest architecture"):
        search_family(SPACE, predictor, gpu_table, too_fast, progress=False)
    with pytest.raises(SearchError, match="itr_max"):
        SearchSettings(itr_n=100, itr_max=10)
    assert math.isfinite(FAST.acc_r)
