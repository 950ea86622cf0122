"""Camera input as an (H, W, 3) uint8 RGB array: raw ROS encodings and compressed images.

Torch-free, so the runtime path of a compiled backend does not import torch for its input.

**Raw encodings** (:func:`image_from_buffer`, ``sensor_msgs/Image``): rgb8, bgr8, rgba8, bgra8
(alpha dropped), mono8/8UC1 (replicated to three channels), mono16/16UC1 (scaled to 8 bits over
the full 16-bit range, ``(v + 128) // 257``; a camera that puts 12-bit data in the low bits of
16-bit words looks dark -- set its driver to 8-bit or MSB-aligned output), yuv422 (UYVY) and
yuv422_yuy2 (YUYV) and their aliases uyvy/yuyv (OpenCV's YUV->RGB), and the Bayer patterns
bayer_rggb8, bayer_bggr8, bayer_gbrg8, bayer_grbg8 (OpenCV's bilinear demosaicing). Row padding
(``step``) is honoured for all of them.

**Compressed** (:func:`decode_compressed`, ``sensor_msgs/CompressedImage``): checked by content,
not by its label: only JPEG and PNG are decoded, and only after the size in their header passed
the pixel limit, so a decode takes at most about twice the memory of the largest image the limit
allows (OpenCV returns a copy of what it decoded). 16-bit PNGs are scaled to 8 bits like
mono16; 12-bit JPEGs are refused.

**Limits.** Images above ``max_pixels`` (default 40 megapixels) are refused with
:class:`ImageError` before anything is allocated or decoded.
"""

from __future__ import annotations

import array
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dynamic_ofa_ros.errors import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_ENCODINGS",
    "check_size",
    "decode_compressed",
    "image_from_buffer",
    "to_8bit",
]

DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class _Encoding:
    """How a raw encoding's pixels become RGB: bytes per pixel and the conversion of the rows."""

    bytes_per_pixel: int
    convert: Callable[[np.ndarray, bool], np.ndarray]  # (H, W, bytes) uint8, big-endian -> RGB
    even_width: bool = False


def _pick(order: tuple[int, int, int]) -> Callable[[np.ndarray, bool], np.ndarray]:
    return lambda rows, _big: np.ascontiguousarray(rows[:, :, list(order)])


def _grey8(rows: np.ndarray, _big: bool) -> np.ndarray:
    return np.repeat(rows, 3, axis=2)


def to_8bit(values: np.ndarray) -> np.ndarray:
    """16-bit samples to 8 bits over the full range (0 -> 0, 65535 -> 255, rounded)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _grey16(rows: np.ndarray, big: bool) -> np.ndarray:
    grey = rows.view(">u2" if big else "<u2")  # (H, W, 1): two bytes became one sample
    return np.repeat(to_8bit(grey), 3, axis=2)


def _cv(code_name: str) -> Callable[[np.ndarray, bool], np.ndarray]:
    def convert(rows: np.ndarray, _big: bool) -> np.ndarray:
        import cv2

        src = np.ascontiguousarray(rows if rows.shape[2] > 1 else rows[:, :, 0])
        return np.asarray(cv2.cvtColor(src, getattr(cv2, code_name)))

    return convert


#: ROS encoding -> how to make RGB of it. OpenCV names a Bayer pattern by the second row's
#: colours (cv_bridge maps bayer_rggb8 to COLOR_BayerBG2*); test_preprocess checks each one
#: against a mosaic made from a real photo.
_ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(3, _pick((0, 1, 2))),
    "bgr8": _Encoding(3, _pick((2, 1, 0))),
    "rgba8": _Encoding(4, _pick((0, 1, 2))),
    "bgra8": _Encoding(4, _pick((2, 1, 0))),
    "mono8": _Encoding(1, _grey8),
    "8uc1": _Encoding(1, _grey8),
    "mono16": _Encoding(2, _grey16),
    "16uc1": _Encoding(2, _grey16),
    "yuv422": _Encoding(2, _cv("COLOR_YUV2RGB_UYVY"), even_width=True),
    "uyvy": _Encoding(2, _cv("COLOR_YUV2RGB_UYVY"), even_width=True),
    "yuv422_yuy2": _Encoding(2, _cv("COLOR_YUV2RGB_YUYV"), even_width=True),
    "yuyv": _Encoding(2, _cv("COLOR_YUV2RGB_YUYV"), even_width=True),
    "bayer_rggb8": _Encoding(1, _cv("COLOR_BayerBG2RGB")),
    "bayer_bggr8": _Encoding(1, _cv("COLOR_BayerRG2RGB")),
    "bayer_gbrg8": _Encoding(1, _cv("COLOR_BayerGR2RGB")),
    "bayer_grbg8": _Encoding(1, _cv("COLOR_BayerGB2RGB")),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)


def check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    """Raise :class:`ImageError` for an empty image or one above ``max_pixels``."""
    if width <= 0 or height <= 0:
        raise ImageError(f"{what} is empty ({width}x{height}); send a non-empty image")
    if width * height > max_pixels:
        raise ImageError(
            f"{what} is {width}x{height} = {width * height / 1e6:.1f} MP, above the limit of "
            f"{max_pixels / 1e6:.1f} MP; resize it upstream (e.g. image_proc resize) or raise max_pixels"
        )


def image_from_buffer(
    data: bytes | bytearray | memoryview | array.array[int] | np.ndarray,
    *,
    width: int,
    height: int,
    step: int,
    encoding: str,
    is_bigendian: bool | int = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """A ``sensor_msgs/Image`` buffer as an (H, W, 3) uint8 RGB array.

    ``data`` may be anything exposing the buffer protocol (rclpy gives ``array.array("B")``).
    ``step`` is the row length in bytes (rows may be padded); ``len(data)`` must be
    ``step * height``. Encodings: see :data:`SUPPORTED_ENCODINGS` and the module docstring.
    For rgb8 without padding the result is a read-only view of ``data`` (no copy);
    otherwise a new array. ``is_bigendian`` matters for the 16-bit encodings only.

    Raises:
        ImageError: an unknown encoding, inconsistent sizes, or an image above ``max_pixels``.
    """
    for name, value in (("width", width), ("height", height), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ImageError(f"image {name}={value!r} must be an integer")
    width, height, step = int(width), int(height), int(step)
    enc = str(encoding).strip().lower()
    spec = _ENCODINGS.get(enc)
    if spec is None:
        raise ImageError(
            f"image encoding {encoding!r} is not supported; use one of {', '.join(SUPPORTED_ENCODINGS)} "
            "(convert others upstream, e.g. with image_proc or cv_bridge)"
        )
    check_size(width, height, max_pixels, f"image ({encoding})")
    if spec.even_width and width % 2:
        raise ImageError(f"image ({encoding}) has odd width {width}; {enc} packs two pixels per 4 bytes")
    row = width * spec.bytes_per_pixel
    if step < row:
        raise ImageError(
            f"image step {step} is smaller than width*bytes per pixel = {width}*{spec.bytes_per_pixel} = "
            f"{row}; fix the header"
        )
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if buf.dtype != np.uint8:
        raise ImageError(f"image data has dtype {buf.dtype}, expected bytes / uint8")
    if buf.size != step * height:
        raise ImageError(
            f"image data has {buf.size} bytes but step*height = {step}*{height} = {step * height}; "
            "the message is truncated or its header is wrong"
        )
    rows = buf.reshape(height, step)[:, :row].reshape(height, width, spec.bytes_per_pixel)
    if enc == "rgb8":
        return rows if step == row else np.ascontiguousarray(rows)
    return spec.convert(rows, bool(is_bigendian))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
#: JPEG start-of-frame markers, which carry the size: SOF0..SOF15 except DHT, JPG and DAC
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: the progressive ones (SOF2, SOF6, SOF10, SOF14), decoded with all coefficients in memory
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
#: memory a decode may take, per byte of the largest image ``max_pixels`` allows (3 bytes per
#: pixel): OpenCV's Python binding returns a copy of the image it decoded, so a baseline JPEG
#: or a PNG at the limit takes 2x; a progressive JPEG (image + coefficients) must fit the same
_DECODE_MEMORY = 2.0
#: markers and fill bytes read before giving up on finding a JPEG frame header
_JPEG_MAX_MARKERS = 1000
#: valid PNG bit depths per colour type (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA)
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
#: other image formats, recognised by their first bytes only to name them when refusing them
_OTHER_FORMATS = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"GIF8", "GIF"),
    (b"\x00\x00\x00\x0cjP  \r\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"v/1\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"\x59\xa6\x6a\x95", "Sun raster"),
)
_HIGH_DEPTH = "12-bit JPEGs are not supported; publish 8-bit JPEG, PNG (8 or 16 bit) or a raw image"


def _content_name(raw: bytes) -> str:
    """What ``raw`` looks like when it is neither JPEG nor PNG (for the error message)."""
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WebP"
    if raw[4:12] in (b"ftypavif", b"ftypavis", b"ftypheic", b"ftypmif1"):
        return "AVIF/HEIF"
    if len(raw) >= 3 and raw[0] == ord("P") and raw[1] in b"1234567" and raw[2] in b" \t\r\n":
        return "PNM"
    for magic, name in _OTHER_FORMATS:
        if raw.startswith(magic):
            return name
    return f"unrecognised data (first bytes {raw[:8].hex(' ')})"


def _label_kind(fmt: str) -> str:
    """``"jpeg"`` or ``"png"``: what a ``CompressedImage.format`` string promises."""
    text = str(fmt).lower()
    if "compresseddepth" in text:
        raise ImageError(
            f"compressed format {fmt!r} (compressedDepth, a depth image) is not supported; "
            "publish an 8-bit colour or mono image (JPEG, PNG or raw)"
        )
    jpeg = "jpeg" in text or "jpg" in text
    png = "png" in text
    if jpeg == png:
        raise ImageError(f"compressed format {fmt!r} is not supported; publish JPEG or PNG")
    return "jpeg" if jpeg else "png"


def _png_header(raw: bytes, what: str) -> tuple[int, int, float]:
    """Width, height and decoder state (none) from a PNG's IHDR chunk (CRC, depth, colour type checked)."""
    if len(raw) < 33:
        raise ImageError(f"{what} could not be decoded: truncated before the end of its PNG header")
    length, kind = struct.unpack(">I4s", raw[8:16])
    width, height, depth, colour = struct.unpack(">IIBB", raw[16:26])
    if kind != b"IHDR" or length != 13 or zlib.crc32(raw[12:29]) != struct.unpack(">I", raw[29:33])[0]:
        raise ImageError(f"{what} could not be decoded: corrupt PNG header (IHDR)")
    if depth not in _PNG_DEPTHS.get(colour, ()):
        raise ImageError(f"{what} could not be decoded: PNG colour type {colour} with bit depth {depth}")
    # A 16-bit PNG decodes to 6 bytes per pixel (and is copied once), then becomes 8-bit RGB.
    return int(width), int(height), 9.0 * width * height if depth == 16 else 0.0


def _jpeg_frame(raw: bytes, i: int, what: str, *, progressive: bool) -> tuple[int, int, float]:
    """Width, height and decoder state in bytes (see :func:`_jpeg_header`) from the SOFn at ``i``."""
    truncated = f"{what} could not be decoded: truncated before the end of its JPEG header"
    if i + 10 > len(raw):
        raise ImageError(truncated)
    precision = raw[i + 4]
    height, width = struct.unpack(">HH", raw[i + 5 : i + 9])
    count = raw[i + 9]
    if precision != 8:
        raise ImageError(f"{what} is a {precision}-bit JPEG: {_HIGH_DEPTH}")
    if height == 0:  # the height would come later, in a DNL segment (never seen in practice)
        raise ImageError(f"{what} does not state its height in the JPEG header; re-encode it")
    if i + 10 + 3 * count > len(raw):
        raise ImageError(truncated)
    sampling = [(raw[i + 11 + 3 * c] >> 4, raw[i + 11 + 3 * c] & 15) for c in range(count)]
    if not sampling or not all(1 <= h <= 4 and 1 <= v <= 4 for h, v in sampling):
        raise ImageError(f"{what} could not be decoded: corrupt JPEG frame header")
    state = 0.0
    if progressive:  # every DCT coefficient of every component is kept: 2 bytes per sample
        h_max, v_max = max(h for h, _ in sampling), max(v for _, v in sampling)
        state = 2.0 * width * height * sum(h * v for h, v in sampling) / (h_max * v_max)
    return int(width), int(height), state


def _jpeg_header(raw: bytes, what: str) -> tuple[int, int, float]:
    """Width, height and decoder state (bytes) from a JPEG's frame header (SOFn).

    Walks the segments before the frame header. The state is what libjpeg keeps
    besides the image: a progressive JPEG's DCT coefficients (2 bytes per sample of
    every component), nothing worth counting for a baseline one.
    """
    truncated = f"{what} could not be decoded: truncated before the end of its JPEG header"
    i = 2
    for _ in range(_JPEG_MAX_MARKERS):
        i = raw.find(b"\xff", i)  # libjpeg skips stray bytes between segments, and so do we
        if i < 0 or i + 1 >= len(raw):
            raise ImageError(truncated)
        marker = raw[i + 1]
        if marker in (0xFF, 0x01) or 0xD0 <= marker <= 0xD7:  # fill byte, TEM, RSTn
            i += 1 if marker == 0xFF else 2
            continue
        if marker in (0x00, 0xD8, 0xD9, 0xDA):  # stuffing, SOI, EOI, SOS: no frame header came first
            break
        if i + 4 > len(raw):
            raise ImageError(truncated)
        if marker in _JPEG_SOF:
            return _jpeg_frame(raw, i, what, progressive=marker in _JPEG_PROGRESSIVE)
        length = int.from_bytes(raw[i + 2 : i + 4], "big")
        if length < 2:
            break
        i += 2 + length
    raise ImageError(f"{what} could not be decoded: corrupt JPEG header (no frame header found)")


def decode_compressed(
    data: bytes | bytearray | memoryview | array.array[int] | np.ndarray,
    *,
    fmt: str = "jpeg",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode a JPEG or PNG (``sensor_msgs/CompressedImage``) into (H, W, 3) uint8 RGB.

    ``fmt`` is the message's ``format`` string (e.g. ``"jpeg"``, ``"png"``,
    ``"bgr8; jpeg compressed bgr8"``). The content is checked before anything is
    decoded: its first bytes must be a JPEG or PNG signature that matches ``fmt``
    (other formats -- TIFF, BMP, WebP, ... -- and a mismatching label are refused),
    and the size in its header (JPEG frame header, PNG IHDR) must be within
    ``max_pixels``. 8-bit images are decoded like the raw encodings: grey (and
    palette / 1-, 2-, 4-bit PNGs, expanded losslessly) to three channels, alpha
    dropped; 16-bit PNGs are scaled to 8 bits like mono16 (:func:`to_8bit`), 12-bit JPEGs refused.
    Raises :class:`ImageError` saying what is wrong and what to do.
    """
    import cv2

    kind = _label_kind(fmt)
    raw = data if isinstance(data, bytes) else bytes(data)
    what = f"compressed image ({fmt}, {len(raw)} bytes)"
    if not raw:
        raise ImageError("compressed image is empty")
    if raw.startswith(_JPEG_SOI):
        content = "jpeg"
    elif raw.startswith(_PNG_SIGNATURE):
        content = "png"
    elif _JPEG_SOI.startswith(raw) or _PNG_SIGNATURE.startswith(raw):
        raise ImageError(f"{what} could not be decoded: truncated inside its signature")
    else:
        raise ImageError(
            f"{what} holds {_content_name(raw)}, not JPEG or PNG; publish JPEG or PNG "
            "(e.g. image_transport's compressed plugin) or a raw sensor_msgs/Image"
        )
    if content != kind:
        raise ImageError(
            f"{what}: the format says {kind.upper()} but the content is {content.upper()}; "
            "fix the publisher's format field"
        )
    width, height, state = _jpeg_header(raw, what) if content == "jpeg" else _png_header(raw, what)
    check_size(width, height, max_pixels, f"compressed image ({fmt})")
    needed = 3.0 * width * height + max(3.0 * width * height, state)
    allowed = _DECODE_MEMORY * 3.0 * max_pixels
    if needed > allowed:
        raise ImageError(
            f"{what} ({width}x{height}, a progressive JPEG or a 16-bit PNG) needs about "
            f"{needed / 1e6:.0f} MB to decode, above the {allowed / 1e6:.0f} MB that "
            "max_pixels allows; publish a baseline JPEG or a smaller image, or raise max_pixels"
        )
    wide = content == "png" and state > 0.0  # 16-bit PNG: decode its samples, then scale them
    flags = cv2.IMREAD_COLOR | (cv2.IMREAD_ANYDEPTH if wide else 0)
    bgr = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), flags)
    if wide and bgr is not None and bgr.dtype == np.uint16:
        bgr = to_8bit(bgr)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ImageError(f"{what} could not be decoded: corrupt or truncated")
    check_size(int(bgr.shape[1]), int(bgr.shape[0]), max_pixels, f"compressed image ({fmt})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: one image in memory
