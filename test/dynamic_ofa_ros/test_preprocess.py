"""ROS image encodings → RGB, compressed images, and the one model-input preprocessing."""

from __future__ import annotations

import array
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynamic_ofa_ros.errors import ImageError
from dynamic_ofa_ros.image_input import SUPPORTED_ENCODINGS, decode_compressed, image_from_buffer
from dynamic_ofa_ros.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_input_batch, to_input_tensor

torch.set_num_threads(1)
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def pack(pixels: np.ndarray, pad: int) -> tuple[bytes, int]:
    """Rows of ``pixels`` (H, W, C) with ``pad`` junk bytes after each row, as a ROS Image buffer."""
    h, w, c = pixels.shape
    step = w * c + pad
    buf = np.full((h, step), 0xAB, dtype=np.uint8)
    buf[:, : w * c] = pixels.reshape(h, w * c)
    return buf.tobytes(), step


ENCODED = {
    "rgb8": RGB,
    "bgr8": RGB[:, :, ::-1],
    "rgba8": np.concatenate([RGB, np.full((5, 7, 1), 9, np.uint8)], axis=2),
    "bgra8": np.concatenate([RGB[:, :, ::-1], np.full((5, 7, 1), 9, np.uint8)], axis=2),
}


@pytest.mark.parametrize("pad", [0, 3, 16])
@pytest.mark.parametrize("encoding", sorted(ENCODED))
def test_color_encodings(encoding: str, pad: int) -> None:
    data, step = pack(np.ascontiguousarray(ENCODED[encoding]), pad)
    out = image_from_buffer(data, width=7, height=5, step=step, encoding=encoding, is_bigendian=False)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("pad", [0, 1])
def test_mono8_is_replicated(pad: int) -> None:
    gray = RGB[:, :, 0:1]
    data, step = pack(np.ascontiguousarray(gray), pad)
    out = image_from_buffer(data, width=7, height=5, step=step, encoding="mono8", is_bigendian=True)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray[:, :, 0])


def test_memoryview_and_bytearray_inputs() -> None:
    data, step = pack(RGB, 0)
    for buf in (memoryview(data), bytearray(data), np.frombuffer(data, np.uint8), array.array("B", data)):
        np.testing.assert_array_equal(
            image_from_buffer(buf, width=7, height=5, step=step, encoding="rgb8"), RGB
        )


@pytest.mark.parametrize("encoding", ["32FC1", "rgb16", "nv21", "bayer_rggb16"])
def test_unsupported_encodings_name_the_supported_set(encoding: str) -> None:
    with pytest.raises(ImageError, match=f"{encoding}.*not supported.*rgb8, bgr8, rgba8, bgra8, mono8"):
        image_from_buffer(b"\0" * 70, width=7, height=5, step=14, encoding=encoding, is_bigendian=False)


def photo_rgb(h: int = 96, w: int = 128) -> np.ndarray:
    """A real photo (skimage's astronaut), resized: smooth enough for demosaicing to be close."""
    from skimage import data

    return np.ascontiguousarray(cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_AREA))


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """The single-channel Bayer mosaic a sensor with ``pattern`` (e.g. "rggb") records of ``rgb``."""
    channel = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], np.uint8)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[pattern[k]]]
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("pad", [0, 6])
def test_bayer_patterns_from_a_real_photo(pattern: str, pad: int) -> None:
    rgb = photo_rgb()
    data, step = pack(mosaic(rgb, pattern)[:, :, None], pad)
    out = image_from_buffer(data, width=128, height=96, step=step, encoding=f"bayer_{pattern}8")
    assert out.shape == rgb.shape
    error = np.abs(out.astype(int) - rgb.astype(int))[2:-2, 2:-2].mean()
    assert error < 8.0, f"{pattern}: mean error {error:.1f} grey levels (a wrong pattern gives > 20)"
    # the nearest wrong pattern is clearly worse: the test tells the patterns apart
    wrong = {"rggb": "bggr", "bggr": "rggb", "gbrg": "grbg", "grbg": "gbrg"}[pattern]
    other = image_from_buffer(data, width=128, height=96, step=step, encoding=f"bayer_{wrong}8")
    assert np.abs(other.astype(int) - rgb.astype(int))[2:-2, 2:-2].mean() > 2 * error


def yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """(H, W, 2) packed 4:2:2 of ``rgb`` as a camera sends it (BT.601, video range 16-235),
    ``order`` "uyvy" or "yuyv"."""
    r, g, b = (rgb[:, :, i].astype(np.float32) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    out = np.empty((*rgb.shape[:2], 2), np.float32)
    chroma = out[:, :, 0] if order == "uyvy" else out[:, :, 1]
    luma = out[:, :, 1] if order == "uyvy" else out[:, :, 0]
    luma[:] = y
    chroma[:, 0::2] = (u[:, 0::2] + u[:, 1::2]) / 2
    chroma[:, 1::2] = (v[:, 0::2] + v[:, 1::2]) / 2
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("encoding", "order"), [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")]
)
@pytest.mark.parametrize("pad", [0, 8])
def test_yuv422_from_a_real_photo(encoding: str, order: str, pad: int) -> None:
    rgb = photo_rgb()
    data, step = pack(yuv422(rgb, order), pad)
    out = image_from_buffer(data, width=128, height=96, step=step, encoding=encoding)
    error = np.abs(out.astype(int) - rgb.astype(int)).mean()
    assert error < 3.0, f"{encoding}: mean error {error:.1f} grey levels"
    swapped = "yuyv" if order == "uyvy" else "uyvy"  # the other byte order is far off
    other = image_from_buffer(data, width=128, height=96, step=step, encoding=swapped)
    assert np.abs(other.astype(int) - rgb.astype(int)).mean() > 10 * error
    with pytest.raises(ImageError, match="odd width 127"):
        image_from_buffer(b"\0" * (96 * 254), width=127, height=96, step=254, encoding=encoding)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("big", [False, True])
def test_16bit_mono_scales_over_the_full_range(encoding: str, big: bool) -> None:
    values = np.array([[0, 128, 257, 32896], [65535, 65407, 1000, 60000]], dtype=np.uint16)
    raw = values.astype(">u2" if big else "<u2").tobytes()
    data, step = pack(np.frombuffer(raw, np.uint8).reshape(2, 4, 2), 4)
    out = image_from_buffer(data, width=4, height=2, step=step, encoding=encoding, is_bigendian=big)
    expected = np.array([[0, 0, 1, 128], [255, 255, 4, 233]], dtype=np.uint8)  # (v + 128) // 257
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], expected)


def test_supported_encodings() -> None:
    assert {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16uc1", "yuv422", "yuv422_yuy2"} <= set(
        SUPPORTED_ENCODINGS
    )
    assert {f"bayer_{p}8" for p in ("rggb", "bggr", "gbrg", "grbg")} <= set(SUPPORTED_ENCODINGS)


def test_bad_geometry() -> None:
    data, step = pack(RGB, 0)
    with pytest.raises(ImageError, match="empty"):
        image_from_buffer(b"", width=0, height=5, step=0, encoding="rgb8")
    with pytest.raises(ImageError, match="empty"):
        image_from_buffer(b"", width=7, height=0, step=21, encoding="rgb8")
    with pytest.raises(ImageError, match=r"step\*height = 21\*5 = 105"):
        image_from_buffer(data[:-1], width=7, height=5, step=step, encoding="rgb8")
    with pytest.raises(ImageError, match="step 20 is smaller than width\\*bytes per pixel"):
        image_from_buffer(data, width=7, height=5, step=20, encoding="rgb8")
    with pytest.raises(ImageError, match="must be an integer"):
        image_from_buffer(data, width=7.0, height=5, step=step, encoding="rgb8")  # type: ignore[arg-type]


def test_huge_image_rejected_without_allocation() -> None:
    # 8000 x 8000 rgb8 would be 192 MB; the header alone is enough to refuse it
    with pytest.raises(
        ImageError, match=r"8000x8000 = 64.0 MP, above the limit of 40.0 MP; resize it upstream"
    ):
        image_from_buffer(b"", width=8000, height=8000, step=24000, encoding="rgb8")
    with pytest.raises(ImageError, match="above the limit"):
        image_from_buffer(b"\0" * 300, width=10, height=10, step=30, encoding="rgb8", max_pixels=99)


def test_decode_compressed_jpeg_png() -> None:
    smooth = cv2.resize(RGB, (64, 48), interpolation=cv2.INTER_LINEAR)
    ok, png = cv2.imencode(".png", smooth[:, :, ::-1])
    assert ok
    np.testing.assert_array_equal(decode_compressed(png.tobytes(), fmt="png"), smooth)
    ok, jpg = cv2.imencode(".jpg", smooth[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    out = decode_compressed(jpg.tobytes(), fmt="bgr8; jpeg compressed bgr8")
    assert out.shape == (48, 64, 3)
    assert np.abs(out.astype(int) - smooth.astype(int)).mean() < 6  # lossy, but RGB order kept
    with pytest.raises(ImageError, match="could not be decoded"):
        decode_compressed(jpg.tobytes()[:40], fmt="jpeg")
    with pytest.raises(ImageError, match="unrecognised data .*not JPEG or PNG"):
        decode_compressed(b"garbage" * 10, fmt="png")
    with pytest.raises(ImageError, match="not supported"):
        decode_compressed(png.tobytes(), fmt="tiff")
    with pytest.raises(ImageError, match="empty"):
        decode_compressed(b"", fmt="jpeg")


def test_decode_compressed_checks_size_before_decoding() -> None:
    big = np.zeros((300, 400, 3), np.uint8)
    for ext in (".png", ".jpg"):
        ok, enc = cv2.imencode(ext, big)
        assert ok
        with pytest.raises(ImageError, match=r"400x300 = 0.1 MP, above the limit"):
            decode_compressed(enc.tobytes(), fmt=ext[1:], max_pixels=1000)


def png(width: int, height: int, depth: int, colour: int, rows: bytes, *, palette: bytes = b"") -> bytes:
    """A PNG written chunk by chunk (cv2 cannot write palette PNGs; bombs need a lying header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    plte = chunk(b"PLTE", palette) if palette else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + plte
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def photo_jpeg() -> bytes:
    """A real photograph (matplotlib's sample data), as its JPEG file."""
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with open(path, "rb") as file:
        return file.read()


def opencv_rgb(data: bytes) -> np.ndarray:
    """What decode_compressed returned before the content checks: OpenCV's decode, as RGB."""
    return np.ascontiguousarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1])


@pytest.fixture
def no_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything reaches OpenCV's decoder."""

    def refuse(*args: object) -> None:
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(cv2, "imdecode", refuse)


def test_real_photo_decodes_as_before() -> None:
    jpeg = photo_jpeg()
    expected = opencv_rgb(jpeg)
    assert expected.shape == (600, 512, 3)
    np.testing.assert_array_equal(decode_compressed(jpeg, fmt="jpeg"), expected)
    np.testing.assert_array_equal(
        decode_compressed(bytearray(jpeg), fmt="rgb8; jpeg compressed bgr8"), expected
    )
    ok, encoded = cv2.imencode(".png", expected[:, :, ::-1])
    assert ok
    np.testing.assert_array_equal(decode_compressed(encoded.tobytes(), fmt="png"), expected)
    ok, progressive = cv2.imencode(".jpg", expected[:, :, ::-1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    np.testing.assert_array_equal(
        decode_compressed(progressive.tobytes(), fmt="jpg"), opencv_rgb(progressive.tobytes())
    )


def test_other_formats_are_refused_by_content_before_decoding(no_decode: None) -> None:
    small = np.zeros((8, 8, 3), np.uint8)
    deflate = [cv2.IMWRITE_TIFF_COMPRESSION, 8]  # libtiff's COMPRESSION_ADOBE_DEFLATE
    for ext, name, params in (
        (".tiff", "TIFF", deflate),
        (".bmp", "BMP", []),
        (".webp", "WebP", []),
        (".ppm", "PNM", []),
    ):
        ok, encoded = cv2.imencode(ext, small, params)
        assert ok
        with pytest.raises(ImageError, match=f"holds {name}, not JPEG or PNG; publish JPEG or PNG"):
            decode_compressed(encoded.tobytes(), fmt="jpeg")
    # a deflate TIFF whose header claims 20000 x 20000 (1.2 GB decoded) sent as "jpeg"
    entries = [(256, 4, 20000), (257, 4, 20000), (258, 3, 8), (259, 3, 8), (262, 3, 2), (273, 4, 122)]
    entries += [(277, 3, 3), (278, 4, 20000), (279, 4, 64)]
    ifd = (
        struct.pack("<H", len(entries))
        + b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in entries)
        + b"\0" * 4
    )
    bomb = b"II*\x00" + struct.pack("<I", 8) + ifd + zlib.compress(bytes(20000 * 3 * 8))[:64]
    with pytest.raises(ImageError, match="holds TIFF"):
        decode_compressed(bomb, fmt="jpeg")
    with pytest.raises(ImageError, match="compressedDepth.*not supported"):
        decode_compressed(bomb, fmt="16UC1; compressedDepth png")


def test_header_size_is_checked_before_decoding(no_decode: None) -> None:
    bomb = png(20000, 20000, 8, 2, b"\0" * 1000)
    with pytest.raises(ImageError, match=r"20000x20000 = 400.0 MP, above the limit of 40.0 MP"):
        decode_compressed(bomb, fmt="png")
    jpeg = bytearray(photo_jpeg())
    sof = jpeg.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 20000)
    with pytest.raises(ImageError, match=r"20000x20000 = 400.0 MP, above the limit"):
        decode_compressed(bytes(jpeg), fmt="jpeg")


def test_progressive_jpeg_counts_its_coefficients() -> None:
    image = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, baseline = cv2.imencode(".jpg", image, full)
    assert ok
    ok, progressive = cv2.imencode(".jpg", image, [*full, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    # 4096 pixels are within 5000, and so is a baseline decode (2 x 3 bytes per pixel at most), but
    # a progressive one also keeps 2 bytes per sample of three full-size components
    assert decode_compressed(baseline.tobytes(), fmt="jpeg", max_pixels=5000).shape == (64, 64, 3)
    with pytest.raises(ImageError, match="64x64, a progressive JPEG or a 16-bit PNG"):
        decode_compressed(progressive.tobytes(), fmt="jpeg", max_pixels=5000)
    assert decode_compressed(progressive.tobytes(), fmt="jpeg", max_pixels=7000).shape == (64, 64, 3)


def test_label_must_match_content(no_decode: None) -> None:
    jpeg = photo_jpeg()
    with pytest.raises(ImageError, match="the format says PNG but the content is JPEG; fix the publisher"):
        decode_compressed(jpeg, fmt="png")
    with pytest.raises(ImageError, match="the format says JPEG but the content is PNG"):
        decode_compressed(png(4, 4, 8, 0, b"\0" * 20), fmt="bgr8; jpeg compressed bgr8")
    with pytest.raises(ImageError, match="not supported; publish JPEG or PNG"):
        decode_compressed(jpeg, fmt="")


def test_truncated_and_corrupt_headers(no_decode: None) -> None:
    jpeg = photo_jpeg()
    good = png(4, 4, 8, 0, b"\0" * 20)
    for data, fmt in ((jpeg[:2], "jpeg"), (good[:5], "png")):
        with pytest.raises(ImageError, match="truncated inside its signature"):
            decode_compressed(data, fmt=fmt)
    for data, fmt in ((jpeg[:100], "jpeg"), (good[:20], "png")):
        with pytest.raises(ImageError, match="could not be decoded: truncated before the end of its"):
            decode_compressed(data, fmt=fmt)
    with pytest.raises(ImageError, match="corrupt PNG header"):
        decode_compressed(good[:23] + b"\x05" + good[24:], fmt="png")  # IHDR no longer matches its CRC
    with pytest.raises(ImageError, match="corrupt JPEG header"):
        decode_compressed(b"\xff\xd8\xff\xda\x00\x08" + b"\0" * 100, fmt="jpeg")  # scan before frame
    with pytest.raises(ImageError, match="corrupt JPEG header"):
        decode_compressed(b"\xff\xd8" + b"\xff" * 5000, fmt="jpeg")  # fill bytes only


def test_16bit_png_converts_like_mono16_and_12bit_jpeg_is_refused() -> None:
    grey = np.array([[0, 128, 257, 32896, 65535]] * 4, dtype=np.uint16)
    ok, encoded = cv2.imencode(".png", grey)
    assert ok
    raw = image_from_buffer(grey.astype("<u2").tobytes(), width=5, height=4, step=10, encoding="mono16")
    np.testing.assert_array_equal(decode_compressed(encoded.tobytes(), fmt="png"), raw)
    colour = np.stack([grey, grey // 2, grey // 4], axis=2)  # RGB
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(colour[:, :, ::-1]))  # OpenCV writes BGR
    assert ok
    out = decode_compressed(encoded.tobytes(), fmt="png")
    np.testing.assert_array_equal(out, ((colour.astype(np.uint32) + 128) // 257).astype(np.uint8))
    # 16-bit decodes take twice the memory: allowed up to half the pixel limit
    with pytest.raises(ImageError, match="a progressive JPEG or a 16-bit PNG"):
        decode_compressed(encoded.tobytes(), fmt="png", max_pixels=25)
    jpeg = bytearray(photo_jpeg())
    jpeg[jpeg.index(b"\xff\xc0") + 4] = 12  # precision
    with pytest.raises(ImageError, match="12-bit JPEGs are not supported"):
        decode_compressed(bytes(jpeg), fmt="jpeg")


def test_palette_grey_and_alpha_pngs_convert_like_the_raw_encodings() -> None:
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    index = RNG.integers(0, 16, (5, 7), dtype=np.uint8)
    rows = b"".join(b"\0" + bytes(row) for row in index)  # filter type 0 per row
    out = decode_compressed(png(7, 5, 8, 3, rows, palette=palette.tobytes()), fmt="png")
    np.testing.assert_array_equal(out, palette[index])
    packed = b"".join(
        b"\0" + bytes((a << 4) | b for a, b in zip(row[::2], row[1::2], strict=False)) for row in index[:, :6]
    )
    np.testing.assert_array_equal(
        decode_compressed(png(6, 5, 4, 3, packed, palette=palette.tobytes()), fmt="png"),
        palette[index[:, :6]],
    )
    grey = RGB[:, :, 0]
    ok, encoded = cv2.imencode(".png", grey)
    assert ok
    mono = image_from_buffer(grey.tobytes(), width=7, height=5, step=7, encoding="mono8")
    np.testing.assert_array_equal(decode_compressed(encoded.tobytes(), fmt="png"), mono)
    rgba = ENCODED["rgba8"]
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]]))  # OpenCV writes BGRA
    assert ok
    np.testing.assert_array_equal(decode_compressed(encoded.tobytes(), fmt="png"), RGB)


def reference(rgb: np.ndarray, r: int) -> torch.Tensor:
    """The documented definition, written out step by step (exact rounding of the 8-bit resize)."""
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).unsqueeze(0).float()
    if (rgb.shape[0], rgb.shape[1]) != (r, r):
        x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        x = x.round().clamp(0, 255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


ONE_LEVEL = 1.0 / (255.0 * min(IMAGENET_STD)) + 1e-5  # one grey level after normalisation


@pytest.mark.parametrize(("h", "w", "r"), [(48, 64, 32), (480, 640, 128), (128, 128, 128), (100, 90, 160)])
def test_to_input_tensor_matches_definition(h: int, w: int, r: int) -> None:
    img = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = to_input_tensor(img, resolution=r)
    assert out.shape == (1, 3, r, r) and out.dtype == torch.float32
    ref = reference(img, r)
    # the CPU's fixed-point uint8 kernel may round a pixel the other way: at most one grey level
    torch.testing.assert_close(out, ref, rtol=0, atol=ONE_LEVEL)
    assert float((out - ref).abs().mean()) < 0.25 * ONE_LEVEL
    if (h, w) == (r, r):
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    buf = torch.empty(1, 3, r, r)
    res = to_input_tensor(torch.from_numpy(img), resolution=r, out=buf)
    assert res.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(buf, out, rtol=0, atol=0)


def test_to_input_tensor_validates() -> None:
    with pytest.raises(ImageError, match=r"\(H, W, 3\)"):
        to_input_tensor(np.zeros((4, 4), np.uint8), resolution=32)
    with pytest.raises(ImageError, match="dtype uint8"):
        to_input_tensor(np.zeros((4, 4, 3), np.float32), resolution=32)
    with pytest.raises(ImageError, match="numpy array or tensor"):
        to_input_tensor([[1, 2, 3]], resolution=32)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="empty"):
        to_input_tensor(np.zeros((0, 4, 3), np.uint8), resolution=32)
    with pytest.raises(ImageError, match="out has shape"):
        to_input_tensor(np.zeros((4, 4, 3), np.uint8), resolution=32, out=torch.empty(1, 3, 16, 16))


def test_batch_equals_single() -> None:
    imgs = RNG.integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    batch = to_input_batch(imgs, resolution=32)
    listed = to_input_batch([imgs[0], imgs[1][:30], imgs[2]], resolution=32)
    for i in range(3):
        torch.testing.assert_close(
            batch[i : i + 1], to_input_tensor(imgs[i], resolution=32), rtol=0, atol=1e-6
        )
    torch.testing.assert_close(listed[1:2], to_input_tensor(imgs[1][:30], resolution=32), rtol=0, atol=0)
    with pytest.raises(ImageError, match="empty"):
        to_input_batch([], resolution=32)


@pytest.mark.cuda
def test_cuda_matches_cpu() -> None:
    img = RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    cpu = to_input_tensor(img, resolution=176)
    gpu = to_input_tensor(img, resolution=176, device="cuda").cpu()
    ref = reference(img, 176)  # exact rounding on the GPU: only float ties at .5 may flip
    torch.testing.assert_close(gpu, ref, rtol=0, atol=ONE_LEVEL)
    assert float((gpu - ref).abs().mean()) < 0.01 * ONE_LEVEL
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=ONE_LEVEL)
