"""Super-network sources: the embedded model, OFA's ImageNet weights, a checkpoint, or random weights.

``load_supernet(source)`` loads the weights into torch and accepts

* ``"embedded"`` — the model shipped in :mod:`dynamic_ofa_ros.embedded` (fp16
  safetensors shards, each verified by SHA-256 before it is parsed);
* ``"ofa_zoo"`` — the OFA authors' ImageNet super-network
  ``ofa_mbv3_d234_e346_k357_w1.2`` as ``ofa.model_zoo.ofa_net`` builds it, weights
  read from the cache folder (``$DOFA_CACHE``, else ``$XDG_CACHE_HOME/dynamic_ofa_ros``,
  else ``~/.cache/dynamic_ofa_ros``; never the working directory) and downloaded
  there from the OFA file host when missing;
* a file path — ``.safetensors`` (preferred), or ``.pth``/``.pt`` read with
  ``torch.load(weights_only=True)``, either a plain state dict or OFA's
  ``{"state_dict": ...}`` layout (OFA's legacy key names are accepted); or a folder
  in the embedded layout (``manifest.json`` + shards);
* ``"random"`` / ``"random:<seed>"`` — a randomly initialised super-network (seed 0
  by default, deterministic), only with ``allow_random=True``; its accuracy is
  meaningless and :attr:`Supernet.meaningful_accuracy` is ``False``.

``open_supernet(source)`` (same arguments) identifies the super-network *without* loading
its weights where it can and returns a :class:`SupernetSource` that loads them on first need:
an embedded folder by its manifest (every shard's SHA-256 checked: hashing, no torch), a
weights file by the :class:`~dynamic_ofa_ros.supernet_index.IdentityIndex` of files loaded
before. The runtime (engine, level tables) needs only the identity while every compiled level
is in the cache, so a warm start never imports torch.

The one weights checksum, :func:`state_dict_sha256`, identifies a super-network
everywhere (level tables store it). This module imports torch only inside the functions that
need it; the loaders are :mod:`dynamic_ofa_ros.supernet_loaders`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynamic_ofa_ros import embedded as _embedded
from dynamic_ofa_ros.arch import SUPERNET_NAME, SearchSpace, SubnetConfig
from dynamic_ofa_ros.checksum import entries_sha256
from dynamic_ofa_ros.errors import ModelSourceError
from dynamic_ofa_ros.ofa_layout import bn_shapes
from dynamic_ofa_ros.supernet_index import FileStamp, IdentityIndex

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "OFA_RESOLUTIONS",
    "Supernet",
    "SupernetSource",
    "as_loaded",
    "as_source",
    "cache_dir",
    "export_embedded",
    "load_supernet",
    "ofa_zoo_cache_path",
    "ofa_zoo_weights_file",
    "open_supernet",
    "state_dict_sha256",
]

#: Input sizes the OFA MobileNetV3 super-network was trained on (elastic 128..224 px, step 4).
OFA_RESOLUTIONS: tuple[int, ...] = tuple(range(128, 225, 4))
#: ``(ks_list, expand_ratio_list, depth_list)`` of ``ofa_mbv3_d234_e346_k357_w1.2``.
_OFA_SPACE: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] = ((3, 5, 7), (3, 4, 6), (2, 3, 4))


@dataclass
class Supernet:
    """A loaded OFA MobileNetV3 super-network and where it came from.

    ``resolutions`` is the input-size range it was trained on; ``meaningful_accuracy``
    is ``False`` for random weights (any accuracy measured with them is meaningless).
    """

    net: nn.Module
    name: str
    source: str
    sha256: str
    resolutions: tuple[int, ...]
    meaningful_accuracy: bool
    n_classes: int = 1000
    width_mult: float = 1.2
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """The device the super-network's weights live on."""
        return next(self.net.parameters()).device

    def search_space(self, resolutions: tuple[int, ...] | None = None) -> SearchSpace:
        """The architecture space of this super-network (its trained resolutions unless given)."""
        from dynamic_ofa_ros.ofa_compat import supernet_space_lists

        ks, e, d = supernet_space_lists(self.net)
        return SearchSpace(
            ks_choices=ks, e_choices=e, d_choices=d, resolutions=resolutions or self.resolutions
        )

    def expected_bn_shapes(self, config: SubnetConfig) -> dict[str, tuple[int, ...]]:
        """BN state keys and shapes of ``config``'s extracted sub-network, read from the network's layers."""
        from dynamic_ofa_ros.bn import expected_bn_shapes

        return expected_bn_shapes(self.net, config)

    def identity(self) -> dict[str, Any]:
        """The ``"supernet"`` object of a level table: name, source, sha256, meaningful_accuracy."""
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "meaningful_accuracy": self.meaningful_accuracy,
        }


class SupernetSource:
    """A super-network known by its identity and layout; its weights are loaded on first :meth:`load`.

    Everything a level table or a warm compiled-level cache needs -- ``name``, ``source``,
    ``sha256``, ``resolutions``, ``meaningful_accuracy``, :meth:`identity`, :meth:`search_space`,
    :meth:`expected_bn_shapes` -- is answered without torch. :meth:`load` (thread-safe, once)
    loads the weights with :func:`load_supernet` and refuses them when they do not hash to
    ``sha256`` (the file changed since it was identified). Made by :func:`open_supernet`, or
    around a loaded :class:`Supernet` by :meth:`from_supernet`.
    """

    def __init__(
        self,
        *,
        name: str,
        source: str,
        sha256: str,
        resolutions: tuple[int, ...],
        meaningful_accuracy: bool,
        n_classes: int = 1000,
        width_mult: float = 1.2,
        space: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] = _OFA_SPACE,
        metadata: Mapping[str, Any] | None = None,
        loader: Callable[[], Supernet] | None = None,
        loaded: Supernet | None = None,
    ) -> None:
        if loader is None and loaded is None:
            raise ValueError("SupernetSource needs a loader or a loaded Supernet")
        self.name = name
        self.source = source
        self.sha256 = sha256
        self.resolutions = tuple(sorted(int(r) for r in resolutions))
        self.meaningful_accuracy = bool(meaningful_accuracy)
        self.n_classes = int(n_classes)
        self.width_mult = float(width_mult)
        self.ks_list, self.expand_ratio_list, self.depth_list = (tuple(int(v) for v in s) for s in space)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._loader = loader
        self._supernet = loaded
        self._lock = threading.Lock()

    @classmethod
    def from_supernet(cls, supernet: Supernet) -> SupernetSource:
        """The source of an already loaded super-network (:meth:`load` returns it)."""
        from dynamic_ofa_ros.ofa_compat import supernet_space_lists

        return cls(
            name=supernet.name,
            source=supernet.source,
            sha256=supernet.sha256,
            resolutions=supernet.resolutions,
            meaningful_accuracy=supernet.meaningful_accuracy,
            n_classes=supernet.n_classes,
            width_mult=supernet.width_mult,
            space=supernet_space_lists(supernet.net),
            metadata=supernet.metadata,
            loaded=supernet,
        )

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], *, source: str, loader: Callable[[], Supernet]
    ) -> SupernetSource:
        """A source from :meth:`record`'s fields (an identity-index entry or an embedded manifest)."""
        return cls(
            name=str(record["name"]),
            source=source,
            sha256=str(record["sha256"]),
            resolutions=tuple(record["resolutions"]),
            meaningful_accuracy=bool(record["meaningful_accuracy"]),
            n_classes=int(record["n_classes"]),
            width_mult=float(record["width_mult"]),
            space=(tuple(record["ks_list"]), tuple(record["expand_ratio_list"]), tuple(record["depth_list"])),
            metadata=record.get("metadata", {}),
            loader=loader,
        )

    def record(self) -> dict[str, Any]:
        """The identity and layout as JSON (what the identity index stores)."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "resolutions": list(self.resolutions),
            "meaningful_accuracy": self.meaningful_accuracy,
            "n_classes": self.n_classes,
            "width_mult": self.width_mult,
            "ks_list": list(self.ks_list),
            "expand_ratio_list": list(self.expand_ratio_list),
            "depth_list": list(self.depth_list),
            "metadata": dict(self.metadata),
        }

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (torch imported)."""
        return self._supernet is not None

    def load(self) -> Supernet:
        """The loaded super-network (loads it the first time; raises :class:`ModelSourceError`)."""
        with self._lock:
            if self._supernet is None:
                assert self._loader is not None
                supernet = self._loader()
                if supernet.sha256 != self.sha256:
                    raise ModelSourceError(
                        f"model {self.source!r}: the weights loaded now hash to {supernet.sha256[:16]}..., "
                        f"but they were identified as {self.sha256[:16]}... (the file changed since); "
                        "restart to identify it again"
                    )
                self._supernet = supernet
            return self._supernet

    def identity(self) -> dict[str, Any]:
        """The ``"supernet"`` object of a level table: name, source, sha256, meaningful_accuracy."""
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "meaningful_accuracy": self.meaningful_accuracy,
        }

    def search_space(self, resolutions: tuple[int, ...] | None = None) -> SearchSpace:
        """The architecture space (its trained resolutions unless given), from the recorded layout."""
        return SearchSpace(
            ks_choices=self.ks_list,
            e_choices=self.expand_ratio_list,
            d_choices=self.depth_list,
            resolutions=resolutions or self.resolutions,
        )

    def expected_bn_shapes(self, config: SubnetConfig) -> dict[str, tuple[int, ...]]:
        """BN state keys and shapes of ``config``'s sub-network: from the layers if loaded, else computed."""
        if self._supernet is not None:
            return self._supernet.expected_bn_shapes(config)
        return bn_shapes(config, width_mult=self.width_mult, expand_ratio_list=self.expand_ratio_list)


def as_source(supernet: Supernet | SupernetSource) -> SupernetSource:
    """``supernet`` as a :class:`SupernetSource` (a loaded :class:`Supernet` is wrapped)."""
    return supernet if isinstance(supernet, SupernetSource) else SupernetSource.from_supernet(supernet)


def as_loaded(supernet: Supernet | SupernetSource) -> Supernet:
    """The loaded super-network: ``supernet`` itself, or a source's weights (loaded on first need)."""
    return supernet.load() if isinstance(supernet, SupernetSource) else supernet


def state_dict_sha256(module: nn.Module | Mapping[str, torch.Tensor]) -> str:
    r"""The weights checksum used everywhere (hex SHA-256).

    Definition (version 1): SHA-256 over the header ``b"dynamic_ofa_ros.state_dict_sha256.v1\\n"``
    followed, for every **floating-point** entry of ``module.state_dict()`` in sorted key
    order (integer buffers such as ``num_batches_tracked`` are skipped), by
    ``key.encode("utf-8") + b"\\n" + ",".join(shape).encode() + b"\\n"`` and the tensor's
    values converted to float32, C-contiguous, little-endian. It does not depend on the
    device, on the stored dtype of float32-representable values (an fp16 file and its
    fp32 load hash the same), or on the active sub-network. Computed by
    :func:`dynamic_ofa_ros.checksum.entries_sha256`, whose NumPy form
    (:func:`~dynamic_ofa_ros.checksum.array_state_sha256`) gives the same digest without torch.
    """
    import torch
    from torch import nn

    state = module.state_dict() if isinstance(module, nn.Module) else module
    return entries_sha256(
        (key, state[key].detach().to(device="cpu", dtype=torch.float32).contiguous().numpy())
        for key in sorted(state)
        if state[key].is_floating_point()
    )


def cache_dir() -> Path:
    """Weights cache: ``$DOFA_CACHE``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) + ``/dynamic_ofa_ros``."""
    env = os.environ.get("DOFA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dynamic_ofa_ros"


def ofa_zoo_cache_path(net_id: str = SUPERNET_NAME) -> Path:
    """Where the OFA ImageNet weights of ``net_id`` are cached (``<cache_dir>/ofa_nets/<net_id>``)."""
    return cache_dir() / "ofa_nets" / net_id


def ofa_zoo_weights_file(net_id: str = SUPERNET_NAME) -> Path:
    """The OFA weights file to read: the cached one, else one in ofa's own folder, else the cache path."""
    path = ofa_zoo_cache_path(net_id)
    legacy = Path.home() / ".torch" / "ofa_nets" / net_id  # ofa.utils.download_url's default folder
    return legacy if not path.is_file() and legacy.is_file() else path


def _random_seed(text: str, allow_random: bool) -> int:
    if not allow_random:
        raise ModelSourceError(
            "a random-weight super-network was requested but not allowed: its accuracy is meaningless. "
            "Pass allow_random=True (CLI: --allow-random) for latency-only work, or use "
            "'embedded', 'ofa_zoo' or a checkpoint path"
        )
    seed_text = text.partition(":")[2] or "0"
    try:
        return int(seed_text)
    except ValueError as exc:
        raise ModelSourceError(f"model source {text!r}: the seed after 'random:' must be an integer") from exc


def _is_ofa_zoo(text: str) -> bool:
    return text in ("ofa_zoo", f"ofa_zoo:{SUPERNET_NAME}")


def load_supernet(
    source: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    allow_random: bool = False,
    download: bool = True,
) -> Supernet:
    """Load the super-network from ``source`` (see the module docstring); raise :class:`ModelSourceError`.

    ``download=False`` forbids fetching the OFA weights when they are not cached.
    """
    from dynamic_ofa_ros import supernet_loaders as loaders

    text = os.fspath(source)
    if text == "embedded":
        return loaders.from_manifest_dir(_embedded.EMBEDDED_DIR, source="embedded", device=device)
    if _is_ofa_zoo(text):
        return loaders.from_ofa_zoo(SUPERNET_NAME, device=device, download=download)
    if text == "random" or text.startswith("random:"):
        return loaders.random_supernet(_random_seed(text, allow_random), device=device)
    path = Path(text).expanduser()
    if not path.exists():
        raise ModelSourceError(
            f"model source {text!r} is neither 'embedded', 'ofa_zoo', 'random' nor an existing file or folder"
        )
    return loaders.from_checkpoint(path, device=device)


def _identified(text: str, load: Callable[[], Supernet]) -> SupernetSource | None:
    """A source identified without torch (embedded layout; a file in the identity index), else ``None``."""
    if text == "embedded" or (not _is_ofa_zoo(text) and Path(text).expanduser().is_dir()):
        folder = _embedded.EMBEDDED_DIR if text == "embedded" else Path(text).expanduser()
        manifest = _embedded.verify_embedded(folder)
        record = {**manifest, "sha256": manifest["state_dict_sha256"], "meaningful_accuracy": True}
        metadata = {k: v for k, v in manifest.items() if k != "shards"}
        source = "embedded" if text == "embedded" else str(folder)
        return SupernetSource.from_record({**record, "metadata": metadata}, source=source, loader=load)
    weights = ofa_zoo_weights_file() if _is_ofa_zoo(text) else Path(text).expanduser()
    if not weights.is_file():
        return None
    try:
        indexed = IdentityIndex().lookup(FileStamp.of(weights))
    except OSError:
        return None  # unreadable: the loader reports it
    if indexed is None:
        return None
    if _is_ofa_zoo(text):
        indexed["metadata"] = {**indexed["metadata"], "file": str(weights)}
    return SupernetSource.from_record(
        indexed, source="ofa_zoo" if _is_ofa_zoo(text) else str(weights), loader=load
    )


def open_supernet(
    source: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    allow_random: bool = False,
    download: bool = True,
) -> SupernetSource:
    """The super-network of ``source``, identified without loading its weights where possible.

    Same arguments and errors as :func:`load_supernet`. An embedded folder (``"embedded"`` or a
    path) is identified by its manifest after every shard's size and SHA-256 were checked; OFA's
    ImageNet file or a checkpoint file by the identity index (a file loaded before, same size and
    SHA-256). Anything else -- random weights, a file never loaded -- is loaded now (and a file
    then recorded in the index). :meth:`SupernetSource.load` loads the weights on first need.
    """
    text = os.fspath(source)

    def load() -> Supernet:
        return load_supernet(text, device=device, allow_random=allow_random, download=download)

    if text == "random" or text.startswith("random:"):
        _random_seed(text, allow_random)  # refused before anything is loaded, as load_supernet does
    identified = _identified(text, load)
    return identified if identified is not None else SupernetSource.from_supernet(load())


def export_embedded(
    net: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any],
    shard_mb: float = 15.0,
) -> dict[str, Any]:
    """Write ``net`` in the embedded layout (fp16 shards of ≤ ``shard_mb`` MiB + manifest) to ``out_dir``.

    ``metadata`` must hold ``resolutions`` (trained input sizes), ``dataset`` (str) and
    ``training`` (dict: recipe, seed, time, accuracy ...); optional ``name``. The
    architecture fields and ``state_dict_sha256`` (of the fp16-rounded weights, i.e. of
    what :func:`load_supernet` will load) are filled in. Raises :class:`ModelSourceError`
    when a weight does not fit in float16. Returns the manifest written.
    """
    from dynamic_ofa_ros import supernet_loaders  # the implementation; imported here: it needs torch

    return supernet_loaders.export_embedded(net, out_dir, metadata=metadata, shard_mb=shard_mb)
