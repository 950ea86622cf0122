"""Fitting an MLP accuracy predictor on measured records (``dofa-levels fit-predictor``).

The records are ``(architecture, top-1 %)`` measurements, e.g. the ``subnet_accuracy.json`` that
super-network training writes. :func:`fit_mlp_predictor` trains an
:class:`~offline_tools.accuracy.MLPAccuracyPredictor` (OFA's encoding family) on them, checks it
on a seeded hold-out split and reports the hold-out RMSE and Spearman rank correlation.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # type: ignore[import-untyped]

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.errors import ArchitectureError
from offline_tools.accuracy import MLPAccuracyPredictor, PredictorEncoding, build_mlp, one_thread
from offline_tools.errors import AccuracyPredictorError
from offline_tools.stats import spearman_rank_correlation

__all__ = ["fit_mlp_predictor", "load_accuracy_records", "parse_accuracy_records"]


def load_accuracy_records(
    path: str | os.PathLike[str], *, target_key: str = "holdout_top1"
) -> list[tuple[SubnetConfig, float]]:
    """Read measured records: a JSON list (or ``{"records": [...]}`` / ``{"subnets": [...]}``) of objects.

    Each object has ``resolution``, ``ks``, ``e``, ``d`` and ``<target_key>``.
    Accuracies are in percent (0–100). Returns ``(config, accuracy)`` pairs in file order.
    """
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AccuracyPredictorError(f"accuracy records {file} do not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AccuracyPredictorError(f"{file}: not a JSON file ({exc})") from exc
    if isinstance(data, Mapping):
        # train_supernet.py writes {"format": ..., "subnets": [...]}; a plain {"records": [...]} works too
        data = data.get("records", data.get("subnets"))
    if not isinstance(data, list):
        raise AccuracyPredictorError(f"{file}: expected a JSON list of records")
    return parse_accuracy_records(data, where=str(file), target_key=target_key)


def parse_accuracy_records(
    records: Sequence[Any], *, where: str = "records", target_key: str = "holdout_top1"
) -> list[tuple[SubnetConfig, float]]:
    """Validate record mappings (see :func:`load_accuracy_records`)."""
    out: list[tuple[SubnetConfig, float]] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise AccuracyPredictorError(f"{where}: record {i} is not an object")
        try:
            cfg = SubnetConfig.from_dict(rec, where=f"{where}: record {i}")
        except ArchitectureError as exc:
            raise AccuracyPredictorError(str(exc)) from exc
        if target_key not in rec:
            raise AccuracyPredictorError(f"{where}: record {i} has no {target_key!r} field")
        try:
            acc = float(rec[target_key])
        except (TypeError, ValueError):
            raise AccuracyPredictorError(
                f"{where}: record {i}: {target_key}={rec[target_key]!r} is not a number"
            ) from None
        if not math.isfinite(acc) or not 0.0 <= acc <= 100.0:
            raise AccuracyPredictorError(
                f"{where}: record {i}: {target_key}={acc} is not a percentage 0..100"
            )
        out.append((cfg, acc))
    if out and max(a for _, a in out) <= 1.0:
        raise AccuracyPredictorError(
            f"{where}: every {target_key} is ≤ 1; accuracies must be in percent (0..100), not fractions"
        )
    return out


def _train_mlp(
    x: np.ndarray,
    y: np.ndarray,
    *,
    hidden: int,
    n_layers: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    progress: bool,
    desc: str,
) -> nn.Sequential:
    """Fit an MLP regressor of ``y`` on ``x`` (Adam, cosine schedule, MSE) on one CPU thread."""
    with one_thread():
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_mlp(x.shape[1], hidden, n_layers)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
        model.train()
        for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
            perm = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), batch_size):
                idx = perm[start : start + batch_size]
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(xt[idx]).reshape(-1), yt[idx])
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
            sched.step()
        model.eval()
        return model


def _average_per_architecture(
    pairs: Sequence[tuple[SubnetConfig, float]],
) -> tuple[list[SubnetConfig], np.ndarray]:
    """The distinct architectures (sorted by key) and the mean accuracy of each; at least 10."""
    merged: dict[str, tuple[SubnetConfig, list[float]]] = {}
    for cfg, acc in pairs:
        merged.setdefault(cfg.key(), (cfg, []))[1].append(acc)
    if len(merged) < 10:
        raise AccuracyPredictorError(
            f"fit-predictor: {len(merged)} distinct architectures; need at least 10 measured records"
        )
    keys = sorted(merged)
    y = np.array([float(np.mean(merged[k][1])) for k in keys], dtype=np.float64)
    return [merged[k][0] for k in keys], y


def _holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (held-out, training) index arrays, each sorted."""
    if not 0.0 < fraction < 1.0:
        raise AccuracyPredictorError(f"fit-predictor: holdout_fraction={fraction} must be in (0, 1)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_hold = max(2, int(round(n * fraction)))
    return np.array(sorted(order[:n_hold])), np.array(sorted(order[n_hold:]))


def fit_mlp_predictor(  # noqa: PLR0913 (keyword-only options, one per `dofa-levels fit-predictor` flag)
    records: Sequence[tuple[SubnetConfig, float]] | Sequence[Mapping[str, Any]],
    *,
    base_resolution: int,
    step: int,
    n_slots: int,
    seed: int = 0,
    epochs: int = 300,
    hidden: int = 400,
    n_layers: int = 3,
    holdout_fraction: float = 0.2,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    refit_all: bool = True,
    name: str = "fitted",
    dataset: str = "measured records",
    target_key: str = "holdout_top1",
    clip_to_records: bool = True,
    progress: bool = True,
) -> MLPAccuracyPredictor:
    """Fit an MLP predictor (same encoding family as OFA's) on measured ``(architecture, top-1)`` records.

    Records are ``(SubnetConfig, percent)`` pairs or mappings ``{resolution, ks, e, d, <target_key>}``;
    duplicates of one network are averaged. A seeded ``holdout_fraction`` of the networks is held
    out: the MLP trained on the rest gives the reported held-out RMSE (points) and Spearman rank
    correlation (``fit_report``). With ``refit_all`` the returned model is then retrained on all
    records with the same settings (the report still describes the held-out check). With
    ``clip_to_records`` predictions are clamped to the measured accuracy range (the search would
    otherwise climb into the MLP's optimistic extrapolation above the best measured network).
    """
    if records and isinstance(records[0], Mapping):
        pairs = parse_accuracy_records(records, target_key=target_key)
    else:
        pairs = [(cfg, float(acc)) for cfg, acc in records]  # type: ignore[misc]
    encoding = PredictorEncoding(base_resolution=base_resolution, step=step, n_slots=n_slots)
    cfgs, y = _average_per_architecture(pairs)
    x = encoding.encode(cfgs)  # raises for resolutions outside the encoding
    hold, train = _holdout_split(len(cfgs), holdout_fraction, seed)
    offset = float(y[train].mean())
    scale = float(y[train].std()) or 1.0

    def train_on(rows: np.ndarray, off: float, sc: float, desc: str) -> nn.Sequential:
        return _train_mlp(
            x[rows],
            (y[rows] - off) / sc,
            hidden=hidden,
            n_layers=n_layers,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
            desc=desc,
        )

    model = train_on(train, offset, scale, "fit (train split)")
    with torch.no_grad():
        pred_hold = model(torch.from_numpy(x[hold])).reshape(-1).double().numpy() * scale + offset
        pred_train = model(torch.from_numpy(x[train])).reshape(-1).double().numpy() * scale + offset
    report = {
        "n_records": len(pairs),
        "n_architectures": len(cfgs),
        "n_train": int(len(train)),
        "n_holdout": int(len(hold)),
        "holdout_rmse": float(np.sqrt(np.mean((pred_hold - y[hold]) ** 2))),
        "holdout_mae": float(np.mean(np.abs(pred_hold - y[hold]))),
        "holdout_rank_correlation": spearman_rank_correlation(pred_hold, y[hold]),
        "train_rmse": float(np.sqrt(np.mean((pred_train - y[train]) ** 2))),
        "accuracy_range": [float(y.min()), float(y.max())],
        "resolutions": sorted({c.resolution for c in cfgs}),
        "seed": seed,
        "epochs": epochs,
        "hidden": hidden,
        "n_layers": n_layers,
        "refit_all": refit_all,
    }
    if refit_all:
        offset, scale = float(y.mean()), float(y.std()) or 1.0
        model = train_on(np.arange(len(cfgs)), offset, scale, "fit (all records)")
    return MLPAccuracyPredictor(
        model=model,
        encoding=encoding,
        output_scale=scale,
        output_offset=offset,
        name=name,
        dataset_name=dataset,
        resolutions=tuple(report["resolutions"]),  # type: ignore[arg-type]
        output_range=(float(y.min()), float(y.max())) if clip_to_records else None,
        fit_report=report,
    )
