"""Tests of offline_tools.datasets: ImageFolder dirs, zips, rosbag topics, subsets, batching."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dynamic_ofa_ros.preprocess import to_input_tensor
from offline_tools.datasets import (
    IMAGENETTE_WNIDS,
    ImageFolderSource,
    ImageSet,
    RosbagImageSource,
    ZipImageFolderSource,
    open_image_source,
    read_file_list,
)
from offline_tools.errors import DatasetError

torch.set_num_threads(1)

WNIDS = ("n01440764", "n02102040", "n03888257")


def image(seed: int, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    return buf.tobytes()


def make_folder(root: Path, per_class: int = 3) -> dict[str, np.ndarray]:
    """``root/<wnid>/<i>.png`` (lossless, so decoded pixels can be compared)."""
    images = {}
    for c, wnid in enumerate(WNIDS):
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rgb = image(10 * c + i)
            (root / wnid / f"{i}.png").write_bytes(png_bytes(rgb))
            images[f"{wnid}/{i}.png"] = rgb
    return images


def make_zip(path: Path, prefix: str, per_class: int = 2, seed: int = 0) -> list[str]:
    names = []
    with zipfile.ZipFile(path, "w") as zf:
        for c, wnid in enumerate(WNIDS):
            for i in range(per_class):
                name = f"{prefix}/{wnid}/{seed}_{i}.png"
                zf.writestr(name, png_bytes(image(seed * 100 + 10 * c + i)))
                names.append(name)
        zf.writestr(f"{prefix}/README.txt", "not an image")
    return names


# ----------------------------------------------------------------------------------- folders


def test_image_folder_labels_order_and_pixels(tmp_path: Path) -> None:
    images = make_folder(tmp_path / "val")
    source = open_image_source(tmp_path / "val")
    assert isinstance(source, ImageFolderSource) and source.labelled and len(source) == 9
    items = list(source)
    assert [label for _, label in items] == [IMAGENETTE_WNIDS[w] for w in WNIDS for _ in range(3)]
    assert np.array_equal(items[0][0], images[f"{WNIDS[0]}/0.png"])
    assert source.name == "val (9)"


def test_subsets_are_deterministic(tmp_path: Path) -> None:
    make_folder(tmp_path / "val")
    first = [lbl for _, lbl in open_image_source(tmp_path / "val", limit=4)]
    assert first == [0, 0, 0, 217]
    sampled = open_image_source(tmp_path / "val", sample=5, seed=3)
    again = open_image_source(tmp_path / "val", sample=5, seed=3)
    assert isinstance(sampled, ImageFolderSource) and isinstance(again, ImageFolderSource)
    assert sampled.members == again.members and len(sampled) == 5
    assert sampled.members == sorted(sampled.members)  # original order kept
    other = open_image_source(tmp_path / "val", sample=5, seed=4)
    assert isinstance(other, ImageFolderSource) and other.members != sampled.members
    listing = tmp_path / "list.txt"
    listing.write_text(f"{WNIDS[2]}/1.png\n{WNIDS[0]}/2.png\n", encoding="utf-8")
    chosen = open_image_source(tmp_path / "val", files=listing)
    assert [lbl for _, lbl in chosen] == [701, 0]  # the list's order
    rest = open_image_source(tmp_path / "val", exclude=listing)
    assert len(rest) == 7
    with pytest.raises(DatasetError, match="not in the source"):
        open_image_source(tmp_path / "val", files=[f"{WNIDS[0]}/missing.png"])


def test_label_maps(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        (root / name / "a.png").write_bytes(png_bytes(image(1)))
    assert not open_image_source(root).labelled  # unknown class names: unlabelled
    labelled = open_image_source(root, label_map={"cat": 281, "dog": 207})
    assert [lbl for _, lbl in labelled] == [281, 207]
    with pytest.raises(DatasetError, match="not in the label map"):
        open_image_source(root, label_map={"cat": 281})
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.png").write_bytes(png_bytes(image(2)))
    assert [lbl for _, lbl in open_image_source(flat)] == [None]


def test_empty_and_missing_sources(tmp_path: Path) -> None:
    (tmp_path / "empty" / "n01440764").mkdir(parents=True)
    (tmp_path / "empty" / "n01440764" / "notes.txt").write_text("no images", encoding="utf-8")
    with pytest.raises(DatasetError, match="no images"):
        open_image_source(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        open_image_source(tmp_path / "missing")
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"PK not really")
    with pytest.raises(DatasetError, match="zip"):
        open_image_source(bad_zip)
    corrupt = tmp_path / "corrupt" / "n01440764"
    corrupt.mkdir(parents=True)
    (corrupt / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DatasetError, match="cannot decode"):
        list(open_image_source(tmp_path / "corrupt"))


# ----------------------------------------------------------------------------------- zips


def test_zip_and_zip_group_with_split_file(tmp_path: Path) -> None:
    a = make_zip(tmp_path / "part1.zip", "train", seed=1)
    b = make_zip(tmp_path / "part2.zip", "train", seed=2)
    one = open_image_source(tmp_path / "part1.zip")
    assert isinstance(one, ZipImageFolderSource) and len(one) == 6 and one.labelled
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"holdout": [b[0], a[5]], "calibration": a[:3] + b[:1]}), encoding="utf-8")
    assert read_file_list(f"{split}:holdout") == [b[0], a[5]]
    group = open_image_source([tmp_path / "part1.zip", tmp_path / "part2.zip"], files=f"{split}:holdout")
    assert [lbl for _, lbl in group] == [0, 701]
    calib = open_image_source(
        [tmp_path / "part1.zip", tmp_path / "part2.zip"], files=f"{split}:calibration", limit=2
    )
    assert len(calib) == 2
    rest = open_image_source([tmp_path / "part1.zip", tmp_path / "part2.zip"], exclude=f"{split}:holdout")
    assert len(rest) == 10
    with pytest.raises(DatasetError, match="no key"):
        read_file_list(f"{split}:nothing")


def test_shared_imagenette_zip(shared_dir: Path) -> None:
    path = shared_dir / "datasets" / "imagenette" / "val-128px.zip"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    source = open_image_source(path, sample=20, seed=0)
    images = ImageSet.load(source, progress=False)
    assert len(images) == 20 and images.labels is not None
    assert set(images.labels) <= set(IMAGENETTE_WNIDS.values())
    assert images.images[0].shape == (128, 128, 3) and images.images[0].dtype == np.uint8


# ----------------------------------------------------------------------------------- batching


def test_image_set_batches_match_engine_preprocessing(tmp_path: Path) -> None:
    make_folder(tmp_path / "val")
    images = ImageSet.load(open_image_source(tmp_path / "val"), progress=False)
    batches = list(images.batches(64, batch_size=4))
    assert [x.shape[0] for x, _ in batches] == [4, 4, 1]
    assert batches[0][1] is not None and batches[0][1].tolist() == [0, 0, 0, 217]
    single = to_input_tensor(images.images[5], resolution=64)
    assert torch.allclose(batches[1][0][1:2], single, atol=1e-5)
    again = list(images.batches(64, batch_size=4))
    assert again[0][0] is batches[0][0]  # cached for the same resolution
    images.cache_bytes = 1  # too large to keep: preprocessed again
    assert list(images.batches(32, batch_size=4))[0][0] is not list(images.batches(32, batch_size=4))[0][0]
    mixed = ImageSet(name="mixed", images=[image(1, (20, 10)), image(2, (30, 40))], labels=[1, 2])
    ((x, y),) = list(mixed.batches(32, batch_size=8))
    assert x.shape == (2, 3, 32, 32) and y is not None and y.tolist() == [1, 2]


# ----------------------------------------------------------------------------------- rosbags


def write_bag(path: Path, n: int = 4) -> list[np.ndarray]:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    image_t = ts.types["sensor_msgs/msg/Image"]
    compressed_t = ts.types["sensor_msgs/msg/CompressedImage"]
    header_t = ts.types["std_msgs/msg/Header"]
    time_t = ts.types["builtin_interfaces/msg/Time"]
    string_t = ts.types["std_msgs/msg/String"]
    frames = [image(50 + i, (24, 16)) for i in range(n)]
    with Writer(path, version=9) as writer:
        raw = writer.add_connection("/camera/image_raw", image_t.__msgtype__, typestore=ts)
        comp = writer.add_connection("/camera/compressed", compressed_t.__msgtype__, typestore=ts)
        text = writer.add_connection("/chatter", string_t.__msgtype__, typestore=ts)
        for i, rgb in enumerate(frames):
            header = header_t(stamp=time_t(sec=i, nanosec=0), frame_id="cam")
            bgr = np.ascontiguousarray(rgb[:, :, ::-1])
            msg = image_t(
                header=header,
                height=16,
                width=24,
                encoding="bgr8",
                is_bigendian=0,
                step=24 * 3,
                data=bgr.reshape(-1),
            )
            writer.write(raw, i * 1000, ts.serialize_cdr(msg, image_t.__msgtype__))
            cmsg = compressed_t(
                header=header, format="png", data=np.frombuffer(png_bytes(rgb), dtype=np.uint8)
            )
            writer.write(comp, i * 1000 + 1, ts.serialize_cdr(cmsg, compressed_t.__msgtype__))
            writer.write(text, i * 1000 + 2, ts.serialize_cdr(string_t(data="hi"), string_t.__msgtype__))
    return frames


def test_rosbag_topics(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    frames = write_bag(bag)
    raw = open_image_source(bag, topic="/camera/image_raw")
    assert isinstance(raw, RosbagImageSource) and len(raw) == 4 and not raw.labelled
    got = [rgb for rgb, label in raw]
    assert all(np.array_equal(a, b) for a, b in zip(got, frames, strict=True))
    comp = open_image_source(bag, topic="/camera/compressed", limit=2)
    assert [np.array_equal(rgb, frames[i]) for i, (rgb, _) in enumerate(comp)] == [True, True]
    with pytest.raises(DatasetError, match=r"no topic '/camera/missing'.*/camera/image_raw"):
        open_image_source(bag, topic="/camera/missing")
    with pytest.raises(DatasetError, match="std_msgs/msg/String"):
        open_image_source(bag, topic="/chatter")
    with pytest.raises(DatasetError, match="--topic"):
        open_image_source(bag)
    calib = ImageSet.load(open_image_source(bag, topic="/camera/image_raw"), progress=False)
    assert not calib.labelled and len(calib) == 4
