"""Accuracy sources for the architecture search: a predictor MLP, measured top-1, and a cache.

Every source implements :class:`AccuracySource`: ``predict(cfgs) -> list[float]``
gives the top-1 accuracy of each sub-network **in percent**, in the order given.

* :class:`MLPAccuracyPredictor` — an MLP on a one-hot architecture encoding. It loads
  OFA's own ImageNet predictor (``acc_predictor.pth``, MLP 128→400→400→400→1; public
  copy at :data:`OFA_PREDICTOR_URL`) and predictors fitted on measured records with
  :func:`offline_tools.predictor_fit.fit_mlp_predictor` (e.g. for the embedded model, whose
  resolutions are 96–160 px), saved as one safetensors file with JSON metadata.
* :class:`MeasuredAccuracy` — extract the sub-network, recalibrate its batch-norm
  statistics on a calibration image source at the sub-network's resolution, then
  batched top-1 on a validation image source.
* :class:`CachedAccuracy` — wraps another source with a JSON cache keyed by
  ``SubnetConfig.key()``, the super-network checksum and the dataset id, so that no
  candidate is ever evaluated twice (also across runs).

Encoding (OFA's ``spec2feats``): for each of the 20 blocks a one-hot of its kernel size
(3/5/7) and, after all kernel one-hots, a one-hot of its expand ratio (3/4/6); blocks
skipped by the stage depth are all zero; then a one-hot of the resolution slot
``(r - base_resolution) // step`` in ``n_slots`` slots (OFA: base 112, step 16, 8 slots).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # type: ignore[import-untyped]

from dynamic_ofa_ros.arch import N_BLOCKS, SubnetConfig
from dynamic_ofa_ros.timing import atomic_write_bytes, atomic_write_text, sha256_file
from offline_tools.errors import AccuracyPredictorError, DatasetError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from dynamic_ofa_ros.supernet import Supernet
    from offline_tools.datasets import ImageSet
    from offline_tools.executors import CandidateExecutor, CandidateResult, ExecutorSpec, ImageData

__all__ = [
    "OFA_PREDICTOR_SHA256",
    "OFA_PREDICTOR_URL",
    "AccuracySource",
    "CachedAccuracy",
    "MLPAccuracyPredictor",
    "MeasuredAccuracy",
    "PredictorEncoding",
    "build_mlp",
    "calibrated_subnet",
    "one_thread",
    "top1_accuracy",
]

#: Public download address of OFA's MobileNetV3 accuracy predictor (used by ``ofa.tutorial``).
OFA_PREDICTOR_URL = "https://raw.githubusercontent.com/han-cai/files/master/ofa/acc_predictor.pth"
#: SHA-256 of that file, to check a download.
OFA_PREDICTOR_SHA256 = "48685122a3540636b06699af66cd816456b25f29b69563e2fda9bed4018eeba0"

_META_KEY = "dynamic_ofa_ros.accuracy_predictor"
_META_VERSION = 1
_CACHE_FORMAT = "dynamic_ofa_ros.accuracy_cache"


@runtime_checkable
class AccuracySource(Protocol):
    """Anything that gives the top-1 accuracy (percent) of sub-networks.

    ``measured`` tells whether the numbers are measurements (level field ``accuracy``)
    or predictions (``predicted_accuracy``); ``dataset`` names what they refer to.
    """

    @property
    def measured(self) -> bool:
        """True for measured top-1, False for a prediction."""
        ...

    @property
    def dataset(self) -> str:
        """What the accuracy refers to, e.g. ``"imagenette holdout (1000)"`` or ``"ImageNet (predicted)"``."""
        ...

    def predict(self, cfgs: Sequence[SubnetConfig]) -> list[float]:
        """Top-1 accuracy in percent of each of ``cfgs``, in order."""
        ...


@contextmanager
def one_thread() -> Iterator[None]:
    """Run small MLP work on one CPU thread: with more, tiny matmuls spend most time synchronising."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictorEncoding:
    """The one-hot architecture encoding of an MLP predictor (see the module docstring)."""

    base_resolution: int = 112
    step: int = 16
    n_slots: int = 8
    ks_choices: tuple[int, ...] = (3, 5, 7)
    e_choices: tuple[int, ...] = (3, 4, 6)

    def __post_init__(self) -> None:
        if self.step <= 0 or self.n_slots <= 0 or self.base_resolution <= 0:
            raise AccuracyPredictorError(
                f"predictor encoding: base_resolution={self.base_resolution}, step={self.step} and "
                f"n_slots={self.n_slots} must be positive"
            )
        object.__setattr__(self, "ks_choices", tuple(sorted(int(v) for v in self.ks_choices)))
        object.__setattr__(self, "e_choices", tuple(sorted(int(v) for v in self.e_choices)))

    @property
    def n_inputs(self) -> int:
        """Length of the feature vector (128 for OFA's predictor)."""
        return N_BLOCKS * (len(self.ks_choices) + len(self.e_choices)) + self.n_slots

    @property
    def min_resolution(self) -> int:
        """Smallest resolution with a slot."""
        return self.base_resolution

    @property
    def max_resolution(self) -> int:
        """Largest resolution with a slot."""
        return self.base_resolution + self.n_slots * self.step - 1

    def grid(self) -> tuple[int, ...]:
        """The resolutions at the start of each slot; others share the slot of the grid point below."""
        return tuple(self.base_resolution + i * self.step for i in range(self.n_slots))

    def slot(self, resolution: int) -> int:
        """The resolution slot of ``resolution``; :class:`AccuracyPredictorError` when out of range."""
        index = (int(resolution) - self.base_resolution) // self.step
        if int(resolution) < self.base_resolution or index >= self.n_slots:
            raise AccuracyPredictorError(
                f"resolution {resolution} is outside the accuracy predictor's range "
                f"{self.min_resolution}..{self.max_resolution} px; restrict the search resolutions"
            )
        return index

    def encode(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        """Feature matrix ``(len(cfgs), n_inputs)`` float32."""
        n = len(cfgs)
        nk, ne = len(self.ks_choices), len(self.e_choices)
        ks_index = {v: i for i, v in enumerate(self.ks_choices)}
        e_index = {v: i for i, v in enumerate(self.e_choices)}
        feats = np.zeros((n, self.n_inputs), dtype=np.float32)
        e_base = N_BLOCKS * nk
        r_base = N_BLOCKS * (nk + ne)
        for row, cfg in enumerate(cfgs):
            for block in cfg.active_blocks():
                try:
                    feats[row, block * nk + ks_index[cfg.ks[block]]] = 1.0
                    feats[row, e_base + block * ne + e_index[cfg.e[block]]] = 1.0
                except KeyError:
                    raise AccuracyPredictorError(
                        f"{cfg.key()}: block {block} has kernel {cfg.ks[block]} / expand {cfg.e[block]}, "
                        f"the predictor knows kernels {self.ks_choices} and expands {self.e_choices}"
                    ) from None
            feats[row, r_base + self.slot(cfg.resolution)] = 1.0
        return feats

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "base_resolution": self.base_resolution,
            "step": self.step,
            "n_slots": self.n_slots,
            "ks_choices": list(self.ks_choices),
            "e_choices": list(self.e_choices),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str) -> PredictorEncoding:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                base_resolution=int(data["base_resolution"]),
                step=int(data["step"]),
                n_slots=int(data["n_slots"]),
                ks_choices=tuple(int(v) for v in data.get("ks_choices", (3, 5, 7))),
                e_choices=tuple(int(v) for v in data.get("e_choices", (3, 4, 6))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AccuracyPredictorError(f"{where}: malformed encoding metadata ({exc})") from exc


OFA_ENCODING = PredictorEncoding()
"""OFA's encoding: 20×3 kernel + 20×3 expand one-hots, resolution ``(r-112)//16`` in 8 slots."""


# --------------------------------------------------------------------------------------------
# MLP predictor
# --------------------------------------------------------------------------------------------


def _range_of(value: object, *, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, Iterable):
        raise AccuracyPredictorError(f"{where}: output_range {value!r} is not [low, high]")
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise AccuracyPredictorError(f"{where}: output_range {value!r} is not [low, high]") from None
    if not lo <= hi:
        raise AccuracyPredictorError(f"{where}: output_range {value!r} has low > high")
    return lo, hi


def build_mlp(n_inputs: int, hidden: int, n_layers: int) -> nn.Sequential:
    """The predictor's MLP (untrained): ``n_layers`` × (Linear(hidden) + ReLU), then Linear(1)."""
    layers: list[nn.Module] = []
    width = n_inputs
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _describe_shapes(state: Mapping[str, Any]) -> str:
    parts = []
    for key, value in list(state.items())[:10]:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        parts.append(f"{key}{list(shape) if isinstance(shape, tuple) else shape}")
    more = "" if len(state) <= 10 else f" (+{len(state) - 10} more)"
    return ", ".join(parts) + more if parts else "no tensors"


def _mlp_dims(state: Mapping[str, Any], *, where: str, expected: str) -> tuple[int, int, int]:
    """(n_inputs, hidden, n_layers) of an ``nn.Sequential`` MLP state dict (keys 0, 2, 4, ...)."""

    def fail(reason: str) -> AccuracyPredictorError:
        return AccuracyPredictorError(
            f"{where}: not an accuracy predictor of the expected shape ({reason}); expected {expected}, "
            f"found {_describe_shapes(state)}"
        )

    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise fail("not a dict of tensors")
    indices = sorted({int(k.split(".")[0]) for k in state if k.split(".")[0].isdigit()})
    expected_keys = {f"{i}.{p}" for i in indices for p in ("weight", "bias")}
    if not indices or set(state) != expected_keys or indices != list(range(0, 2 * len(indices), 2)):
        raise fail("keys are not those of nn.Sequential(Linear, ReLU, ..., Linear)")
    first = state["0.weight"]
    n_inputs, hidden = int(first.shape[1]), int(first.shape[0])
    for pos, idx in enumerate(indices):
        w, b = state[f"{idx}.weight"], state[f"{idx}.bias"]
        last = pos == len(indices) - 1
        want_w = (1 if last else hidden, n_inputs if pos == 0 else hidden)
        if tuple(w.shape) != want_w or tuple(b.shape) != (want_w[0],):
            raise fail(f"layer {idx} has weight {list(w.shape)} / bias {list(b.shape)}")
    return n_inputs, hidden, len(indices) - 1


@dataclass
class MLPAccuracyPredictor:
    """An MLP accuracy predictor with its encoding; output ``model(x) * scale + offset`` percent."""

    model: nn.Sequential
    encoding: PredictorEncoding = OFA_ENCODING
    output_scale: float = 100.0
    output_offset: float = 0.0
    name: str = "ofa"
    dataset_name: str = "ImageNet (OFA accuracy predictor)"
    sha256: str = ""
    resolutions: tuple[int, ...] | None = None
    output_range: tuple[float, float] | None = None
    fit_report: dict[str, Any] | None = None
    source: str = ""
    _cache: dict[str, float] = field(default_factory=dict, init=False, repr=False)

    measured = False

    def __post_init__(self) -> None:
        self.model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    @property
    def dataset(self) -> str:
        """What the predicted accuracy refers to."""
        return self.dataset_name

    @property
    def hidden(self) -> int:
        """Hidden width of the MLP."""
        first = self.model[0]
        assert isinstance(first, nn.Linear)
        return int(first.out_features)

    @property
    def n_layers(self) -> int:
        """Number of hidden layers."""
        return sum(isinstance(m, nn.Linear) for m in self.model) - 1

    def supported_resolutions(self, candidates: Iterable[int]) -> tuple[int, ...]:
        """The ``candidates`` the predictor can tell apart: on its trained list (if known) or slot grid.

        Resolutions between grid points share a slot with the grid point below, so a search
        over them would only ever pick the cheaper grid point.
        """
        allowed = set(self.resolutions) if self.resolutions else set(self.encoding.grid())
        return tuple(sorted(int(r) for r in candidates if int(r) in allowed))

    def predict_array(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        """Predicted top-1 (percent) as a float64 array; one batched forward pass."""
        if not cfgs:
            return np.zeros(0, dtype=np.float64)
        feats = torch.from_numpy(self.encoding.encode(cfgs))
        with torch.no_grad(), one_thread():
            out: np.ndarray = self.model(feats).reshape(-1).double().numpy()
        values = out * self.output_scale + self.output_offset
        if self.output_range is not None:
            # a fitted predictor is only trusted within what was measured: a search must not climb
            # into its extrapolation (the most "accurate" networks would be artefacts)
            values = np.clip(values, self.output_range[0], self.output_range[1])
        return np.asarray(values, dtype=np.float64)

    def predict(self, cfgs: Sequence[SubnetConfig]) -> list[float]:
        """Predicted top-1 (percent) of each of ``cfgs``."""
        return [float(v) for v in self.predict_array(cfgs)]

    def describe(self) -> dict[str, Any]:
        """Metadata for reports and level tables."""
        info: dict[str, Any] = {
            "kind": "mlp_predictor",
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "dataset": self.dataset_name,
            "architecture": f"{self.encoding.n_inputs}" + f"→{self.hidden}" * self.n_layers + "→1",
            "encoding": self.encoding.to_dict(),
        }
        if self.resolutions:
            info["resolutions"] = list(self.resolutions)
        if self.output_range:
            info["output_range"] = list(self.output_range)
        if self.fit_report:
            info["fit"] = self.fit_report
        return info

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MLPAccuracyPredictor:
        """Load OFA's ``acc_predictor.pth`` (``.pth``/``.pt``) or a fitted predictor (``.safetensors``)."""
        file = Path(path)
        if not file.is_file():
            raise AccuracyPredictorError(
                f"accuracy predictor {file} does not exist; download OFA's from {OFA_PREDICTOR_URL} "
                "or fit one with `dofa-levels fit-predictor`"
            )
        if file.suffix == ".safetensors":
            return cls._load_safetensors(file)
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise AccuracyPredictorError(
                f"{file}: cannot read it with torch.load(weights_only=True) ({type(exc).__name__}: {exc}); "
                f"expected OFA's acc_predictor.pth ({OFA_PREDICTOR_URL})"
            ) from exc
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise AccuracyPredictorError(f"{file}: expected a state dict, got {type(obj).__name__}")
        expected = "OFA's MLP 128→400→400→400→1 (nn.Sequential keys 0/2/4/6 .weight/.bias)"
        n_inputs, hidden, n_layers = _mlp_dims(obj, where=str(file), expected=expected)
        if (n_inputs, hidden, n_layers) != (OFA_ENCODING.n_inputs, 400, 3):
            dims = f"{n_inputs}" + f"→{hidden}" * n_layers + "→1"
            raise AccuracyPredictorError(
                f"{file}: the MLP is {dims}; expected {expected}. A predictor fitted for another space "
                "must be a .safetensors file written by `dofa-levels fit-predictor`"
            )
        model = build_mlp(n_inputs, hidden, n_layers)
        model.load_state_dict({k: v.float() for k, v in obj.items()})
        return cls(
            model=model,
            encoding=OFA_ENCODING,
            output_scale=100.0,
            output_offset=0.0,
            name="ofa",
            dataset_name="ImageNet (OFA accuracy predictor)",
            sha256=sha256_file(file),
            resolutions=(160, 176, 192, 208, 224),
            source=str(file),
        )

    @classmethod
    def _load_safetensors(cls, file: Path) -> MLPAccuracyPredictor:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="pt") as fh:
                raw_meta = fh.metadata() or {}
                state = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise AccuracyPredictorError(f"{file}: not a readable safetensors file ({exc})") from exc
        if _META_KEY not in raw_meta:
            raise AccuracyPredictorError(
                f"{file}: no {_META_KEY!r} metadata; this safetensors file was not written by "
                "`dofa-levels fit-predictor`"
            )
        try:
            meta = json.loads(raw_meta[_META_KEY])
            encoding = PredictorEncoding.from_dict(meta["encoding"], where=str(file))
            hidden, n_layers = int(meta["hidden"]), int(meta["n_layers"])
            scale, offset = float(meta["output_scale"]), float(meta["output_offset"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise AccuracyPredictorError(f"{file}: malformed predictor metadata ({exc})") from exc
        expected = f"an MLP {encoding.n_inputs}" + f"→{hidden}" * n_layers + "→1 (from its metadata)"
        dims = _mlp_dims(state, where=str(file), expected=expected)
        if dims != (encoding.n_inputs, hidden, n_layers):
            found = f"{dims[0]}" + f"→{dims[1]}" * dims[2] + "→1"
            raise AccuracyPredictorError(f"{file}: the weights are {found}; expected {expected}")
        model = build_mlp(encoding.n_inputs, hidden, n_layers)
        model.load_state_dict({k: v.float() for k, v in state.items()})
        resolutions = meta.get("resolutions")
        return cls(
            model=model,
            encoding=encoding,
            output_scale=scale,
            output_offset=offset,
            name=str(meta.get("name", file.stem)),
            dataset_name=str(meta.get("dataset", "fitted predictor")),
            sha256=sha256_file(file),
            resolutions=tuple(int(r) for r in resolutions) if resolutions else None,
            output_range=_range_of(meta.get("output_range"), where=str(file)),
            fit_report=meta.get("fit"),
            source=str(file),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write weights + metadata as one ``.safetensors`` file, atomically; returns the path."""
        from safetensors.torch import save as st_save

        target = Path(path)
        if target.suffix != ".safetensors":
            raise AccuracyPredictorError(f"{target}: a predictor is saved as .safetensors")
        meta = {
            "format": _META_KEY,
            "version": _META_VERSION,
            "name": self.name,
            "dataset": self.dataset_name,
            "encoding": self.encoding.to_dict(),
            "hidden": self.hidden,
            "n_layers": self.n_layers,
            "output_scale": self.output_scale,
            "output_offset": self.output_offset,
            "resolutions": list(self.resolutions) if self.resolutions else None,
            "output_range": list(self.output_range) if self.output_range else None,
            "fit": self.fit_report,
        }
        tensors = {k: v.detach().float().contiguous() for k, v in self.model.state_dict().items()}
        data = st_save(tensors, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
        atomic_write_bytes(target, data)
        self.sha256 = sha256_file(target)
        self.source = str(target)
        return target


# --------------------------------------------------------------------------------------------
# Measured accuracy
# --------------------------------------------------------------------------------------------


def calibrated_subnet(
    supernet: Supernet,
    cfg: SubnetConfig,
    calibration: ImageSet,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    timings: dict[str, float] | None = None,
) -> nn.Module:
    """Extract ``cfg``'s sub-network and recompute its BN statistics on ``calibration`` at its resolution.

    ``timings``, when given, receives the seconds of ``"extract"`` and ``"calibrate"``.
    """
    from dynamic_ofa_ros import bn

    started = time.perf_counter()
    module = bn.extract_subnet(supernet.net, cfg).to(device)
    extracted = time.perf_counter()
    bn.calibrate_bn(
        module, (x for x, _ in calibration.batches(cfg.resolution, batch_size=batch_size, device=device))
    )
    if timings is not None:
        timings["extract"] = extracted - started
        timings["calibrate"] = time.perf_counter() - extracted
    return module.eval()


def top1_accuracy(
    module: nn.Module,
    images: ImageSet,
    resolution: int,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "top-1",
) -> float:
    """Top-1 (percent) of ``module`` on labelled ``images`` at ``resolution`` (argmax over all classes)."""
    if not images.labelled:
        raise DatasetError(f"{images.name}: images have no labels; accuracy needs a labelled source")
    correct = 0
    total = 0
    n_batches = math.ceil(len(images) / batch_size)
    with torch.inference_mode():
        for x, labels in tqdm(
            images.batches(resolution, batch_size=batch_size, device=device),
            total=n_batches,
            desc=desc,
            disable=not progress,
            leave=False,
        ):
            assert labels is not None
            pred = module(x).argmax(dim=1).cpu()
            correct += int((pred == labels).sum())
            total += int(labels.numel())
    if total == 0:
        raise DatasetError(f"{images.name}: no images to evaluate")
    return 100.0 * correct / total


class MeasuredAccuracy:
    """Top-1 measured on a labelled validation set after BN calibration.

    The networks are measured by an executor (``executor``, :mod:`offline_tools.executors`):
    in this process one after another by default (grouped by resolution, so resized images are
    reused), or on Ray workers, several at a time. Call :meth:`close` when done (stops workers).
    Images are decoded sets, or :class:`~offline_tools.executors.ImageData` (e.g. decoded by
    each Ray worker from the same paths).
    """

    measured = True

    def __init__(
        self,
        supernet: Supernet,
        *,
        validation: ImageSet | ImageData,
        calibration: ImageSet | ImageData,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        progress: bool = True,
        executor: ExecutorSpec | None = None,
    ) -> None:
        if not validation.labelled:
            raise DatasetError(f"{validation.name}: the validation images have no labels")
        self.supernet = supernet
        self.validation = validation
        self.calibration = calibration
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self.executor = executor
        self.evaluated = 0
        self._running: CandidateExecutor | None = None

    @property
    def dataset(self) -> str:
        """The validation set's id."""
        return self.validation.name

    def measure(
        self, cfgs: Sequence[SubnetConfig], *, on_result: Callable[[CandidateResult], None] | None = None
    ) -> list[CandidateResult]:
        """Measure ``cfgs`` (results in order); ``on_result`` sees each as soon as it is finished."""
        from offline_tools.executors import EvaluationSetup, ExecutorSpec, ImageData, open_executor

        if self._running is None:

            def data(images: ImageSet | ImageData) -> ImageData:
                return images if isinstance(images, ImageData) else ImageData.decoded(images)

            setup = EvaluationSetup(
                supernet=self.supernet,
                calibration=data(self.calibration),
                validation=data(self.validation),
                device=str(self.device),
                batch_size=self.batch_size,
            )
            self._running = open_executor(
                self.executor or ExecutorSpec(), setup, progress=self.progress, desc="measure accuracy"
            )
        results = self._running.run(cfgs, on_result=on_result)
        self.evaluated += len(results)
        return results

    def predict(self, cfgs: Sequence[SubnetConfig]) -> list[float]:
        """Measured top-1 (percent) of each of ``cfgs``."""
        return [float(r.top1) for r in self.measure(cfgs) if r.top1 is not None]

    def close(self) -> None:
        """Stop the executor's workers (a later :meth:`measure` starts new ones)."""
        if self._running is not None:
            self._running.close()
            self._running = None


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


class CachedAccuracy:
    """A JSON cache in front of another source; a network is never evaluated twice.

    Entries live under ``entries[supernet_sha256][dataset][cfg.key()]``; the file is rewritten
    atomically after every chunk of new evaluations, so an interrupted run loses at most one chunk.
    """

    def __init__(
        self,
        inner: AccuracySource,
        path: str | os.PathLike[str],
        *,
        supernet_sha256: str,
        dataset: str | None = None,
        chunk: int = 8,
    ) -> None:
        self.inner = inner
        self.path = Path(path)
        self.supernet_sha256 = supernet_sha256
        self.dataset_id = dataset or inner.dataset
        self.chunk = max(1, chunk)
        self.hits = 0
        self.misses = 0
        self._data = self._read()
        self._entries: dict[str, float] = (
            self._data["entries"].setdefault(supernet_sha256, {}).setdefault(self.dataset_id, {})
        )

    @property
    def measured(self) -> bool:
        """Same as the wrapped source."""
        return bool(self.inner.measured)

    @property
    def dataset(self) -> str:
        """The dataset id of the cached numbers."""
        return self.dataset_id

    def __len__(self) -> int:
        return len(self._entries)

    def _read(self) -> dict[str, Any]:
        empty: dict[str, Any] = {"format": _CACHE_FORMAT, "version": 1, "entries": {}}
        if not self.path.exists():
            return empty
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AccuracyPredictorError(
                f"accuracy cache {self.path}: unreadable ({exc}); delete it to start a new cache"
            ) from exc
        if (
            not isinstance(data, dict)
            or data.get("format") != _CACHE_FORMAT
            or not isinstance(data.get("entries"), dict)
        ):
            raise AccuracyPredictorError(
                f"accuracy cache {self.path}: not a {_CACHE_FORMAT} file; give another path or delete it"
            )
        return data

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps(self._data, indent=1, sort_keys=True) + "\n")

    def close(self) -> None:
        """Close the wrapped source when it has workers to stop."""
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def predict(self, cfgs: Sequence[SubnetConfig]) -> list[float]:
        """Cached values; the missing networks (each once) are evaluated by the inner source."""
        missing: dict[str, SubnetConfig] = {}
        for cfg in cfgs:
            key = cfg.key()
            if key in self._entries:
                self.hits += 1
            elif key not in missing:
                missing[key] = cfg
        todo = sorted(missing.values(), key=lambda c: (c.resolution, c.key()))
        if isinstance(self.inner, MeasuredAccuracy) and todo:
            # one batch (a parallel executor measures it at once); every result is saved as it
            # arrives, so an interruption loses nothing finished
            def keep(result: CandidateResult) -> None:
                assert result.top1 is not None
                self._entries[result.key] = float(result.top1)
                self.misses += 1
                self._save()

            self.inner.measure(todo, on_result=keep)
            return [self._entries[cfg.key()] for cfg in cfgs]
        for start in range(0, len(todo), self.chunk):
            part = todo[start : start + self.chunk]
            values = self.inner.predict(part)
            for cfg, value in zip(part, values, strict=True):
                self._entries[cfg.key()] = float(value)
            self.misses += len(part)
            self._save()
        return [self._entries[cfg.key()] for cfg in cfgs]
