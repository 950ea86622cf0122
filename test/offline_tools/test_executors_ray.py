"""``--executor ray`` on a local Ray instance of 2 workers: same records as in-process, faults, Ctrl-C.

20 cheap sub-networks (96 px, depth 2) of the embedded super-network on 160 real photos
(Imagenette) plus 16 calibration photos. One Ray instance serves the module (started once: it
costs seconds); the tests run in file order and the last one interrupts it.
Skipped, with the reason, when Ray (``pip install .[distributed]``) or the photos are missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from dynamic_ofa_ros.arch import SearchSpace
from dynamic_ofa_ros.supernet import load_supernet
from offline_tools.datasets import ImageSet, open_image_source
from offline_tools.executors import CandidateResult, EvaluationSetup, ExecutorSpec, ImageData, open_executor
from offline_tools.measure import RUN_FIELDS, load_records, measure_subnets_accuracy, random_architectures

ray = pytest.importorskip(
    "ray", reason="Ray is not installed (pip install .[distributed]); --executor ray untested"
)

torch.set_num_threads(1)

SPACE = SearchSpace(ks_choices=(3, 5, 7), e_choices=(3, 4, 6), d_choices=(2,), resolutions=(96,))
CFGS = random_architectures(SPACE, 20, seed=0)


def _zip(shared_dir: Path, name: str) -> Path:
    path = shared_dir / "datasets" / "imagenette" / name
    if not path.is_file():
        pytest.skip(f"{path} not found (the Imagenette zips of ../shared/datasets)")
    return path


@pytest.fixture(scope="module")
def setup(shared_dir: Path) -> EvaluationSetup:
    val = ImageSet.load(
        open_image_source(_zip(shared_dir, "val-128px.zip"), sample=160, seed=0), progress=False
    )
    cal = ImageSet.load(
        open_image_source(_zip(shared_dir, "train-128px-part1.zip"), limit=16), progress=False
    )
    return EvaluationSetup(
        supernet=load_supernet("embedded"),
        calibration=ImageData.decoded(cal),
        validation=ImageData.decoded(val),
        batch_size=80,
    )


@pytest.fixture(scope="module")
def local_records(setup: EvaluationSetup, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The reference: every candidate measured in this process, 1 thread."""
    out = tmp_path_factory.mktemp("local") / "records.json"
    summary = measure_subnets_accuracy(CFGS, setup, out, progress=False)
    assert summary.measured == len(CFGS)
    return summary.records


@pytest.fixture(scope="module")
def ray_executor(setup: EvaluationSetup) -> Iterator[Any]:
    """2 Ray workers (1 thread each) on a local Ray instance, shared by the module's tests."""
    executor = open_executor(ExecutorSpec(kind="ray", workers=2, threads=1), setup, progress=False)
    yield executor
    executor.close()


def measurements(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in rec.items() if k not in RUN_FIELDS} for rec in records]


def test_ray_records_are_identical_to_local(
    tmp_path: Path, setup: EvaluationSetup, local_records: list[dict[str, Any]], ray_executor: Any
) -> None:
    out = tmp_path / "records.json"
    summary = measure_subnets_accuracy(CFGS, setup, out, executor=ray_executor, progress=False)
    assert summary.measured == 20
    assert measurements(summary.records) == measurements(local_records)
    assert {rec["worker"] for rec in summary.records} == {"ray-1", "ray-2"}
    stats = ray_executor.stats
    assert stats.workers == 2 and stats.retried == 0 and len(stats.setup_s) == 2
    assert all(rec["seconds"]["transfer"] >= 0 for rec in summary.records)
    header = {k: v for k, v in json.loads(out.read_text()).items() if k != "subnets"}
    assert header["complete"] is True and header["supernet_sha256"] == setup.supernet.sha256


def test_a_killed_worker_is_replaced_and_its_candidate_retried(
    tmp_path: Path, setup: EvaluationSetup, local_records: list[dict[str, Any]], ray_executor: Any
) -> None:
    cfgs = CFGS[:6]
    killed: list[str] = []

    def kill_the_other_worker(result: CandidateResult) -> None:
        # the other worker is busy with its candidate right now: kill it mid-run, once
        if not killed:
            names = {"ray-1": 0, "ray-2": 1}
            victim = ray_executor.actors[1 - names[result.worker]]
            killed.append(result.worker)
            ray.kill(victim, no_restart=True)

    out = tmp_path / "records.json"
    before = ray_executor.stats.retried
    summary = measure_subnets_accuracy(
        cfgs, setup, out, executor=ray_executor, progress=False, on_result=kill_the_other_worker
    )
    assert killed and ray_executor.stats.retried == before + 1
    assert summary.measured == 6 and [r["key"] for r in load_records(out)] == [c.key() for c in cfgs]
    assert measurements(summary.records) == measurements(local_records[:6])
    assert sorted(rec["attempts"] for rec in summary.records)[-1] == 2
    assert len(ray_executor.actors) == 2  # the replacement took the dead worker's place


def test_interrupted_ray_run_stops_the_cluster_and_resumes_locally(
    tmp_path: Path, setup: EvaluationSetup, local_records: list[dict[str, Any]], ray_executor: Any
) -> None:
    out = tmp_path / "records.json"

    def ctrl_c_after_two(result: CandidateResult) -> None:
        if len(load_records(out)) == 2:
            raise KeyboardInterrupt

    cfgs = CFGS[10:15]
    with pytest.raises(KeyboardInterrupt):
        measure_subnets_accuracy(
            cfgs, setup, out, executor=ray_executor, progress=False, on_result=ctrl_c_after_two
        )
    assert not ray.is_initialized()  # the workers were killed and the local Ray instance shut down
    assert ray_executor.actors == []
    assert len(load_records(out)) == 2
    # the record file is the source of truth: the rest is measured in this process, nothing twice
    summary = measure_subnets_accuracy(cfgs, setup, out, progress=False)
    assert (summary.already, summary.measured) == (2, 3)
    assert measurements(summary.records) == measurements(local_records[10:15])
