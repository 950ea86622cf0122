"""Option groups of the level-building subcommands: their flags and their typed form.

Each group is a frozen dataclass with ``from_args`` (argparse Namespace -> typed options) beside
the function that adds its flags, so a flag and the field it fills are read together.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dynamic_ofa_ros.arch import SearchSpace
from dynamic_ofa_ros.backends import BACKENDS, PRECISIONS
from dynamic_ofa_ros.errors import ArchitectureError
from offline_tools.cli.common import UsageError
from offline_tools.search import SearchSettings

__all__ = [
    "AccuracyOptions",
    "CalibrationOptions",
    "ImageOptions",
    "ModelOptions",
    "SearchOptions",
    "SpaceOptions",
    "add_backend_args",
    "add_images_args",
    "add_latency_args",
    "add_model_args",
    "add_search_args",
    "add_space_args",
]


# --------------------------------------------------------------------------------------------
# Search space
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpaceOptions:
    """The search space's choices; ``resolutions=None``: derived from the table, predictor, model."""

    resolutions: tuple[int, ...] | None = None
    ks: tuple[int, ...] = (3, 5, 7)
    e: tuple[int, ...] = (3, 4, 6)
    d: tuple[int, ...] = (2, 3, 4)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SpaceOptions:
        """The options of :func:`add_space_args`."""
        return cls(
            resolutions=tuple(args.resolutions) if args.resolutions else None,
            ks=tuple(args.ks),
            e=tuple(args.e),
            d=tuple(args.d),
        )

    def space(self, resolutions: tuple[int, ...]) -> SearchSpace:
        """The search space at ``resolutions``; :class:`UsageError` for an empty or invalid one."""
        if not resolutions:
            raise UsageError(
                "no resolution is left to search (check --resolutions, the table and the predictor)"
            )
        try:
            return SearchSpace(
                ks_choices=self.ks, e_choices=self.e, d_choices=self.d, resolutions=resolutions
            )
        except ArchitectureError as exc:
            raise UsageError(str(exc)) from exc


def add_space_args(p: argparse.ArgumentParser) -> None:
    """``--resolutions --ks --e --d`` (:class:`SpaceOptions`)."""
    g = p.add_argument_group("search space")
    g.add_argument(
        "--resolutions",
        type=int,
        nargs="+",
        help="input sizes to search (default: the latency table's, restricted to those the accuracy "
        "source distinguishes and the model was trained at)",
    )
    g.add_argument("--ks", type=int, nargs="+", default=[3, 5, 7], help="kernel sizes (default 3 5 7)")
    g.add_argument("--e", type=int, nargs="+", default=[3, 4, 6], help="expand ratios (default 3 4 6)")
    g.add_argument("--d", type=int, nargs="+", default=[2, 3, 4], help="stage depths (default 2 3 4)")


# --------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchOptions:
    """Algorithm 1 + evolution settings and how many levels to choose from the front."""

    settings: SearchSettings = SearchSettings()
    levels: int | None = None
    """Number of levels (default 7 on a CPU, 6 otherwise)."""
    min_step: float = 1.0
    min_accuracy: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SearchOptions:
        """The options of :func:`add_search_args`."""
        settings = SearchSettings(
            acc_max=args.acc_max,
            acc_r=args.acc_r,
            lat_init=args.lat_init,
            lat_add=args.lat_add,
            lat_max=args.lat_max,
            itr_n=args.itr_n,
            itr_max=args.itr_max,
            population=args.population,
            generations=args.generations,
            mutation_prob=args.mutation_prob,
            parent_ratio=args.parent_ratio,
            mutation_ratio=args.mutation_ratio,
            targets=args.targets,
            seed=args.seed,
        )
        return cls(
            settings=settings, levels=args.levels, min_step=args.min_step, min_accuracy=args.min_accuracy
        )

    def n_levels(self, device: str) -> int:
        """:attr:`levels`, else 7 for a CPU table and 6 otherwise."""
        if self.levels is not None:
            return self.levels
        return 7 if "cpu" in device.lower() else 6


def add_search_args(p: argparse.ArgumentParser) -> None:
    """The flags of :class:`SearchOptions` (defaults from :class:`SearchSettings`)."""
    d = SearchSettings()
    g = p.add_argument_group("search (Algorithm 1 + regularised evolution)")
    g.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    g.add_argument(
        "--levels", type=int, default=None, help="number of levels to choose (default 7 on CPU, 6 otherwise)"
    )
    g.add_argument(
        "--min-step", type=float, default=1.0, help="minimum accuracy step between levels (points)"
    )
    g.add_argument("--min-accuracy", type=float, help="ignore architectures below this accuracy (percent)")
    g.add_argument("--acc-max", type=float, help="one target: upper accuracy bound (default: sweep targets)")
    g.add_argument("--acc-r", type=float, default=d.acc_r, help=f"accuracy range (default {d.acc_r})")
    g.add_argument("--lat-init", type=float, help="initial latency constraint, ms (default: fastest network)")
    g.add_argument(
        "--lat-add",
        type=float,
        help="constraint increment, ms (default: reach the target latency at itr-max)",
    )
    g.add_argument(
        "--lat-max", type=float, help="latency cap, ms (default: 1.05 x the most accurate network's)"
    )
    g.add_argument("--itr-n", type=int, default=d.itr_n, help=f"iterations per increment (default {d.itr_n})")
    g.add_argument(
        "--itr-max", type=int, default=d.itr_max, help=f"max random iterations (default {d.itr_max})"
    )
    g.add_argument("--population", type=int, default=d.population, help=f"default {d.population}")
    g.add_argument("--generations", type=int, default=d.generations, help=f"default {d.generations}")
    g.add_argument("--mutation-prob", type=float, default=d.mutation_prob, help=f"default {d.mutation_prob}")
    g.add_argument("--parent-ratio", type=float, default=d.parent_ratio, help=f"default {d.parent_ratio}")
    g.add_argument(
        "--mutation-ratio", type=float, default=d.mutation_ratio, help=f"default {d.mutation_ratio}"
    )
    g.add_argument("--targets", type=int, default=d.targets, help=f"sweep points (default {d.targets})")


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageOptions:
    """One image source (``--calib``/``--val``/``--search-val`` and their companions)."""

    paths: tuple[str, ...]
    topic: str | None = None
    files: str | None = None
    exclude: str | None = None
    limit: int | None = None
    sample: int | None = None
    label_map: str | None = None
    """JSON ``{class folder: ImageNet index}``; ``None``: Imagenette wnids."""
    seed: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace, prefix: str) -> ImageOptions | None:
        """The ``--<prefix>*`` options (``prefix``: calib or val) of :func:`add_images_args`, or None."""
        paths = getattr(args, prefix, None)
        if not paths:
            return None
        return cls(
            paths=tuple(paths),
            topic=getattr(args, f"{prefix}_topic", None),
            files=getattr(args, f"{prefix}_files", None),
            exclude=getattr(args, f"{prefix}_exclude", None),
            limit=getattr(args, f"{prefix}_images", None),
            sample=getattr(args, f"{prefix}_sample", None),
            label_map=args.label_map,
            seed=args.data_seed,
        )


def add_images_args(
    p: argparse.ArgumentParser, *, calib_default: int | None = 2000, val: bool = True
) -> None:
    """``--calib*`` (and ``--val*`` with ``val``), ``--label-map``, ``--data-seed``."""
    g = p.add_argument_group("images")
    g.add_argument(
        "--calib",
        nargs="+",
        metavar="PATH",
        help="BN calibration images: ImageFolder dir, zip(s) of one, or a rosbag (with --calib-topic)",
    )
    g.add_argument("--calib-topic", help="image topic when --calib is a rosbag")
    g.add_argument(
        "--calib-files", help="only these members (text list, JSON list, or split.json:calibration)"
    )
    g.add_argument("--calib-exclude", help="drop these members (same formats)")
    g.add_argument(
        "--calib-images",
        type=int,
        default=calib_default,
        help=f"use the first N calibration images (default {calib_default})",
    )
    g.add_argument("--calib-sample", type=int, help="use a seeded random sample of N images instead")
    if val:
        g.add_argument("--val", nargs="+", metavar="PATH", help="labelled validation images for top-1")
        g.add_argument("--val-files", help="only these members (e.g. split.json:holdout)")
        g.add_argument("--val-exclude", help="drop these members")
        g.add_argument("--val-images", type=int, help="use the first N validation images (default all)")
        g.add_argument("--val-sample", type=int, help="use a seeded random sample of N images instead")
    g.add_argument("--label-map", help="JSON {class folder: ImageNet index} (default: Imagenette wnids)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of --*-sample (default 0)")


# --------------------------------------------------------------------------------------------
# Model, calibration, latency table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelOptions:
    """The super-network and where and how it runs."""

    model: str | None = None
    allow_random: bool = False
    torch_device: str = "cpu"
    threads: int | None = None
    compute_threads: int | None = None
    batch_size: int = 64

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelOptions:
        """The options of :func:`add_model_args`."""
        return cls(
            model=args.model,
            allow_random=args.allow_random,
            torch_device=args.torch_device,
            threads=args.threads,
            compute_threads=args.compute_threads,
            batch_size=args.batch_size,
        )


def add_model_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    """``--model --allow-random --torch-device --threads --compute-threads --batch-size``."""
    g = p.add_argument_group("model and device")
    g.add_argument(
        "--model",
        required=required,
        help="super-network: embedded, ofa_zoo, random[:seed] (with --allow-random) or a checkpoint path",
    )
    g.add_argument("--allow-random", action="store_true", help="accept random weights (latency-only work)")
    g.add_argument("--torch-device", default="cpu", help="where to run the model: cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, help="CPU threads of the engine / latency (default: torch's)")
    g.add_argument(
        "--compute-threads",
        type=int,
        help="CPU threads of BN calibration and evaluation (default: --threads)",
    )
    g.add_argument("--batch-size", type=int, default=64, help="batch size of calibration/evaluation")


@dataclass(frozen=True)
class CalibrationOptions:
    """BN calibration, top-1 and latency measurement of each level."""

    calibration: ImageOptions | None
    validation: ImageOptions | None = None
    warmup: int = 10
    iterations: int = 50
    cuda_graphs: bool = True
    min_step: float = 0.0
    """Drop levels less than this many measured points above the previous one."""
    backend: str | None = None
    """The backend the levels' latency is measured in (``None``: the latency table's, else torch)."""
    precision: str = "f32"
    cache_dir: str | None = None
    """Where a compiled backend keeps the levels' ONNX files (``None``: the platform's cache)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, min_step: float) -> CalibrationOptions:
        """The images (``--calib*``, ``--val*``), timing and backend flags of ``calibrate``/``build``."""
        return cls(
            calibration=ImageOptions.from_args(args, "calib"),
            validation=ImageOptions.from_args(args, "val"),
            warmup=args.warmup,
            iterations=args.iterations,
            cuda_graphs=not args.no_cuda_graphs,
            min_step=min_step,
            backend=getattr(args, "backend", None),
            precision=getattr(args, "precision", "f32"),
            cache_dir=getattr(args, "cache_dir", None),
        )


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """``--backend --precision --cache-dir``: what the levels' latency is measured in."""
    g = p.add_argument_group("execution backend")
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="measure the levels' latency in this backend, as the engine will run them (default: the"
        " latency table's backend -- a family records it -- else torch)",
    )
    g.add_argument(
        "--precision", choices=PRECISIONS, default="f32", help="a compiled backend's precision (default f32)"
    )
    g.add_argument("--cache-dir", help="compiled-level cache of a compiled backend (default: the platform's)")


def add_latency_args(p: argparse.ArgumentParser) -> None:
    """``--latency-table`` and ``--device-label``."""
    p.add_argument("--latency-table", help="latency look-up table directory (OFA YAML or JSON tables)")
    p.add_argument(
        "--device-label", help="the table's device name, e.g. cpu or cuda (default: from the table)"
    )


@dataclass(frozen=True)
class AccuracyOptions:
    """Where the search's accuracy comes from: a predictor file, or top-1 measured on images."""

    predictor: str | None = None
    """OFA ``acc_predictor.pth`` or a fitted ``.safetensors`` predictor."""
    cache: str | None = None
    """JSON cache of measured accuracies."""
    validation: ImageOptions | None = None
    calibration: ImageOptions | None = None
