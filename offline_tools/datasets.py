"""Image sources for calibration and evaluation: an ImageFolder directory, a zip of one, a rosbag topic.

Every source yields ``(rgb, label)`` pairs: ``rgb`` an ``(H, W, 3)`` ``uint8`` RGB array,
``label`` an ImageNet-1k class index or ``None`` (unlabelled images still serve for BN
calibration). Order is deterministic: sorted member paths for folders and zips (or the
order of an explicit file list), message order for a bag.

Labels come from the image's parent folder name (``<split>/<class>/<file>``):

* ``label_map="auto"`` (default): ImageNet wnids of the Imagenette classes map to their
  ImageNet indices (:data:`IMAGENETTE_WNIDS`), folder names that are integers are used as
  the index, anything else leaves the images unlabelled;
* a mapping ``{folder name: ImageNet index}`` (e.g. read from a JSON file);
* ``"none"``: no labels.

Subsets: ``files`` keeps only the listed members (in the list's order: a text file with one
member path per line, a JSON list, or ``split.json:holdout`` for a key of a JSON object such as
the split written by ``offline_tools/train_supernet.py``), ``exclude`` drops listed members,
``sample=N`` keeps a seeded random N (original order kept), ``limit=N`` keeps the first N.
"""

from __future__ import annotations

import io
import json
import os
import random
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict, Unpack, cast, runtime_checkable

import numpy as np
import torch
from tqdm import tqdm  # type: ignore[import-untyped]

from dynamic_ofa_ros.errors import DofaError
from offline_tools.errors import DatasetError

if TYPE_CHECKING:
    from rosbags.highlevel import AnyReader

__all__ = [
    "IMAGENETTE_WNIDS",
    "IMAGE_EXTENSIONS",
    "ConcatSource",
    "ImageFolderSource",
    "ImageSet",
    "ImageSource",
    "RosbagImageSource",
    "ZipImageFolderSource",
    "decode_rgb_square",
    "open_image_source",
    "pack_images",
    "pick_evenly",
    "read_file_list",
    "read_label_map",
    "read_members",
]

#: ImageNet-1k indices of the ten Imagenette classes (fast.ai's subset of ImageNet).
IMAGENETTE_WNIDS: dict[str, int] = {
    "n01440764": 0,  # tench
    "n02102040": 217,  # English springer
    "n02979186": 482,  # cassette player
    "n03000684": 491,  # chain saw
    "n03028079": 497,  # church
    "n03394916": 566,  # French horn
    "n03417042": 569,  # garbage truck
    "n03425413": 571,  # gas pump
    "n03445777": 574,  # golf ball
    "n03888257": 701,  # parachute
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_IMAGE_TOPIC_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")

Sample = tuple[np.ndarray, int | None]


@runtime_checkable
class ImageSource(Protocol):
    """A finite, deterministic sequence of ``(rgb uint8 HWC, label or None)``."""

    @property
    def name(self) -> str:
        """Identifier used in reports, caches and level tables (files, subset and count)."""
        ...

    @property
    def labelled(self) -> bool:
        """Whether every image has a label."""
        ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Sample]: ...


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def read_file_list(spec: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """Member names from a list, a text file (one per line), a JSON list, or ``file.json:key``."""
    if not isinstance(spec, str | os.PathLike):
        return [str(s) for s in spec]
    text = os.fspath(spec)
    key = None
    path = Path(text)
    if not path.exists() and ":" in text:
        head, _, key = text.rpartition(":")
        path = Path(head)
    if not path.is_file():
        raise DatasetError(f"file list {text} does not exist")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"file list {path}: unreadable ({exc})") from exc
    if path.suffix == ".json" or key is not None:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"file list {path}: not valid JSON ({exc})") from exc
        if key is not None:
            if not isinstance(data, Mapping) or key not in data:
                keys = sorted(data) if isinstance(data, Mapping) else []
                raise DatasetError(f"file list {path}: no key {key!r} (keys: {', '.join(keys) or 'none'})")
            data = data[key]
        if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
            raise DatasetError(f"file list {text}: expected a JSON list of member names")
        return list(data)
    return [line.strip() for line in raw.splitlines() if line.strip() and not line.startswith("#")]


def read_label_map(path: str | os.PathLike[str]) -> dict[str, int]:
    """A JSON object ``{folder name: ImageNet index}``."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"label map {file} does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"label map {file}: not a JSON object ({exc})") from exc
    if not isinstance(data, Mapping) or not all(isinstance(v, int) for v in data.values()):
        raise DatasetError(f"label map {file}: expected {{folder name: integer class index}}")
    return {str(k): int(v) for k, v in data.items()}


def _resolve_labels(
    classes: Iterable[str | None], label_map: Mapping[str, int] | str | None, *, where: str
) -> dict[str, int] | None:
    names = sorted({c for c in classes if c is not None})
    if label_map is None or label_map == "none":
        return None
    if isinstance(label_map, Mapping):
        unknown = [c for c in names if c not in label_map]
        if unknown:
            raise DatasetError(
                f"{where}: class folder {unknown[0]!r} is not in the label map ({len(unknown)} unknown)"
            )
        return dict(label_map)
    if label_map != "auto":
        raise DatasetError(f"{where}: label_map must be 'auto', 'none' or a mapping, not {label_map!r}")
    if names and all(c in IMAGENETTE_WNIDS for c in names):
        return dict(IMAGENETTE_WNIDS)
    if names and all(c.isdigit() for c in names):
        return {c: int(c) for c in names}
    return None


def _select(
    members: list[str],
    *,
    files: Sequence[str] | None,
    exclude: Sequence[str] | None,
    sample: int | None,
    limit: int | None,
    seed: int,
    where: str,
) -> list[str]:
    if files is not None:
        have = set(members)
        missing = [f for f in files if f not in have]
        if missing:
            raise DatasetError(
                f"{where}: {len(missing)} listed file(s) are not in the source, e.g. {missing[0]!r}"
            )
        seen: set[str] = set()
        members = [f for f in files if not (f in seen or seen.add(f))]  # type: ignore[func-returns-value]
    if exclude:
        dropped = set(exclude)
        members = [m for m in members if m not in dropped]
    if sample is not None:
        if sample <= 0:
            raise DatasetError(f"{where}: sample={sample} must be positive")
        if sample < len(members):
            chosen = set(random.Random(seed).sample(range(len(members)), sample))
            members = [m for i, m in enumerate(members) if i in chosen]
    if limit is not None:
        if limit <= 0:
            raise DatasetError(f"{where}: limit={limit} must be positive")
        members = members[:limit]
    return members


#: A file list: a text file of member names (one per line) or the names themselves.
_FileList = str | os.PathLike[str] | Sequence[str]


class _SourceOptions(TypedDict, total=False):
    """The keyword options of every folder/zip source (see :class:`_MemberSource`)."""

    label_map: Mapping[str, int] | str | None
    files: _FileList | None
    exclude: _FileList | None
    sample: int | None
    limit: int | None
    seed: int


def _list_tag(spec: _FileList) -> str:
    """A file list as it appears in a source's name: the file's name (no folders) or a count."""
    if isinstance(spec, str | os.PathLike):
        return Path(spec).name
    return f"{len(spec)} names"


def _subset_tag(
    files: _FileList | None, exclude: _FileList | None, sample: int | None, limit: int | None, seed: int
) -> str:
    parts = []
    if files is not None:
        parts.append(f"files={_list_tag(files)}")
    if exclude is not None:
        parts.append(f"exclude={_list_tag(exclude)}")
    if sample is not None:
        parts.append(f"sample={sample}@{seed}")
    if limit is not None:
        parts.append(f"first={limit}")
    return f" [{', '.join(parts)}]" if parts else ""


def _decode(data: bytes, member: str, where: str) -> np.ndarray:
    from dynamic_ofa_ros.image_input import decode_compressed

    fmt = Path(member).suffix.lower().lstrip(".")
    fmt = "jpeg" if fmt == "jpg" else fmt
    try:
        return decode_compressed(data, fmt=fmt)
    except DofaError as exc:
        raise DatasetError(f"{where}: cannot decode {member}: {exc}") from exc


def decode_rgb_square(data: bytes, size: int) -> tuple[np.ndarray, bool]:
    """Decode an image with Pillow into ``(size, size, 3)`` uint8 RGB; also whether it was resized.

    The training decoder (``offline_tools.training.data``): Pillow, then a bilinear resize only
    when the image is not ``size`` x ``size`` already (Imagenette's 128 px zips: never). Kept apart
    from the sources' OpenCV decoding because the trained weights and their resumable runs depend
    on these exact pixels.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
        resized = rgb.size != (size, size)
        if resized:
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8), resized


def _zip_image_names(file: Path) -> list[str]:
    """The image members of zip ``file`` in zip order (macOS ``._`` resource forks left out)."""
    if not file.is_file():
        raise DatasetError(f"zip {file} does not exist")
    try:
        with zipfile.ZipFile(file) as zf:
            return [
                info.filename
                for info in zf.infolist()
                if not info.is_dir()
                and Path(info.filename).suffix.lower() in IMAGE_EXTENSIONS
                and not Path(info.filename).name.startswith("._")
            ]
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{file}: not a readable zip file ({exc})") from exc


def _parent(member: str) -> str | None:
    parts = member.replace("\\", "/").split("/")
    return parts[-2] if len(parts) >= 2 else None


# --------------------------------------------------------------------------------------------
# Folder and zip
# --------------------------------------------------------------------------------------------


class _MemberSource:
    """Shared logic of folder and zip sources: the options, members, labels, subset.

    The keyword options (see the module docstring) are defined and validated here, once;
    a subclass only lists its members in :meth:`_list_members`.
    """

    kind = "images"

    def __init__(
        self,
        location: str | os.PathLike[str],
        /,
        *,
        label_map: Mapping[str, int] | str | None = "auto",
        files: str | os.PathLike[str] | Sequence[str] | None = None,
        exclude: str | os.PathLike[str] | Sequence[str] | None = None,
        sample: int | None = None,
        limit: int | None = None,
        seed: int = 0,
    ) -> None:
        self.location = Path(location)
        all_members = self._list_members()
        where = str(self.location)
        if not all_members:
            raise DatasetError(
                f"{where}: no images ({', '.join(IMAGE_EXTENSIONS)}) found; give an ImageFolder "
                "(<root>/<class>/<image>) or a folder of images"
            )
        file_list = read_file_list(files) if files is not None else None
        exclude_list = read_file_list(exclude) if exclude is not None else None
        self.members = _select(
            all_members,
            files=file_list,
            exclude=exclude_list,
            sample=sample,
            limit=limit,
            seed=seed,
            where=where,
        )
        if not self.members:
            raise DatasetError(
                f"{where}: the selection{_subset_tag(files, exclude, sample, limit, seed)} is empty"
            )
        self._labels = _resolve_labels((_parent(m) for m in self.members), label_map, where=where)
        if self._labels is not None and any(_parent(m) is None for m in self.members):
            self._labels = None
        self._name = (
            f"{self.location.name}{_subset_tag(files, exclude, sample, limit, seed)} ({len(self.members)})"
        )

    def _list_members(self) -> list[str]:
        """Every image member of :attr:`location`, sorted; :class:`DatasetError` when unreadable."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """``<file or folder>[subset] (<count>)``."""
        return self._name

    @property
    def labelled(self) -> bool:
        """Whether labels are known for the images."""
        return self._labels is not None

    def label_of(self, member: str) -> int | None:
        """ImageNet index of ``member`` (from its folder), or ``None``."""
        if self._labels is None:
            return None
        parent = _parent(member)
        return None if parent is None else self._labels[parent]

    def __len__(self) -> int:
        return len(self.members)


class ImageFolderSource(_MemberSource):
    """Images below a directory (``<root>/<class>/<image>`` or flat); members are paths relative to it.

    ``ImageFolderSource(root, *, label_map="auto", files=None, exclude=None, sample=None,
    limit=None, seed=0)``: the options are those of the module docstring.
    """

    def _list_members(self) -> list[str]:
        root = self.location
        if not root.is_dir():
            raise DatasetError(f"image folder {root} does not exist")
        return sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )

    def __iter__(self) -> Iterator[Sample]:
        for member in self.members:
            try:
                data = (self.location / member).read_bytes()
            except OSError as exc:
                raise DatasetError(f"{self.location}: cannot read {member} ({exc})") from exc
            yield _decode(data, member, str(self.location)), self.label_of(member)


class ZipImageFolderSource(_MemberSource):
    """Images inside a zip of an ImageFolder (e.g. Imagenette ``val-224px.zip``); members are zip names.

    ``ZipImageFolderSource(path, *, label_map="auto", files=None, exclude=None, sample=None,
    limit=None, seed=0)``: the options are those of the module docstring.
    """

    def _list_members(self) -> list[str]:
        return sorted(_zip_image_names(self.location))

    def __iter__(self) -> Iterator[Sample]:
        with zipfile.ZipFile(self.location) as zf:
            for member in self.members:
                yield _decode(zf.read(member), member, str(self.location)), self.label_of(member)


class ConcatSource:
    """Several sources one after the other (e.g. both halves of a split training set)."""

    def __init__(self, sources: Sequence[ImageSource]) -> None:
        if not sources:
            raise DatasetError("no image source given")
        self.sources = list(sources)

    @property
    def name(self) -> str:
        """The parts' names joined with ``+``."""
        return " + ".join(s.name for s in self.sources)

    @property
    def labelled(self) -> bool:
        """Whether every part is labelled."""
        return all(s.labelled for s in self.sources)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __iter__(self) -> Iterator[Sample]:
        for source in self.sources:
            yield from source


class _ZipGroup(_MemberSource):
    """Several zips treated as one member space (file lists may span them, e.g. train part1 + part2)."""

    def __init__(self, paths: Sequence[Path], **options: Unpack[_SourceOptions]) -> None:
        self.paths = list(paths)
        self._owner: dict[str, Path] = {}
        super().__init__(Path("+".join(p.name for p in self.paths)), **options)

    def _list_members(self) -> list[str]:
        for file in self.paths:
            for name in _zip_image_names(file):
                if name in self._owner:
                    raise DatasetError(f"{name} is in both {self._owner[name].name} and {file.name}")
                self._owner[name] = file
        return sorted(self._owner)

    def __iter__(self) -> Iterator[Sample]:
        handles = {p: zipfile.ZipFile(p) for p in self.paths}
        try:
            for member in self.members:
                data = handles[self._owner[member]].read(member)
                yield _decode(data, member, self._owner[member].name), self.label_of(member)
        finally:
            for zf in handles.values():
                zf.close()


# --------------------------------------------------------------------------------------------
# Rosbag
# --------------------------------------------------------------------------------------------


class _CompressedImageMessage(Protocol):
    """The fields of ``sensor_msgs/msg/CompressedImage`` read here."""

    data: np.ndarray
    format: str


class _ImageMessage(Protocol):
    """The fields of ``sensor_msgs/msg/Image`` read here."""

    data: np.ndarray
    width: int
    height: int
    step: int
    encoding: str
    is_bigendian: int


class RosbagImageSource:
    """The images of one topic of a rosbag (ROS 2 folder/.db3/.mcap or ROS 1 .bag), unlabelled."""

    labelled = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        topic: str,
        sample: int | None = None,
        limit: int | None = None,
        seed: int = 0,
    ) -> None:
        self.path = Path(path)
        self.topic = topic
        self._reader_paths = [self.path]
        topics = self._topics()
        if topic not in topics:
            listing = ", ".join(f"{t} ({m}, {n})" for t, (m, n) in sorted(topics.items())) or "none"
            raise DatasetError(f"{self.path}: no topic {topic!r}; the bag has: {listing}")
        msgtype, count = topics[topic]
        if msgtype not in _IMAGE_TOPIC_TYPES:
            raise DatasetError(
                f"{self.path}: topic {topic} carries {msgtype}; "
                "expected sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage"
            )
        if count == 0:
            raise DatasetError(f"{self.path}: topic {topic} has no messages")
        indices = [str(i) for i in range(count)]
        chosen = _select(
            indices, files=None, exclude=None, sample=sample, limit=limit, seed=seed, where=str(self.path)
        )
        self._indices = {int(i) for i in chosen}
        self._count = len(chosen)
        self._name = f"{self.path.name}:{topic}{_subset_tag(None, None, sample, limit, seed)} ({self._count})"

    def _open(self) -> AnyReader:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        return AnyReader(self._reader_paths, default_typestore=get_typestore(Stores.ROS2_HUMBLE))

    def _topics(self) -> dict[str, tuple[str, int]]:
        if not self.path.exists():
            raise DatasetError(f"rosbag {self.path} does not exist")
        try:
            with self._open() as reader:
                topics: dict[str, tuple[str, int]] = {}
                for conn in reader.connections:
                    old = topics.get(conn.topic, (conn.msgtype, 0))
                    topics[conn.topic] = (conn.msgtype, old[1] + int(conn.msgcount))
                return topics
        except DofaError:
            raise
        except Exception as exc:  # rosbags raises its own error types for unreadable bags
            raise DatasetError(f"{self.path}: not a readable rosbag ({type(exc).__name__}: {exc})") from exc

    @property
    def name(self) -> str:
        """``<bag>:<topic>[subset] (<count>)``."""
        return self._name

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Sample]:
        from dynamic_ofa_ros.image_input import decode_compressed, image_from_buffer

        with self._open() as reader:
            conns = [c for c in reader.connections if c.topic == self.topic]
            for index, (conn, _ts, raw) in enumerate(reader.messages(connections=conns)):
                if index not in self._indices:
                    continue
                # rosbags types a message by its name at run time: deserialize() returns object.
                msg = reader.deserialize(raw, conn.msgtype)
                try:
                    if conn.msgtype.endswith("CompressedImage"):
                        packed = cast(_CompressedImageMessage, msg)
                        rgb = decode_compressed(bytes(packed.data), fmt=str(packed.format) or "jpeg")
                    else:
                        image = cast(_ImageMessage, msg)
                        rgb = image_from_buffer(
                            image.data,
                            width=int(image.width),
                            height=int(image.height),
                            step=int(image.step),
                            encoding=str(image.encoding),
                            is_bigendian=bool(image.is_bigendian),
                        )
                except DofaError as exc:
                    raise DatasetError(f"{self.path}:{self.topic} message {index}: {exc}") from exc
                yield rgb, None


# --------------------------------------------------------------------------------------------
# Opening by path
# --------------------------------------------------------------------------------------------


def _is_rosbag(path: Path) -> bool:
    if path.is_file():
        return path.suffix in (".bag", ".db3", ".mcap")
    return path.is_dir() and (path / "metadata.yaml").is_file()


def open_image_source(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    topic: str | None = None,
    label_map: Mapping[str, int] | str | None = "auto",
    files: str | os.PathLike[str] | Sequence[str] | None = None,
    exclude: str | os.PathLike[str] | Sequence[str] | None = None,
    sample: int | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> ImageSource:
    """Open a folder, a zip (several zips act as one, so file lists may span them) or a rosbag topic."""
    items = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    if not items:
        raise DatasetError("no image source given")
    for item in items:
        if not item.exists():
            raise DatasetError(f"image source {item} does not exist")
    if any(_is_rosbag(p) for p in items):
        if len(items) != 1:
            raise DatasetError("give one rosbag at a time")
        if topic is None:
            raise DatasetError(f"{items[0]} is a rosbag: give its image topic (--topic)")
        if files is not None or exclude is not None:
            raise DatasetError("file lists do not apply to a rosbag")
        return RosbagImageSource(items[0], topic=topic, sample=sample, limit=limit, seed=seed)
    if topic is not None:
        raise DatasetError(f"--topic is only for rosbags; {items[0]} is not one")
    kwargs: _SourceOptions = {
        "label_map": label_map,
        "files": files,
        "exclude": exclude,
        "sample": sample,
        "limit": limit,
        "seed": seed,
    }
    if all(p.is_file() and p.suffix.lower() == ".zip" for p in items):
        if len(items) == 1:
            return ZipImageFolderSource(items[0], **kwargs)
        return _ZipGroup(items, **kwargs)
    if len(items) == 1 and items[0].is_dir():
        return ImageFolderSource(items[0], **kwargs)
    if all(p.is_dir() for p in items):
        if files is not None or exclude is not None:
            raise DatasetError("file lists need a single folder (or zips)")
        return ConcatSource([ImageFolderSource(p, **kwargs) for p in items])
    raise DatasetError(
        f"unsupported image source {', '.join(map(str, items))}: give an ImageFolder directory, "
        ".zip file(s) of one, or a rosbag (folder with metadata.yaml, .db3, .mcap, .bag) with --topic"
    )


# --------------------------------------------------------------------------------------------
# Raw files: a few photos picked evenly
# --------------------------------------------------------------------------------------------


def pick_evenly(names: Sequence[str], n: int) -> list[str]:
    """``n`` names spread evenly over the sorted ``names`` (deterministic; all when there are fewer).

    Spread, not sampled: the picks of a sorted ImageFolder cover every class.
    """
    ordered = sorted(names)
    if len(ordered) <= n:
        return ordered
    step = len(ordered) / n
    return [ordered[int(i * step)] for i in range(n)]


def read_members(path: str | os.PathLike[str], n: int | None = None) -> list[tuple[str, bytes]]:
    """``(member, file bytes)`` of the images of a folder or a zip, sorted; ``n``: :func:`pick_evenly`."""
    location = Path(path)
    if location.is_file() and location.suffix.lower() == ".zip":
        members = ZipImageFolderSource(location, label_map="none").members
        chosen = pick_evenly(members, len(members) if n is None else n)
        with zipfile.ZipFile(location) as zf:
            return [(member, zf.read(member)) for member in chosen]
    if location.is_dir():
        members = ImageFolderSource(location, label_map="none").members
        chosen = pick_evenly(members, len(members) if n is None else n)
        return [(member, (location / member).read_bytes()) for member in chosen]
    raise DatasetError(f"{location}: not a folder or a .zip file of images")


def pack_images(src: str | os.PathLike[str], dst: str | os.PathLike[str], n: int) -> int:
    """Copy ``n`` evenly picked images of a folder or zip, bytes unchanged, into a new zip ``dst``.

    For carrying a few real photos to a machine without the data set. Returns the number copied.
    """
    from dynamic_ofa_ros.timing import atomic_write_bytes

    picked = read_members(src, n)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as out:
        for member, data in picked:
            out.writestr(member, data)
    atomic_write_bytes(dst, buf.getvalue())
    return len(picked)


# --------------------------------------------------------------------------------------------
# Decoded images in memory
# --------------------------------------------------------------------------------------------


@dataclass
class ImageSet:
    """Decoded images (and labels) of a source, held in memory; batches them at any resolution.

    The input tensors of the last resolution used are kept (``cache=True``, when they take at
    most ``cache_bytes``), so evaluating several networks of one resolution preprocesses the
    images once.
    """

    name: str
    images: list[np.ndarray]
    labels: list[int] | None
    cache: bool = True
    cache_bytes: int = 1536 * 2**20
    _cached: tuple[int, str, int, list[torch.Tensor]] | None = field(default=None, init=False, repr=False)

    @classmethod
    def load(
        cls, source: ImageSource, *, progress: bool = True, desc: str = "decode images", cache: bool = True
    ) -> ImageSet:
        """Decode every image of ``source``; :class:`DatasetError` when it yields none."""
        images: list[np.ndarray] = []
        labels: list[int | None] = []
        for rgb, label in tqdm(source, total=len(source), desc=desc, disable=not progress, leave=False):
            images.append(rgb)
            labels.append(label)
        if not images:
            raise DatasetError(f"{source.name}: no images")
        known = None if any(v is None for v in labels) else [int(v) for v in labels if v is not None]
        return cls(name=source.name, images=images, labels=known, cache=cache)

    @property
    def labelled(self) -> bool:
        """Whether every image has a label."""
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.images)

    def batches(
        self, resolution: int, *, batch_size: int = 64, device: str | torch.device = "cpu"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """``(inputs (B, 3, r, r), labels (B,) int64 or None)`` in order, preprocessed like the engine."""
        from dynamic_ofa_ros.preprocess import to_input_batch

        dev = str(torch.device(device))
        if self._cached is not None and self._cached[:3] == (resolution, dev, batch_size):
            for i, batch in enumerate(self._cached[3]):
                yield batch, self._label_batch(i * batch_size, batch_size)
            return
        self._cached = None  # free the previous resolution's tensors before making new ones
        use_cache = self.cache and len(self.images) * 3 * resolution * resolution * 4 <= self.cache_bytes
        tensors: list[torch.Tensor] = []
        for start in range(0, len(self.images), batch_size):
            batch = to_input_batch(self._stacked(start, batch_size), resolution=resolution, device=device)
            if use_cache:
                tensors.append(batch)
            yield batch, self._label_batch(start, batch_size)
        if use_cache:  # only reached when the caller consumed every batch
            self._cached = (resolution, dev, batch_size, tensors)

    def _stacked(self, start: int, size: int) -> np.ndarray | list[np.ndarray]:
        """One (N, H, W, 3) array when the images share a size (batched resize), else the list."""
        items = self.images[start : start + size]
        if all(im.shape == items[0].shape for im in items):
            return np.stack(items)
        return items

    def _label_batch(self, start: int, size: int) -> torch.Tensor | None:
        if self.labels is None:
            return None
        return torch.tensor(self.labels[start : start + size], dtype=torch.int64)
