"""Loading what the level-building subcommands work on: latency table, model, images, accuracy."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from dynamic_ofa_ros.supernet import Supernet, load_supernet
from offline_tools.accuracy import AccuracySource, CachedAccuracy, MeasuredAccuracy, MLPAccuracyPredictor
from offline_tools.cli.common import UsageError
from offline_tools.cli.options import AccuracyOptions, ImageOptions, ModelOptions, SpaceOptions
from offline_tools.datasets import ImageSet, ImageSource, open_image_source, read_label_map
from offline_tools.executors import ExecutorSpec, ImageData
from offline_tools.latency.table import LatencyTable

__all__ = [
    "accuracy_source",
    "device_label",
    "image_data",
    "image_set",
    "load_latency_table",
    "load_model",
    "open_images",
    "search_resolutions",
]


def load_latency_table(path: str | None) -> LatencyTable:
    """The latency table in ``path`` (``--latency-table``)."""
    if not path:
        raise UsageError("give --latency-table DIR (or --profile-out DIR with build)")
    return LatencyTable.load(path)


def device_label(explicit: str | None, table: LatencyTable) -> str:
    """``explicit`` (``--device-label``), else the table's device (``cpu``/``cuda``), else its folder name."""
    if explicit:
        return explicit
    meta = table.metadata
    for key in ("device_label", "device"):
        value = meta.get(key)
        if isinstance(value, str) and value:
            return value.split(":")[0]
    return Path(str(table.name)).name or "device"


def load_model(options: ModelOptions, *, device: str | None = None) -> Supernet:
    """The super-network of ``--model`` on ``device`` (default ``--torch-device``).

    With a parallel executor the driver keeps it on the CPU (``device="cpu"``): the workers put
    the sub-networks on their own GPUs, and the driver needs none.
    """
    if not options.model:
        raise UsageError("give --model (embedded, ofa_zoo, a checkpoint path, or random with --allow-random)")
    return load_supernet(
        options.model, device=device or options.torch_device, allow_random=options.allow_random
    )


def image_set(options: ImageOptions | None, *, flag: str, progress: bool) -> ImageSet:
    """Decode the images of ``options``; :class:`UsageError` naming ``--<flag>`` when none are given."""
    return ImageSet.load(open_images(options, flag=flag), progress=progress, desc=f"decode {flag}")


def open_images(options: ImageOptions | None, *, flag: str) -> ImageSource:
    """The image source of ``options``, not yet decoded; :class:`UsageError` when none is given."""
    if options is None:
        purpose = "calibration" if flag == "calib" else "top-1"
        raise UsageError(f"give --{flag} PATH (images for {purpose})")
    return open_image_source(
        options.paths,
        topic=options.topic,
        label_map=read_label_map(options.label_map) if options.label_map else "auto",
        files=options.files,
        exclude=options.exclude,
        sample=options.sample,
        limit=options.limit,
        seed=options.seed,
    )


@dataclass(frozen=True)
class _DecodeOnWorker:
    """A picklable loader: a Ray worker decodes ``options`` itself (``--ray-data path``)."""

    options: ImageOptions
    flag: str

    def __call__(self) -> ImageSet:
        return image_set(self.options, flag=self.flag, progress=False)


def _absolute(spec: str | None) -> str | None:
    """``spec`` (a path, or ``file.json:key``) with an existing file made absolute; else as given."""
    if spec is None:
        return None
    head, sep, key = spec.rpartition(":") if ":" in spec and not Path(spec).exists() else (spec, "", "")
    return f"{Path(head).resolve()}{sep}{key}" if Path(head).exists() else spec


def image_data(options: ImageOptions | None, *, flag: str, spec: ExecutorSpec, progress: bool) -> ImageData:
    """The images of ``--<flag>`` for the executor: decoded here, or (Ray, ``path``) by each worker.

    With ``path`` the workers get the paths made absolute (their working directory is not ours);
    on a cluster every node must see them there.
    """
    if spec.kind == "ray" and spec.data == "path":
        source = open_images(options, flag=flag)
        assert options is not None  # open_images refused None
        on_workers = replace(
            options,
            paths=tuple(_absolute(p) or p for p in options.paths),
            files=_absolute(options.files),
            exclude=_absolute(options.exclude),
            label_map=_absolute(options.label_map),
        )
        return ImageData(
            name=source.name,
            count=len(source),
            labelled=source.labelled,
            loader=_DecodeOnWorker(on_workers, flag),
        )
    return ImageData.decoded(image_set(options, flag=flag, progress=progress))


def accuracy_source(
    options: AccuracyOptions,
    model: Supernet | None,
    *,
    model_options: ModelOptions,
    progress: bool,
    executor: ExecutorSpec | None = None,
) -> AccuracySource:
    """The predictor (``--accuracy-predictor``) or measured top-1 (model + images), cached if asked."""
    if options.predictor:
        return MLPAccuracyPredictor.load(options.predictor)
    if model is None:
        raise UsageError(
            "give --accuracy-predictor FILE, or --model with validation images for measured accuracy"
        )
    if not model.meaningful_accuracy:
        raise UsageError("a measured-accuracy search needs real weights, not a random super-network")
    spec = executor or ExecutorSpec()
    validation = image_data(options.validation, flag="val", spec=spec, progress=progress)
    calibration = image_data(options.calibration, flag="calib", spec=spec, progress=progress)
    source: AccuracySource = MeasuredAccuracy(
        model,
        validation=validation,
        calibration=calibration,
        device=model_options.torch_device,
        batch_size=model_options.batch_size,
        progress=progress,
        executor=spec,
    )
    if options.cache:
        source = CachedAccuracy(
            source,
            options.cache,
            supernet_sha256=model.sha256,
            dataset=f"{validation.name} | calib {calibration.name}",
        )
    return source


def search_resolutions(
    space: SpaceOptions, table: LatencyTable, accuracy: AccuracySource, model: Supernet | None
) -> tuple[int, ...]:
    """The resolutions to search.

    ``--resolutions`` (each must be in the table), else the table's resolutions that the accuracy
    source distinguishes and the model was trained at.
    """
    if space.resolutions:
        wanted = sorted(set(space.resolutions))
        missing = [r for r in wanted if r not in table.resolutions]
        if missing:
            raise UsageError(
                f"the latency table has no resolution {missing} "
                f"(it has {list(table.resolutions)}); profile them"
            )
        return tuple(wanted)
    resolutions = list(table.resolutions)
    if isinstance(accuracy, MLPAccuracyPredictor):
        resolutions = list(accuracy.supported_resolutions(resolutions))
    if model is not None:
        resolutions = [r for r in resolutions if r in model.resolutions]
    return tuple(resolutions)
