"""LevelEngine: outputs equal the extracted sub-networks', switch semantics, validation.

A real 3-level table is built from a random supernet (``conftest.py``; accuracy meaningless).
Nothing is timed: thread tests use events, and join timeouts only detect deadlocks.
"""

from __future__ import annotations

import copy
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dynamic_ofa_ros.arch import SubnetConfig
from dynamic_ofa_ros.bn import extract_subnet, load_bn_state
from dynamic_ofa_ros.engine import InferenceResult, LevelEngine, topk
from dynamic_ofa_ros.errors import ImageError, LevelTableError, ModelSourceError, UnknownLevelError
from dynamic_ofa_ros.levels import LevelTable
from dynamic_ofa_ros.preprocess import to_input_tensor
from dynamic_ofa_ros.supernet import Supernet, load_supernet
from dynamic_ofa_ros.table_builder import build_level_table

torch.set_num_threads(1)
DEADLOCK_S = 120.0  # only to fail instead of hanging; never a performance assertion


def uniform(r: int, k: int, e: int, d: int) -> SubnetConfig:
    return SubnetConfig(resolution=r, ks=(k,) * 20, e=(e,) * 20, d=(d,) * 5)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (120, 150, 3), dtype=np.uint8)


def test_levels_and_memory(engine: LevelEngine, table: LevelTable) -> None:
    assert [lv.level for lv in engine.levels] == [1, 2, 3]
    assert engine.current_level == 1
    mem = engine.memory_mb
    assert set(mem) == {1, 2, 3} and all(v > 1 for v in mem.values())
    by_macs = sorted(table.levels, key=lambda lv: lv.macs_m or 0)
    assert mem[by_macs[0].level] < mem[by_macs[-1].level]
    assert engine.execution[1]["mode"] == "eager"
    assert engine.backend == "torch" and engine.warnings == ()  # the table was profiled in torch
    assert engine.execution[1]["backend"] == "torch" and engine.execution[1]["precision"] == "f32"
    assert engine.execution[1]["backend_version"] == torch.__version__
    assert engine.threads == 1
    assert engine.meaningful_accuracy is False


def test_engine_output_equals_extracted_subnet(
    engine: LevelEngine, rand: Supernet, table: LevelTable, image: np.ndarray
) -> None:
    assert table.bn is not None
    for lv in table.levels:
        sub = extract_subnet(rand.net, lv.config)
        load_bn_state(sub, table.bn[lv.level], where=f"level {lv.level}")
        with torch.inference_mode():
            expected = torch.softmax(sub(to_input_tensor(image, resolution=lv.resolution)), dim=1)[0].numpy()
        engine.switch(lv.level)
        result = engine.infer(image)
        assert isinstance(result, InferenceResult)
        assert result.level == lv.level
        assert result.probs.shape == (1000,) and result.probs.dtype == np.float32
        np.testing.assert_allclose(result.probs, expected, rtol=1e-5, atol=1e-7)
        assert result.inference_ms > 0
        # BN statistics from the table really are used (not the super-network's)
        plain = extract_subnet(rand.net, lv.config)
        with torch.inference_mode():
            other = torch.softmax(plain(to_input_tensor(image, resolution=lv.resolution)), dim=1)[0].numpy()
        assert not np.allclose(other, expected, rtol=1e-3, atol=1e-6)


def test_infer_batch_matches_infer(engine: LevelEngine, image: np.ndarray) -> None:
    engine.switch(2)
    single = engine.infer(image).probs
    batch = engine.infer_batch([image, image[:100]], level=2)
    assert batch.shape == (2, 1000)
    np.testing.assert_allclose(batch[0], single, rtol=1e-4, atol=1e-6)


def test_switch_semantics(engine: LevelEngine, image: np.ndarray) -> None:
    engine.switch(3)
    assert engine.current_level == 3
    assert engine.infer(image).level == 3
    for bad in (0, 4, -1, "2", True, 2.0, None):
        with pytest.raises(UnknownLevelError):
            engine.switch(bad)  # type: ignore[arg-type]
        assert engine.current_level == 3, "a rejected switch leaves the level unchanged"
    engine.switch(np.int64(1))  # type: ignore[arg-type]
    assert engine.infer(image).level == 1
    with pytest.raises(UnknownLevelError, match=r"levels 1\.\.3"):
        engine.switch(9)


def test_switch_does_not_wait_for_inflight_inference(engine: LevelEngine, image: np.ndarray) -> None:
    engine.switch(1)
    runner = engine.runner(1)
    entered, release = threading.Event(), threading.Event()

    def hold(_module: Any, _inputs: Any) -> None:
        entered.set()
        assert release.wait(DEADLOCK_S)

    handle = runner.module.register_forward_pre_hook(hold)
    results: list[InferenceResult] = []
    worker = threading.Thread(target=lambda: results.append(engine.infer(image)))
    try:
        worker.start()
        assert entered.wait(DEADLOCK_S)
        engine.switch(3)  # must return while level 1 is still running
        assert engine.current_level == 3
    finally:
        release.set()
        worker.join(DEADLOCK_S)
        handle.remove()
    assert not worker.is_alive()
    assert results[0].level == 1, "the in-flight frame finishes on the level it started with"
    assert engine.infer(image).level == 3, "the next frame uses the new level"


def test_concurrent_switching(engine: LevelEngine, image: np.ndarray) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def switcher(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                engine.switch(rng.choice([1, 2, 3]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=switcher, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    try:
        seen = {engine.infer(image[:64, :64]).level for _ in range(12)}
    finally:
        stop.set()
        for t in threads:
            t.join(DEADLOCK_S)
    assert not errors
    assert seen <= {1, 2, 3}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((10, 10), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((10, 10, 4), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        ("not an image", "numpy array or tensor"),
    ],
)
def test_bad_images(engine: LevelEngine, bad: Any, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        engine.infer(bad)


def test_topk() -> None:
    probs = np.array([0.1, 0.5, 0.2, 0.2], dtype=np.float32)
    assert topk(probs, 2) == [(1, 0.5), (2, pytest.approx(0.2))]
    assert len(topk(probs, 10)) == 4
    # ties resolve by index, whichever tied entries the partition happens to pick
    tied = np.array([0.1, 0.3, 0.3, 0.3, 0.0, 0.3], dtype=np.float32)
    assert [i for i, _ in topk(tied, 3)] == [1, 2, 3]
    flat = np.full(1000, 1e-3, dtype=np.float32)
    flat[[7, 900]] = 2e-3
    assert [i for i, _ in topk(flat, 5)] == [7, 900, 0, 1, 2]
    rng = np.random.default_rng(0)
    for _ in range(20):  # the same classes as a full stable sort
        p = rng.random(1000).astype(np.float32)
        assert [i for i, _ in topk(p, 5)] == np.argsort(-p, kind="stable")[:5].tolist()


def test_table_checks(rand: Supernet, table: LevelTable) -> None:
    family = copy.copy(table)
    family.bn = None
    with pytest.raises(LevelTableError, match="no BN statistics"):
        LevelEngine(rand, family)
    other = load_supernet("random:1", allow_random=True)
    with pytest.raises(LevelTableError, match="this table was built for supernet"):
        LevelEngine(other, table)
    gpu_table = copy.copy(table)
    gpu_table.device = "cuda"
    with pytest.raises(LevelTableError, match=r"profiled on 'cuda'.*load config/levels/cpu\.json"):
        LevelEngine(rand, gpu_table)
    assert LevelEngine(rand, gpu_table, check_device=False, warmup=0).current_level == 1
    # the GPU host's profiling thread count does not carry over to this CPU
    gpu_table.profiling = {**table.profiling, "threads": 16}
    before = torch.get_num_threads()
    assert LevelEngine(rand, gpu_table, check_device=False, warmup=0).threads == before
    with pytest.raises(ModelSourceError, match="half=True needs CUDA"):
        LevelEngine(rand, table, half=True)
    with pytest.raises(ModelSourceError, match="not supported"):
        LevelEngine(rand, table, device="mps")
    with pytest.raises(UnknownLevelError):
        LevelEngine(rand, table, initial_level=7, warmup=0)


def test_cuda_unavailable_is_clear(rand: Supernet, table: LevelTable) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ModelSourceError, match="CUDA is not available"):
        LevelEngine(rand, table, device="cuda")


# ------------------------------------------------------------------------------------------ CUDA


@pytest.fixture(scope="module")
def cuda_engine(rand: Supernet, table: LevelTable) -> LevelEngine:
    gpu = copy.copy(rand)
    gpu.net = copy.deepcopy(rand.net).cuda()
    return LevelEngine(gpu, table, device="cuda", check_device=False, half=False, channels_last=False)


def cpu_model_on_gpu_input(engine: LevelEngine, level: int, image: np.ndarray) -> np.ndarray:
    """The CPU engine's level-``level`` module on the GPU-preprocessed input (the preprocessing
    implementations may differ by one grey level; this isolates graph + model equality)."""
    runner = engine.runner(level)
    x = to_input_tensor(image, resolution=runner.resolution, device="cuda").cpu()
    with torch.inference_mode():
        return runner.body(x)[0].numpy()


@pytest.mark.cuda
def test_cuda_graph_engine_matches_cpu(
    cuda_engine: LevelEngine, engine: LevelEngine, image: np.ndarray
) -> None:
    for n in (1, 2, 3):
        assert cuda_engine.execution[n]["mode"] == "cuda_graph"
        cuda_engine.switch(n)
        first = cuda_engine.infer(image)  # captures the graphs for this image shape
        again = cuda_engine.infer(image)  # replays them
        assert first.level == again.level == n
        np.testing.assert_allclose(again.probs, first.probs, rtol=0, atol=1e-7)
        # cuDNN convolutions run in TF32 by default (PyTorch's cudnn.allow_tf32): ~1e-3 relative
        # error per layer, seen on the H100 as up to 4 % on small probabilities.
        np.testing.assert_allclose(again.probs, cpu_model_on_gpu_input(engine, n, image), rtol=0, atol=5e-3)
        assert cuda_engine.memory_mb[n] > 0


@pytest.mark.cuda
def test_cuda_other_shapes_and_switching(cuda_engine: LevelEngine, engine: LevelEngine) -> None:
    rng = np.random.default_rng(3)
    shapes = [(64, 80), (90, 70), (120, 150), (33, 47), (200, 100), (48, 48)]  # more than max_shapes
    for shape in shapes:
        img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        for n in (3, 1, 2):
            cuda_engine.switch(n)
            engine.switch(n)
            got = cuda_engine.infer(img)
            assert got.level == n
            # TF32 convolutions; random weights make the top probabilities sensitive (H100: 0.008)
            np.testing.assert_allclose(got.probs, cpu_model_on_gpu_input(engine, n, img), rtol=0, atol=2e-2)
    tensor_img = torch.from_numpy(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    assert cuda_engine.infer(tensor_img).probs.shape == (1000,)


@pytest.mark.cuda
def test_cuda_auto_precision(
    rand: Supernet, table: LevelTable, image: np.ndarray, engine: LevelEngine
) -> None:
    gpu = copy.copy(rand)
    gpu.net = copy.deepcopy(rand.net).cuda()
    auto = LevelEngine(gpu, table, device="cuda", check_device=False, warmup_shapes=[image.shape[:2]])
    for n in (1, 2, 3):
        auto.switch(n)
        engine.switch(n)
        # auto may pick fp16 (measured faster) and preprocessing differs by a grey level: compare the
        # distributions by total variation (a wrong level or garbage output gives ~1; H100: 0.045)
        got, want = auto.infer(image).probs, engine.infer(image).probs
        assert 0.5 * float(np.abs(got - want).sum()) < 0.1


# ------------------------------------------------------------------------- embedded model, real photos

IMAGENETTE = {
    "n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
    "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701,
}  # fmt: skip


def _photos(zip_path: Path, n: int, seed: int) -> list[tuple[np.ndarray, int]]:
    import zipfile

    from dynamic_ofa_ros.image_input import decode_compressed

    with zipfile.ZipFile(zip_path) as archive:
        names = sorted(x for x in archive.namelist() if x.lower().endswith(".jpeg"))
        random.Random(seed).shuffle(names)
        return [
            (decode_compressed(archive.read(name), fmt="jpeg"), IMAGENETTE[name.split("/")[-2]])
            for name in names[:n]
        ]


@pytest.mark.slow
def test_embedded_model_classifies_real_photos(shared_dir: Path) -> None:
    """End to end with real weights: calibrate one level's BN on training photos, classify held-out photos."""
    from dynamic_ofa_ros import embedded

    if not (embedded.EMBEDDED_DIR / embedded.MANIFEST_NAME).exists():
        pytest.skip("the embedded model is not in this checkout yet (offline_tools/train_supernet.py)")
    data = shared_dir / "datasets" / "imagenette"
    model = load_supernet("embedded")
    calib = _photos(data / "train-128px-part2.zip", 128, seed=1)
    batches = [np.stack([im for im, _ in calib[i : i + 64]]) for i in range(0, len(calib), 64)]
    cfg = uniform(128, 5, 4, 3)
    table = build_level_table(model, [cfg], calibration_batches=batches, warmup=0, iterations=1, threads=1)
    engine = LevelEngine(model, table, threads=1, warmup=0)
    val = _photos(data / "val-224px.zip", 60, seed=2)
    correct = sum(int(engine.infer(im).probs.argmax() == label) for im, label in val)
    assert correct / len(val) >= 0.6, f"top-1 {correct}/{len(val)} with the embedded model"
