"""Tests of offline_tools.train_supernet: split, 1x1-as-matmul, BN calibration, and a CPU run of main()."""

from __future__ import annotations

import collections
import json
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from dynamic_ofa_ros.arch import SearchSpace, SubnetConfig
from dynamic_ofa_ros.bn import calibrate_bn, extract_subnet
from dynamic_ofa_ros.supernet import load_supernet
from offline_tools import train_supernet as ts

TINY_PER_CLASS = 7


def small_net() -> torch.nn.Module:
    net, _ = ts.build_supernet(ts.TrainConfig(dropout_rate=0.0))
    torch.manual_seed(0)
    ts.init_weights(net, zero_init_residual_bn=False, bn_momentum=0.1)
    return net


def names(per_class: dict[str, int]) -> list[str]:
    return [f"train/{w}/{w}_{i:05d}.JPEG" for w, n in per_class.items() for i in range(n)]


def test_split_is_deterministic_stratified_and_disjoint() -> None:
    sizes = {w: 40 + 3 * i for i, w in enumerate(ts.IMAGENETTE_TO_IMAGENET)}
    all_names = names(sizes)
    shuffled = list(all_names)
    random.Random(5).shuffle(shuffled)
    a = ts.make_split(all_names, seed=3, n_holdout=50, n_calib=100)
    b = ts.make_split(shuffled, seed=3, n_holdout=50, n_calib=100)  # input order does not matter
    assert a == b
    assert len(a["holdout"]) == 50 and len(a["calibration"]) == 100
    assert not set(a["holdout"]) & set(a["calibration"])
    hold = collections.Counter(n.split("/")[1] for n in a["holdout"])
    total = sum(sizes.values())
    for wnid, size in sizes.items():  # proportional to class size within rounding
        assert abs(hold[wnid] - 50 * size / total) < 1.0
    assert ts.make_split(all_names, seed=4, n_holdout=50, n_calib=100) != a
    with pytest.raises(ValueError, match="calibration"):
        ts.make_split(all_names, seed=0, n_holdout=total, n_calib=1)


def test_config_rejects_unknown_keys_and_parses_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 3, "resolutions": [128, 96, 96]}))
    cfg = ts.load_config(path, ["lr=0.05", "measure_sweep=none"])
    assert (cfg.epochs, cfg.resolutions, cfg.lr, cfg.measure_sweep) == (3, [96, 128], 0.05, "none")
    with pytest.raises(ValueError, match="unknown config keys"):
        ts.load_config(path, ["nope=1"])
    with pytest.raises(ValueError, match="multiples of 4"):
        ts.load_config(path, ["resolutions=[97]"])


def test_release_config_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "config" / "train_supernet.json"
    cfg = ts.load_config(path, [])
    assert cfg.resolutions == [96, 112, 128, 144, 160]
    assert cfg.batch_size == 256 and not cfg.channels_last and not cfg.cudnn_benchmark


def test_schedule_warmup_cosine_and_time_awareness() -> None:
    cfg = ts.TrainConfig(lr=1.0, time_aware_schedule=True)
    sched = ts.Schedule(cfg, total_steps=100, warmup_steps=10, train_budget_s=100.0)
    assert sched.lr(0, 0.0) == pytest.approx(0.1)
    assert sched.lr(10, 0.0) == pytest.approx(1.0)
    assert sched.lr(55, 0.0) == pytest.approx(0.5)
    assert sched.lr(20, 50.0) == pytest.approx(0.5)  # the wall clock is ahead of the steps
    assert sched.progress(20, 100.0) >= 1.0
    fixed = ts.Schedule(ts.TrainConfig(lr=1.0, time_aware_schedule=False), 100, 10, 100.0)
    assert fixed.progress(20, 1e9) < 1.0


def test_pointwise_matmul_matches_cudnn_convolution() -> None:
    net = small_net().train()
    arch = SearchSpace(resolutions=(64,)).sample(random.Random(1))
    ts.set_subnet(net, arch)
    x = torch.randn(2, 3, 64, 64)
    results = []
    for enabled in (False, True):
        net.zero_grad()
        with ts.pointwise_as_matmul(enabled):
            out = net(x)
        out.square().mean().backward()
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    (ref, ref_grads), (got, got_grads) = results
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert ref_grads.keys() == got_grads.keys()
    for key in ref_grads:
        torch.testing.assert_close(got_grads[key], ref_grads[key], rtol=1e-3, atol=1e-5)
    from ofa.imagenet_classification.elastic_nn.modules import dynamic_op

    assert dynamic_op.F is torch.nn.functional  # restored


def test_calibration_on_the_supernet_equals_extracted_subnet() -> None:
    net = small_net()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 40, 40), dtype=torch.uint8, generator=gen)
    cfg = ts.TrainConfig(batch_size=8)
    arch = SearchSpace(resolutions=(48,)).sample(random.Random(3))
    ctx = ts.Context(
        cfg=cfg,
        device=torch.device("cpu"),
        net=net,
        space=SearchSpace(resolutions=(48,)),
        images=images,
        labels=torch.zeros(24, dtype=torch.int64),
        train_idx=torch.arange(24),
        calib_idx=torch.arange(16),
        holdout_idx=torch.arange(16, 24),
        log=None,  # type: ignore[arg-type]
        budget_s=1e9,
    )
    ts.calibrate_and_eval(ctx, arch, 16)
    with torch.no_grad():
        test_input = ts.eval_preprocess(images[16:], 48)
        via_supernet = net(test_input)
        sub = extract_subnet(net, arch)
        for bn in ts.bn_modules(sub):  # forget the copied statistics
            bn.running_mean.fill_(3.0)
        calibrate_bn(sub, [ts.eval_preprocess(images[i : i + 8], 48) for i in (0, 8)])
        via_extracted = sub(test_input)
    torch.testing.assert_close(via_supernet, via_extracted, rtol=1e-4, atol=1e-4)


def test_measurement_plan_covers_extremes_and_is_unique() -> None:
    cfg = ts.TrainConfig(measure_subnets=20, measure_sweep="full", resolutions=[96, 128])
    space = SearchSpace(resolutions=(96, 128))
    plan = ts.measurement_plan(space, cfg)
    keys = [a.key() for _, a in plan]
    assert len(keys) == len(set(keys)) == 2 * 27 + 20
    assert (
        plan[0][1].key()
        == SubnetConfig(96, space.smallest().ks, space.smallest().e, space.smallest().d).key()
    )
    assert {a.key() for _, a in plan[:4]} == {
        SubnetConfig(r, c.ks, c.e, c.d).key() for r in (96, 128) for c in (space.smallest(), space.largest())
    }
    assert sum(kind == "random" for kind, _ in plan) == 20


def tiny_zip(shared: Path, target: Path) -> Path:
    source = shared / "datasets" / "imagenette" / "train-128px-part1.zip"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    taken: collections.Counter[str] = collections.Counter()
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for member in sorted(src.namelist()):
            if not member.endswith(".JPEG"):
                continue
            wnid = member.split("/")[-2]
            if taken[wnid] < TINY_PER_CLASS:
                taken[wnid] += 1
                dst.writestr(member, src.read(member))
    return target


@pytest.mark.slow
def test_main_runs_every_stage_on_cpu(tmp_path: Path, shared_dir: Path) -> None:
    data = tiny_zip(shared_dir, tmp_path / "tiny.zip")
    out = tmp_path / "run"
    overrides = {
        "holdout_images": 10,
        "calib_images": 20,
        "batch_size": 4,
        "epochs": 2,
        "max_steps_per_epoch": 2,
        "warmup_epochs": 0.5,
        "n_random_subnets": 1,
        "resolutions": [64, 96],
        "measure_sweep": "extremes",
        "final_calib_images": 8,
        "measure_calib_images": 4,
        "measure_flush_every": 2,
        "eval_every_epochs": 2,
        "decode_threads": 2,
    }
    argv = ["--data", str(data), "--out", str(out), "--device", "cpu", "--measure-subnets", "3"]
    argv += ["--time-budget-min", "30"]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert ts.main(argv) == 0

    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files
    assert {ts.SPLIT_FILE, ts.ACCURACY_FILE, ts.METRICS_FILE, ts.LOG_FILE, "manifest.json"} <= set(files)
    shards = [p for p in out.iterdir() if p.suffix == ".safetensors"]
    assert shards and all(p.stat().st_size <= 15 * 2**20 for p in shards)

    supernet = load_supernet(str(out))  # checks shard hashes and the state-dict checksum
    assert supernet.resolutions == (64, 96)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "float16" and manifest["training"]["steps"] == 4
    assert set(manifest["holdout_top1"]) >= {"largest@96", "smallest@64", "holdout_images"}

    split = ts.load_split(out / ts.SPLIT_FILE)
    assert len(split["holdout"]) == 10 and len(split["calibration"]) == 20
    assert collections.Counter(n.split("/")[1] for n in split["holdout"]) == dict.fromkeys(
        ts.IMAGENETTE_TO_IMAGENET, 1
    )
    assert split["n_images"] == 10 * TINY_PER_CLASS and split["sources"][0]["file"] == "tiny.zip"

    acc: dict[str, Any] = json.loads((out / ts.ACCURACY_FILE).read_text())
    assert acc["complete"] and acc["measured"] == 4 + 3 and acc["holdout_images"] == 10
    for row in acc["subnets"]:
        cfg = SubnetConfig.from_dict(row)
        assert cfg.resolution in (64, 96) and 0.0 <= row["holdout_top1"] <= 100.0
        assert row["kind"] in ("sweep", "random")

    metrics = json.loads((out / ts.METRICS_FILE).read_text())
    assert metrics["status"] == "ok" and not metrics["errors"]
    assert metrics["training"]["steps_done"] == 4 and len(metrics["training"]["epochs"]) == 2
    assert "check" in metrics["training"]["epochs"][1]
    events = [json.loads(line)["event"] for line in (out / ts.LOG_FILE).read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "end" and "export" in events


@pytest.mark.slow
def test_time_budget_stops_training_early_and_still_exports(tmp_path: Path, shared_dir: Path) -> None:
    data = tiny_zip(shared_dir, tmp_path / "tiny.zip")
    out = tmp_path / "run"
    argv = ["--data", str(data), "--out", str(out), "--device", "cpu", "--measure-subnets", "50"]
    # a budget already spent: training stops at once, the rest still runs and records it
    sets = {
        "holdout_images": 10,
        "calib_images": 20,
        "batch_size": 4,
        "epochs": 50,
        "resolutions": [64],
        "time_budget_min": 0.001,
        "post_reserve_s": 0,
        "final_calib_images": 4,
        "measure_calib_images": 4,
        "eval_every_epochs": 0,
        "decode_threads": 2,
    }
    for key, value in sets.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert ts.main(argv) == 0
    metrics = json.loads((out / ts.METRICS_FILE).read_text())
    assert metrics["training"]["stopped_early"] and metrics["training"]["steps_done"] < 50
    assert (out / "manifest.json").is_file()
    acc = json.loads((out / ts.ACCURACY_FILE).read_text())
    assert not acc["complete"] and acc["measured"] < acc["planned"]


# --------------------------------------------------------------------------------------------
# resumable runs (--checkpoint-dir / --resume / --stop-after-steps)

RESUME_SETS: dict[str, Any] = {
    "holdout_images": 10,
    "calib_images": 20,
    "batch_size": 4,
    "epochs": 2,
    "max_steps_per_epoch": 2,  # 4 planned steps
    "warmup_epochs": 0.5,
    "n_random_subnets": 1,
    "resolutions": [64, 96],
    "measure_sweep": "none",
    "final_calib_images": 4,
    "measure_calib_images": 4,
    "eval_every_epochs": 2,
    "decode_threads": 2,
}


def resume_argv(data: Path, out: Path, *extra: str, budget_min: float = 30.0) -> list[str]:
    argv = ["--data", str(data), "--out", str(out), "--device", "cpu", "--measure-subnets", "0"]
    argv += ["--time-budget-min", str(budget_min), *extra]
    for key, value in RESUME_SETS.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    return argv


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> dict[str, Path]:
    """One uninterrupted 4-step run and the same run split 3 + 1 steps, each with a checkpoint."""
    root = tmp_path_factory.mktemp("resume")
    data = tiny_zip(shared_dir, root / "tiny.zip")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the CPU kernels' reductions run in one fixed order
    try:
        assert ts.main(resume_argv(data, root / "full", "--checkpoint-dir", str(root / "ck_full"))) == 0
        first = resume_argv(data, root / "part1", "--checkpoint-dir", str(root / "ck_split"))
        assert ts.main([*first, "--stop-after-steps", "3"]) == 0  # stops inside the second epoch
        # a different time budget is allowed between calls (it only decides where a call ends)
        second = resume_argv(data, root / "part2", "--resume", str(root / "ck_split"), budget_min=31.0)
        assert ts.main([*second, "--checkpoint-dir", str(root / "ck_split")]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "data": data}


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(resumed_runs: dict[str, Path]) -> None:
    root = resumed_runs["root"]
    metrics = {n: json.loads((root / n / ts.METRICS_FILE).read_text()) for n in ("full", "part1", "part2")}
    assert metrics["part1"]["training"]["steps_done"] == 3 and metrics["part1"]["training"]["paused"]
    assert metrics["part2"]["training"]["resumed_at_step"] == 3
    for name in ("full", "part2"):
        training = metrics[name]["training"]
        assert training["steps_done"] == 4 and not training["stopped_early"] and not training["paused"]
        assert metrics[name]["status"] == "ok"
    full, split = ts.read_checkpoint(root / "ck_full"), ts.read_checkpoint(root / "ck_split")
    assert full.meta["global_step"] == split.meta["global_step"] == 4
    assert full.meta["schedule"]["complete"] and [c["end_step"] for c in split.meta["calls"]] == [3, 4]
    assert len(list((root / "ck_split").glob("step-*"))) == 2  # the new one and the one before it
    # Exact equality (torch.equal, no tolerance): on the CPU with one thread and the same seeds the
    # kernels are deterministic, and a resumed run restores every state the next step reads (weights,
    # BN statistics, momentum, all four random generators, the epoch's permutation), so any
    # difference at all would mean a state was lost. Checked to hold for the model and optimizer.
    for group in ("model", "optimizer"):
        a, b = full.tensors(group), split.tensors(group)
        assert a.keys() == b.keys() and a
        assert all(torch.equal(a[k], b[k]) for k in a), group
    loss_keys = ("epoch", "steps", "global_step", "lr", "loss_largest", "loss_students")
    curves = [
        [{k: e[k] for k in loss_keys} for e in m["training"]["epochs"]]
        for m in (metrics["full"], metrics["part2"])
    ]
    assert curves[0] == curves[1] and len(curves[0]) == 2
    from safetensors.torch import load_file

    for shard in sorted(p.name for p in (root / "full").glob("supernet-*.safetensors")):
        a, b = load_file(root / "full" / shard), load_file(root / "part2" / shard)
        assert all(torch.equal(a[k], b[k]) for k in a)  # the exported (fp16) weights too


@pytest.mark.slow
def test_resume_rejects_a_corrupted_checkpoint(resumed_runs: dict[str, Path], tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    shutil.copytree(resumed_runs["root"] / "ck_split", ckpt)
    folder = ts.read_checkpoint(ckpt).folder
    shard = folder / "model-0000.safetensors"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    argv = resume_argv(resumed_runs["data"], tmp_path / "out", "--resume", str(ckpt))
    with pytest.raises(SystemExit, match=r"model-0000\.safetensors: SHA-256 mismatch.*corrupted"):
        ts.main(argv)
    (folder / ts.CHECKPOINT_JSON).write_text("{}")  # the JSON itself is checked against LATEST.json
    with pytest.raises(SystemExit, match=r"checkpoint\.json: SHA-256 differs"):
        ts.main(argv)
    with pytest.raises(SystemExit, match="no checkpoint"):
        ts.main(resume_argv(resumed_runs["data"], tmp_path / "out", "--resume", str(tmp_path)))
    assert not (tmp_path / "out").exists()  # it failed before doing any work


@pytest.mark.slow
def test_resume_rejects_another_config(resumed_runs: dict[str, Path], tmp_path: Path) -> None:
    argv = resume_argv(
        resumed_runs["data"], tmp_path / "out", "--resume", str(resumed_runs["root"] / "ck_split")
    )
    with pytest.raises(SystemExit, match=r"config differs.*epochs: checkpoint 2, now 3.*same --config"):
        ts.main([*argv, "--epochs", "3"])
    with pytest.raises(SystemExit, match=r"lr: checkpoint 0\.2, now 0\.1"):
        ts.main([*argv, "--set", "lr=0.1"])
