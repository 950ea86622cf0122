"""Tests of offline_tools.accuracy: OFA predictor, fitted predictors, measured accuracy, cache."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SearchSpace, SubnetConfig
from offline_tools.accuracy import (
    OFA_PREDICTOR_URL,
    AccuracySource,
    CachedAccuracy,
    MeasuredAccuracy,
    MLPAccuracyPredictor,
    PredictorEncoding,
    fit_mlp_predictor,
    load_accuracy_records,
    parse_accuracy_records,
    rank_correlation,
)
from offline_tools.errors import AccuracyPredictorError, DatasetError

torch.set_num_threads(1)

OFA_SPACE = SearchSpace(resolutions=(160, 176, 192, 208, 224))
EMBEDDED_SPACE = SearchSpace(resolutions=(96, 112, 128, 144, 160))


def uniform(resolution: int, ks: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=resolution, ks=(ks,) * N_BLOCKS, e=(e,) * N_BLOCKS, d=(d,) * N_STAGES)


@pytest.fixture(scope="module")
def ofa_predictor(shared_dir: Path) -> MLPAccuracyPredictor:
    path = shared_dir / "ofa" / "acc_predictor.pth"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return MLPAccuracyPredictor.load(path)


class CountingSource:
    """Wraps a source and counts how often each network is evaluated."""

    def __init__(self, inner: AccuracySource) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}

    @property
    def measured(self) -> bool:
        return self.inner.measured

    @property
    def dataset(self) -> str:
        return self.inner.dataset

    def predict(self, cfgs: Sequence[SubnetConfig]) -> list[float]:
        for cfg in cfgs:
            self.calls[cfg.key()] = self.calls.get(cfg.key(), 0) + 1
        return self.inner.predict(cfgs)


# ----------------------------------------------------------------------------------- encoding


def test_encoding_matches_ofa_layout() -> None:
    enc = PredictorEncoding()
    assert enc.n_inputs == 128
    cfg = SubnetConfig(
        resolution=176,
        ks=(3, 5, 7, 7) + (5,) * 16,
        e=(4, 6, 3, 3) + (6,) * 16,
        d=(2, 4, 3, 2, 4),
    )
    x = enc.encode([cfg])[0]
    active = list(cfg.active_blocks())
    assert x.sum() == 2 * len(active) + 1
    # block 0: kernel 3 -> slot 0, expand 4 -> slot 1; block 1: kernel 5 -> 1, expand 6 -> 2
    assert x[0 * 3 + 0] == 1 and x[60 + 0 * 3 + 1] == 1
    assert x[1 * 3 + 1] == 1 and x[60 + 1 * 3 + 2] == 1
    # blocks 2 and 3 are skipped (stage depth 2): all zero
    assert x[6:12].sum() == 0 and x[66:72].sum() == 0
    assert x[120 + (176 - 112) // 16] == 1
    with pytest.raises(AccuracyPredictorError, match="outside"):
        enc.encode([uniform(96, 3, 3, 2)])
    assert enc.grid() == (112, 128, 144, 160, 176, 192, 208, 224)


def test_ofa_predictor_loads_and_ranks_sensibly(ofa_predictor: MLPAccuracyPredictor) -> None:
    small, large = ofa_predictor.predict([OFA_SPACE.smallest(), OFA_SPACE.largest()])
    assert 70.0 < small < large < 90.0
    rng = random.Random(0)
    cfgs = [OFA_SPACE.sample(rng) for _ in range(200)]
    batch = ofa_predictor.predict(cfgs)
    single = [ofa_predictor.predict([c])[0] for c in cfgs[:5]]
    assert batch[:5] == pytest.approx(single, abs=1e-4)
    assert ofa_predictor.describe()["architecture"] == "128→400→400→400→1"
    assert ofa_predictor.supported_resolutions(range(160, 225, 4)) == (160, 176, 192, 208, 224)
    assert OFA_PREDICTOR_URL.startswith("https://") and OFA_PREDICTOR_URL.endswith("acc_predictor.pth")
    assert isinstance(ofa_predictor, AccuracySource) and not ofa_predictor.measured


def test_wrong_predictor_shape_is_rejected(tmp_path: Path) -> None:
    state = {
        "0.weight": torch.zeros(400, 127),
        "0.bias": torch.zeros(400),
        "2.weight": torch.zeros(400, 400),
        "2.bias": torch.zeros(400),
        "4.weight": torch.zeros(400, 400),
        "4.bias": torch.zeros(400),
        "6.weight": torch.zeros(1, 400),
        "6.bias": torch.zeros(1),
    }
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(AccuracyPredictorError, match="128→400→400→400→1"):
        MLPAccuracyPredictor.load(bad)
    wrong_keys = tmp_path / "keys.pth"
    torch.save({"layer.weight": torch.zeros(3, 3)}, wrong_keys)
    with pytest.raises(AccuracyPredictorError, match="128→400→400→400→1"):
        MLPAccuracyPredictor.load(wrong_keys)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(AccuracyPredictorError, match="torch.load"):
        MLPAccuracyPredictor.load(garbage)
    with pytest.raises(AccuracyPredictorError, match="does not exist"):
        MLPAccuracyPredictor.load(tmp_path / "missing.pth")


# ----------------------------------------------------------------------------------- fitting


def synthetic_records(n: int, seed: int) -> list[dict[str, object]]:
    """Made-up 'measured' records on the embedded resolutions: a smooth function of the architecture."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        cfg = EMBEDDED_SPACE.sample(rng)
        active = list(cfg.active_blocks())
        score = (
            70.0
            + 0.09 * (cfg.resolution - 96)
            + 0.5 * len(active)
            + 0.25 * sum(cfg.e[b] for b in active) / len(active)
            + 0.15 * sum(cfg.ks[b] for b in active) / len(active)
            + rng.gauss(0.0, 0.2)
        )
        records.append({**cfg.to_dict(), "holdout_top1": round(min(score, 99.0), 2)})
    return records


def test_fit_predictor_reports_holdout_quality_and_round_trips(tmp_path: Path) -> None:
    records = synthetic_records(240, seed=1)
    kwargs = {
        "base_resolution": 96,
        "step": 16,
        "n_slots": 5,
        "seed": 3,
        "epochs": 25,
        "hidden": 64,
        "progress": False,
    }
    predictor = fit_mlp_predictor(records, **kwargs)  # type: ignore[arg-type]
    report = predictor.fit_report
    assert report is not None
    assert report["n_holdout"] == 48 and report["n_train"] == 192
    assert report["holdout_rank_correlation"] > 0.8
    assert 0.0 < report["holdout_rmse"] < 2.0
    assert predictor.encoding.n_inputs == 125
    assert predictor.supported_resolutions([88, 96, 104, 112, 160, 176]) == (96, 112, 160)
    again = fit_mlp_predictor(records, **kwargs)  # type: ignore[arg-type]
    cfgs = [EMBEDDED_SPACE.sample(random.Random(9)) for _ in range(20)]
    assert predictor.predict(cfgs) == pytest.approx(again.predict(cfgs), abs=1e-9)

    path = predictor.save(tmp_path / "fitted.safetensors")
    loaded = MLPAccuracyPredictor.load(path)
    assert loaded.predict(cfgs) == pytest.approx(predictor.predict(cfgs), abs=1e-5)
    assert loaded.encoding == predictor.encoding
    # clamped to the measured range: the search cannot climb into the MLP's extrapolation
    accs = [float(r["holdout_top1"]) for r in records]  # type: ignore[arg-type]
    assert loaded.output_range == predictor.output_range == (min(accs), max(accs))
    many = loaded.predict([EMBEDDED_SPACE.sample(random.Random(i)) for i in range(300)])
    assert min(accs) <= min(many) and max(many) <= max(accs)
    assert loaded.predict([EMBEDDED_SPACE.largest()])[0] <= max(accs)
    assert loaded.fit_report is not None
    assert loaded.fit_report["holdout_rmse"] == pytest.approx(report["holdout_rmse"])
    with pytest.raises(AccuracyPredictorError, match="outside"):
        loaded.predict([uniform(224, 3, 3, 2)])
    assert not list(tmp_path.glob("*.tmp"))


def test_records_are_validated(tmp_path: Path) -> None:
    good = synthetic_records(3, seed=2)
    file = tmp_path / "records.json"
    file.write_text(json.dumps({"format": "x", "subnets": good}), encoding="utf-8")  # train_supernet.py
    assert [c for c, _ in load_accuracy_records(file)] == [SubnetConfig.from_dict(r) for r in good]
    file.write_text(json.dumps({"records": good}), encoding="utf-8")
    assert len(load_accuracy_records(file)) == 3
    file.write_text(json.dumps({"other": good}), encoding="utf-8")
    with pytest.raises(AccuracyPredictorError, match="list of records"):
        load_accuracy_records(file)
    fractions = [{**r, "holdout_top1": 0.8} for r in good]
    with pytest.raises(AccuracyPredictorError, match="percent"):
        parse_accuracy_records(fractions)
    with pytest.raises(AccuracyPredictorError, match="holdout_top1"):
        parse_accuracy_records([{k: v for k, v in good[0].items() if k != "holdout_top1"}])
    with pytest.raises(AccuracyPredictorError, match="at least 10"):
        fit_mlp_predictor(good, base_resolution=96, step=16, n_slots=5, progress=False)


def test_rank_correlation() -> None:
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    # offline_tools.stats rule: fewer than 2 points is a caller error, a constant side gives NaN
    with pytest.raises(ValueError, match="at least 2 points"):
        rank_correlation([1], [2])
    assert np.isnan(rank_correlation([1, 2], [3, 3]))


# ----------------------------------------------------------------------------------- cache


def test_cache_never_evaluates_twice_and_persists(
    tmp_path: Path, ofa_predictor: MLPAccuracyPredictor
) -> None:
    counting = CountingSource(ofa_predictor)
    path = tmp_path / "cache.json"
    cache = CachedAccuracy(counting, path, supernet_sha256="a" * 64, dataset="holdout")
    rng = random.Random(4)
    cfgs = [OFA_SPACE.sample(rng) for _ in range(10)]
    first = cache.predict(cfgs + cfgs[:3])
    assert first == pytest.approx(ofa_predictor.predict(cfgs + cfgs[:3]))
    second = cache.predict(list(reversed(cfgs)))
    assert second == list(reversed(first[:10]))
    assert all(n == 1 for n in counting.calls.values()) and len(counting.calls) == 10
    # a new process (new instance) reads the file and evaluates nothing again
    counting2 = CountingSource(ofa_predictor)
    cache2 = CachedAccuracy(counting2, path, supernet_sha256="a" * 64, dataset="holdout")
    assert cache2.predict(cfgs) == first[:10]
    assert counting2.calls == {}
    # another dataset or super-network is a different cache entry
    cache3 = CachedAccuracy(counting2, path, supernet_sha256="b" * 64, dataset="holdout")
    cache3.predict(cfgs[:2])
    assert len(counting2.calls) == 2
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data["entries"]) == {"a" * 64, "b" * 64}
    path.write_text("{broken", encoding="utf-8")
    with pytest.raises(AccuracyPredictorError, match="delete it"):
        CachedAccuracy(counting2, path, supernet_sha256="a" * 64, dataset="holdout")


# ----------------------------------------------------------------------------------- measured


def test_measured_accuracy_on_random_weights(shared_dir: Path) -> None:
    from dynamic_ofa_ros.supernet import load_supernet
    from offline_tools.datasets import ImageSet, open_image_source

    zip_path = shared_dir / "datasets" / "imagenette" / "val-128px.zip"
    if not zip_path.is_file():
        pytest.skip(f"{zip_path} not found")
    supernet = load_supernet("random", allow_random=True)
    images = ImageSet.load(open_image_source(zip_path, sample=12, seed=0), progress=False)
    unlabelled = ImageSet(name="x", images=images.images, labels=None)
    with pytest.raises(DatasetError, match="labels"):
        MeasuredAccuracy(supernet, validation=unlabelled, calibration=images)
    source = MeasuredAccuracy(supernet, validation=images, calibration=images, batch_size=6, progress=False)
    cfgs = [uniform(128, 3, 3, 2), uniform(128, 5, 4, 2)]
    values = source.predict(cfgs)
    assert len(values) == 2 and all(0.0 <= v <= 100.0 for v in values)
    assert all(abs(v * 12 / 100 - round(v * 12 / 100)) < 1e-6 for v in values)  # k of 12 images right
    assert source.evaluated == 2 and source.measured and source.dataset == images.name
