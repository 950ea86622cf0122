"""Tests of offline_tools.measure and the in-process executor (no Ray needed).

Real photos (Imagenette) and the embedded super-network; small, cheap sub-networks (96 px,
depth 2) so the whole module stays a few seconds of CPU per measured network.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from dynamic_ofa_ros.arch import SearchSpace, SubnetConfig
from dynamic_ofa_ros.supernet import Supernet, load_supernet
from offline_tools import executors
from offline_tools.accuracy import MeasuredAccuracy
from offline_tools.cli import main
from offline_tools.datasets import ImageSet, open_image_source
from offline_tools.executors import (
    CandidateResult,
    EvaluationSetup,
    ExecutorError,
    ExecutorSpec,
    ImageData,
    ParallelExecutorRefusedError,
    open_executor,
    refuse_parallel,
)
from offline_tools.measure import (
    RUN_FIELDS,
    MeasureError,
    RecordsMismatchError,
    load_records,
    measure_subnets_accuracy,
    plot_measured_vs_predicted,
    random_architectures,
    read_architectures,
)
from offline_tools.predictor_fit import load_accuracy_records

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
CHEAP_SPACE = SearchSpace(ks_choices=(3, 5, 7), e_choices=(3, 4, 6), d_choices=(2,), resolutions=(96,))


def _zip(shared_dir: Path, name: str) -> Path:
    path = shared_dir / "datasets" / "imagenette" / name
    if not path.is_file():
        pytest.skip(f"{path} not found (the Imagenette zips of ../shared/datasets)")
    return path


@pytest.fixture(scope="module")
def supernet() -> Supernet:
    return load_supernet("embedded")


@pytest.fixture(scope="module")
def setup(shared_dir: Path, supernet: Supernet) -> EvaluationSetup:
    val = ImageSet.load(
        open_image_source(_zip(shared_dir, "val-128px.zip"), sample=64, seed=0), progress=False
    )
    cal = ImageSet.load(
        open_image_source(_zip(shared_dir, "train-128px-part1.zip"), limit=16), progress=False
    )
    return EvaluationSetup(
        supernet=supernet,
        calibration=ImageData.decoded(cal),
        validation=ImageData.decoded(val),
        batch_size=32,
    )


def measurement(record: dict[str, object]) -> dict[str, object]:
    """A record without the fields about the run (timings, worker, attempts)."""
    return {k: v for k, v in record.items() if k not in RUN_FIELDS}


def test_local_executor_gives_measured_accuracy_numbers(setup: EvaluationSetup) -> None:
    cfgs = random_architectures(CHEAP_SPACE, 2, seed=3)
    assert setup.validation is not None and setup.validation.images is not None
    assert setup.calibration.images is not None
    source = MeasuredAccuracy(
        setup.supernet,
        validation=setup.validation.images,
        calibration=setup.calibration.images,
        batch_size=32,
        progress=False,
    )
    executor = open_executor(ExecutorSpec(), setup, progress=False)
    results = executor.run(cfgs)
    assert [r.top1 for r in results] == source.predict(cfgs)
    assert all(set(r.seconds) == {"extract", "calibrate", "evaluate", "transfer"} for r in results)
    assert executor.stats.candidates == 2 and executor.stats.images == 2 * (16 + 64)
    assert "2 candidates, 160 images" in executor.stats.summary_line()


def test_records_resume_after_an_interruption(tmp_path: Path, setup: EvaluationSetup) -> None:
    cfgs = random_architectures(CHEAP_SPACE, 4, seed=1)
    out = tmp_path / "records.json"

    def stop_after_two(result: CandidateResult) -> None:
        if len(load_records(out)) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure_subnets_accuracy(cfgs, setup, out, progress=False, on_result=stop_after_two)
    kept = json.loads(out.read_text())
    assert kept["measured"] == 2 and kept["complete"] is False
    first_two = {r["key"] for r in kept["subnets"]}

    again = measure_subnets_accuracy(cfgs, setup, out, progress=False)
    assert (again.already, again.measured, again.planned) == (2, 2, 4)
    data = json.loads(out.read_text())
    assert data["complete"] is True and [r["key"] for r in data["subnets"]] == [c.key() for c in cfgs]
    assert first_two <= {r["key"] for r in data["subnets"]}
    # every record says what it was measured with; fit-predictor reads the file as it is
    for rec in data["subnets"]:
        assert rec["supernet_sha256"] == setup.supernet.sha256
        assert rec["validation"] == {"name": setup.validation.name, "images": 64}  # type: ignore[union-attr]
        assert rec["calibration"]["images"] == 16
        assert rec["backend"]["torch"] == torch.__version__.split("+")[0]
    parsed = load_accuracy_records(out)
    assert [c.key() for c, _ in parsed] == [c.key() for c in cfgs]

    # a third run has nothing to do
    done = measure_subnets_accuracy(cfgs, setup, out, progress=False)
    assert done.measured == 0 and done.stats is None

    # another setup (here the batch size, which changes BN statistics) never extends the file
    other = EvaluationSetup(
        supernet=setup.supernet, calibration=setup.calibration, validation=setup.validation, batch_size=16
    )
    with pytest.raises(RecordsMismatchError, match="batch_size"):
        measure_subnets_accuracy(cfgs, other, out, progress=False)


def test_read_architectures_from_lists_families_reports_and_records(tmp_path: Path) -> None:
    cfgs = random_architectures(CHEAP_SPACE, 3, seed=2)
    plain = tmp_path / "archs.json"
    plain.write_text(json.dumps([c.to_dict() for c in cfgs] + [cfgs[0].to_dict()]))
    assert [c.key() for c, _ in read_architectures(plain)] == [c.key() for c in cfgs]

    family = tmp_path / "family.json"
    family.write_text(
        json.dumps({"levels": [{**c.to_dict(), "predicted_accuracy": 80.0 + i} for i, c in enumerate(cfgs)]})
    )
    assert [p for _, p in read_architectures(family)] == [80.0, 81.0, 82.0]

    report = tmp_path / "report.json"
    front = [{**c.to_dict(), "accuracy": 70.0 + i, "latency_ms": 1.0 + i} for i, c in enumerate(cfgs)]
    report.write_text(
        json.dumps(
            {
                "format": "dynamic_ofa_ros.search_report",
                "meta": {"predicted": True},
                "front": front,
                "levels": front[:1],
            }
        )
    )
    assert [p for _, p in read_architectures(report)] == [70.0, 71.0, 72.0]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"resolution": 96, "ks": [3], "e": [3], "d": [2]}]))
    with pytest.raises(MeasureError):
        read_architectures(bad)


def test_random_architectures_are_distinct_and_seeded() -> None:
    a = random_architectures(CHEAP_SPACE, 20, seed=5)
    assert len({c.key() for c in a}) == 20
    assert [c.key() for c in a] == [c.key() for c in random_architectures(CHEAP_SPACE, 20, seed=5)]
    assert [c.key() for c in a] != [c.key() for c in random_architectures(CHEAP_SPACE, 20, seed=6)]
    tiny = SearchSpace(ks_choices=(3,), e_choices=(3,), d_choices=(2,), resolutions=(96,))
    with pytest.raises(MeasureError, match="fewer than 2"):
        random_architectures(tiny, 2, seed=0)


def test_measured_vs_predicted_plot(tmp_path: Path) -> None:
    rng = random.Random(0)
    cfgs = random_architectures(CHEAP_SPACE, 12, seed=0)
    records = [
        {**c.to_dict(), "holdout_top1": 80 + rng.random() * 5, "predicted_top1": 81 + rng.random() * 5}
        for c in cfgs
    ]
    png = plot_measured_vs_predicted(records, tmp_path / "mvp.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(MeasureError, match="predicted"):
        plot_measured_vs_predicted(
            [{k: v for k, v in r.items() if k != "predicted_top1"} for r in records], tmp_path / "x.png"
        )


def test_measure_command_writes_fit_predictor_records_and_plot(
    tmp_path: Path, shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    argv = [
        "measure", "--model", "embedded", "--random", "3", "--seed", "4", "--resolutions", "96", "--d", "2",
        "--calib", str(_zip(shared_dir, "train-128px-part1.zip")), "--calib-images", "16",
        "--val", str(_zip(shared_dir, "val-128px.zip")), "--val-sample", "48", "--threads", "1",
        "--accuracy-predictor", str(REPO / "config" / "embedded_acc_predictor.safetensors"),
        "--out", str(out), "--plot", str(tmp_path / "m.png"), "--summary", str(tmp_path / "s.json"),
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "3 measured; 3 candidates, 192 images" in err and "images/s per worker" in err
    records = load_accuracy_records(out)
    assert len(records) == 3 and all(0 <= acc <= 100 for _, acc in records)
    assert all("predicted_top1" in r for r in load_records(out))
    assert (tmp_path / "m.png").stat().st_size > 10_000
    stats = json.loads((tmp_path / "s.json").read_text())["stats"]
    assert stats["candidates"] == 3 and set(stats["per_candidate_s"]) == {
        "extract",
        "calibrate",
        "evaluate",
        "transfer",
    }
    # the same command again resumes: nothing left to measure
    assert main(argv) == 0
    assert "3 already" in capsys.readouterr().err
    # the figure again, from the records alone
    assert main(["plot", "--records", str(out), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 10_000


@pytest.mark.parametrize("command", ["profile", "validate-latency"])
def test_latency_profiling_refuses_a_parallel_executor(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "lut"
    argv = (
        ["profile", "--resolutions", "96", "--out", str(target)]
        if command == "profile"
        else ["validate-latency", "--table", str(target)]
    )
    assert main([*argv, "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--executor local" in err and "distorts a latency table" in err
    assert not target.exists()
    with pytest.raises(ParallelExecutorRefusedError):
        refuse_parallel("ray", "latency")
    refuse_parallel("local", "latency")


def test_executor_spec_and_missing_ray(monkeypatch: pytest.MonkeyPatch, setup: EvaluationSetup) -> None:
    with pytest.raises(ExecutorError, match="need --executor ray"):
        ExecutorSpec(kind="local", workers=2)
    with pytest.raises(ExecutorError, match="unknown executor"):
        ExecutorSpec(kind="dask")  # type: ignore[arg-type]
    monkeypatch.setattr(executors, "ray_available", lambda: False)
    with pytest.raises(ExecutorError, match=r"pip install .*distributed"):
        open_executor(ExecutorSpec(kind="ray", workers=2), setup)


def test_measure_refuses_architectures_outside_the_model(tmp_path: Path, setup: EvaluationSetup) -> None:
    outside = SubnetConfig(resolution=224, ks=(3,) * 20, e=(3,) * 20, d=(2,) * 5)
    with pytest.raises(MeasureError, match="not a sub-network"):
        measure_subnets_accuracy([outside], setup, tmp_path / "r.json", progress=False)
    assert not (tmp_path / "r.json").exists()
