"""``offline_tools.experiments`` end to end (Figs. 6/7/8) on the CPU with a tiny configuration.

Runs every experiment (the DynamicClassifier frame loop, co-located training process, two
coordinated classifier processes, analysis, JSON, PNG) with a random-weight super-network,
a 3-level table built here with the core's tools and phases of a fraction of a second; it
checks the result files' fields, not timings. The metric and budget rules are tested on
scripted traces in ``test_records.py`` / ``test_budgets.py``. The GPU run itself (CUDA graphs,
a real GPU load) is ``test_cuda_quick``, skipped without a GPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from offline_tools import experiments as ex

HEADLINE = (
    "device",
    "deadline_hit_after_reaction",
    "reaction_frames",
    "reaction_ms",
    "window_size",
    "mean_accuracy",
)

# Three sub-networks of increasing size (skipped blocks' ks/e do not matter).
_ARCHS = (
    (128, 3, 3, 2),
    (128, 3, 4, 3),
    (128, 5, 6, 3),
)


def _build_table(tmp: Path) -> Path:
    """A 3-level CPU table for the random super-network, BN statistics from the extracted sub-networks."""
    from dynamic_ofa_ros.arch import N_BLOCKS, N_STAGES, SubnetConfig
    from dynamic_ofa_ros.bn import bn_state, extract_subnet
    from dynamic_ofa_ros.levels import Level, LevelTable, save_level_table
    from dynamic_ofa_ros.supernet import load_supernet

    supernet = load_supernet("random", allow_random=True)
    levels = []
    bn = {}
    for i, (res, ks, e, d) in enumerate(_ARCHS, start=1):
        cfg = SubnetConfig(resolution=res, ks=(ks,) * N_BLOCKS, e=(e,) * N_BLOCKS, d=(d,) * N_STAGES)
        levels.append(
            Level(
                level=i,
                config=cfg,
                latency_ms=10.0 * i,
                latency_p95_ms=11.0 * i,
                accuracy=None,
                predicted_accuracy=60.0 + 5.0 * i,
                accuracy_dataset=None,
                macs_m=None,
            )
        )
        bn[i] = bn_state(extract_subnet(supernet.net, cfg))
    table = LevelTable(
        device="cpu",
        device_name="test CPU",
        profiling={"mode": "eager", "threads": 1, "note": "made up for the test"},
        supernet=supernet.identity(),
        calibration={"dataset": "none (random weights)", "images": 0},
        levels=levels,
        bn=bn,
    )
    return save_level_table(table, tmp / "tiny.json", supernet=supernet)


def _tiny_settings() -> ex.Settings:
    return ex.Settings(
        device="cpu",
        fps=0.0,
        fig8_fps=0.0,
        fig6_phases_s=(0.5, 0.5, 0.5),
        fig7_phases_s=(0.5, 1.0, 0.7),
        fig8_phases_s=(0.3, 0.8, 0.4),
        calib_frames=5,
        warmup_frames=2,
        load_batch=4,
        load_resolution=64,
        load_threads=1,
        threads=1,
        n_images=4,
        window_size=4,
        worker_start_timeout_s=120.0,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], int]:
    """Run all three experiments once on the CPU (the expensive part, shared by the checks)."""
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("experiments")
    table = _build_table(tmp)
    img_dir = tmp / "images"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(img_dir / f"{i}.png")
    out = tmp / "out"
    inputs = ex.Inputs(model="random", allow_random=True, table=table, images=str(img_dir), out=out)
    results, failures = ex.run_experiments(inputs, _tiny_settings(), list(ex.EXPERIMENTS))
    return out, results, failures


def _check_metrics(entry: dict[str, Any], where: str) -> None:
    for key in HEADLINE[1:]:
        assert key in entry, f"{where}: {key} missing"
    hit = entry["deadline_hit_after_reaction"]
    assert hit is None or 0.0 <= hit <= 1.0, where
    assert entry["reaction_frames"] is None or entry["reaction_frames"] >= 0, where
    assert entry["window_size"] == 4, where
    assert 60.0 <= entry["mean_accuracy"] <= 75.0, where


@pytest.mark.slow
def test_all_experiments_write_json_and_png(tiny_run: tuple[Path, dict[str, Any], int]) -> None:
    out, results, failures = tiny_run
    assert failures == 0
    for name in ex.EXPERIMENTS:
        path = out / f"{name}-cpu.json"
        assert path.is_file(), f"{path} missing"
        data = json.loads(path.read_text())
        for key in HEADLINE:
            assert key in data, f"{name}: top-level {key} missing"
        assert isinstance(data["device"], str) and data["device"]
        _check_metrics(data, name)
        assert set(data["baselines"]) >= {"static_alone", "static_safe"}
        for base, entry in data["baselines"].items():
            _check_metrics(entry, f"{name}.{base}")
        assert data["accuracy_meaningful"] is False  # random weights
        assert (out / data["png"]).is_file() and (out / data["png"]).stat().st_size > 1000
        assert data["settings"]["window_size"] == 4


@pytest.mark.slow
def test_fig6_levels_follow_the_budget(tiny_run: tuple[Path, dict[str, Any], int]) -> None:
    _, results, _ = tiny_run
    fig6 = results["fig6"]
    budgets = fig6["budgets"]
    assert budgets["tight"]["budget_ms"] < budgets["medium"]["budget_ms"] <= budgets["loose"]["budget_ms"]
    kinds = [ev["kind"] for ev in fig6["dynamic"]["events"]]
    assert kinds[0] == "start" and kinds.count("budget") == 2
    tl = fig6["timeline"]["dynamic"]
    assert tl["frames"] == fig6["dynamic"]["frames"] > 0
    assert (
        len(tl["t"]) == len(tl["level"]) == len(tl["latency_ms"]) == len(tl["budget_ms"]) == len(tl["load"])
    )
    assert set(tl["level"]) <= {1, 2, 3}
    # static baselines never switch
    for base in ("static_alone", "static_safe"):
        assert set(fig6["timeline"][base]["level"]) == {fig6["baselines"][base]["level"]}


@pytest.mark.slow
def test_fig7_load_really_ran(tiny_run: tuple[Path, dict[str, Any], int]) -> None:
    _, results, _ = tiny_run
    fig7 = results["fig7"]
    check = fig7["load_check"]
    assert check["calibration_steps_per_s"] > 0
    assert check["loaded_ms_p50"] > 0 and check["alone_ms_p50"] > 0
    for name in ("dynamic", "static_alone", "static_safe"):
        load = fig7["timeline"][name]["load"]
        assert 1 in load and load[0] == 0, f"{name}: the load never ran during the run"
        assert check["runs"][name]["steps"] > 0
    assert fig7["budget_ms"] > 0
    # which levels the baselines use comes from timings on this (shared) machine: check they are
    # real levels, not their order (an order check failed once under load: a timed assertion)
    levels = {row["level"] for row in fig7["levels"]}
    for name in ("static_safe", "static_alone"):
        assert fig7["baselines"][name]["level"] in levels


@pytest.mark.slow
def test_fig8_two_classifiers_coordinate(tiny_run: tuple[Path, dict[str, Any], int]) -> None:
    _, results, _ = tiny_run
    fig8 = results["fig8"]
    assert set(fig8["baselines"]) == {"static_alone", "static_safe", "uncoordinated"}
    assert set(fig8["models"]) == {"A", "B"}
    assert fig8["budgets_ms"]["A"] < fig8["budgets_ms"]["B"]
    for mode in ("coordinated", "uncoordinated", "static_alone", "static_safe"):
        a, b = fig8["timeline"][mode]["A"], fig8["timeline"][mode]["B"]
        assert a["frames"] > 0 and b["frames"] > 0, mode
        assert 1 in a["load"], f"{mode}: A never saw B running"
    # the statuses really travelled between the processes
    statuses = fig8["models"]["A"]["detail"]["statuses"]
    assert statuses["published"] > 0 and statuses["received"] > 0


@pytest.mark.cuda
def test_cuda_quick(tmp_path: Path) -> None:
    """On a GPU: fig6 through the CUDA-graph engine with the shipped CUDA table (quick settings)."""
    table = Path(__file__).resolve().parents[3] / "config" / "levels" / "cuda.json"
    if not table.is_file():
        pytest.skip(f"{table} not shipped yet")
    settings = ex.Settings.for_device("cuda", quick=True)
    settings = dataclasses.replace(settings, fig6_phases_s=(0.5, 0.5, 0.5))
    inputs = ex.Inputs(model="embedded", table=table, out=tmp_path)
    results, failures = ex.run_experiments(inputs, settings, ["fig6"])
    assert failures == 0 and results["fig6"]["device"]
