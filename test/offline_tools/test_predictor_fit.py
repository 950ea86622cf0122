"""Tests of offline_tools.predictor_fit: fitting an MLP predictor on measured records."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SearchSpace, SubnetConfig
from offline_tools.accuracy import MLPAccuracyPredictor
from offline_tools.errors import AccuracyPredictorError
from offline_tools.predictor_fit import fit_mlp_predictor, load_accuracy_records, parse_accuracy_records

torch.set_num_threads(1)

EMBEDDED_SPACE = SearchSpace(resolutions=(96, 112, 128, 144, 160))


def uniform(resolution: int, ks: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=resolution, ks=(ks,) * N_BLOCKS, e=(e,) * N_BLOCKS, d=(d,) * N_STAGES)


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
