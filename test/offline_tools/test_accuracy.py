"""Tests of offline_tools.accuracy: OFA predictor, encoding, measured accuracy, cache."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

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
)
from offline_tools.errors import AccuracyPredictorError, DatasetError

torch.set_num_threads(1)

OFA_SPACE = SearchSpace(resolutions=(160, 176, 192, 208, 224))


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
