"""Image conversion (ROS encodings → RGB uint8) and the one model-input preprocessing.

**The preprocessing** (used by the engine, BN calibration, accuracy evaluation and
training-time evaluation, on CPU and GPU alike) is :func:`to_input_tensor` /
:func:`to_input_batch`:

1. the uint8 RGB image (H, W, 3) is resized to ``resolution`` × ``resolution``
   (aspect ratio not kept, no crop) with antialiased bilinear interpolation
   (``torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
   antialias=True)``) into an **8-bit image**, like any image resizer's output —
   skipped when the image already has that size (the identity);
2. it becomes float32 (1, 3, r, r) and is normalised with the ImageNet mean/std:
   ``(x / 255 - mean) / std``, computed as ``x * (1 / (255 * std)) + (-mean / std)``.

On the CPU step 1 runs torch's native uint8 kernel (AVX2, fixed-point weights), on
CUDA the float kernel followed by rounding to the nearest integer and clamping to
0..255 (CUDA has no uint8 antialiased kernel). The two agree to within one grey
level (about 10-18 % of the pixels differ by exactly 1, i.e. 0.017 after
normalisation); images that need no resizing give identical inputs. The 8-bit
kernel makes the CPU path 5-9x faster than resizing in float (on this 2-core CPU
at 640x480 under load: 0.5-0.8 ms instead of 3.6-7 ms). OpenCV's INTER_AREA is a
different filter and is not used.

**Limits.** Images above ``max_pixels`` (default 40 megapixels) are rejected with
:class:`ImageError` *before* anything is allocated or decoded (an 8000 × 8000 frame
is refused: resize it upstream, e.g. with ``image_proc``'s resize node, or raise the
limit). Supported raw encodings: rgb8, bgr8, rgba8, bgra8, mono8. Compressed
images (:func:`decode_compressed`) are checked by content, not by their label: only
JPEG and PNG are decoded, and only after the size in their header passed the same
limit, so a decode takes at most about twice the memory of the largest image the limit
allows (OpenCV returns a copy of what it decoded; see ``docs/runtime.md``).
"""

from __future__ import annotations

import array
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dynamic_ofa_ros.errors import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SUPPORTED_ENCODINGS",
    "check_rgb",
    "decode_compressed",
    "image_from_buffer",
    "to_input_batch",
    "to_input_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_PIXELS = 40_000_000
#: encoding → (channels, index of R, G, B within a pixel)
_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)
_constants: dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor]] = {}


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
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
    ``step * height``. mono8 is replicated to three channels; alpha is dropped. For
    rgb8 without padding the result is a read-only view of ``data`` (no copy);
    otherwise a new array. ``is_bigendian`` does not matter for 8-bit encodings.
    Raises :class:`ImageError` for other encodings, inconsistent sizes or images
    above ``max_pixels``.
    """
    for name, value in (("width", width), ("height", height), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ImageError(f"image {name}={value!r} must be an integer")
    width, height, step = int(width), int(height), int(step)
    enc = str(encoding).strip().lower()
    if enc not in _ENCODINGS:
        raise ImageError(
            f"image encoding {encoding!r} is not supported; use one of {', '.join(SUPPORTED_ENCODINGS)} "
            "(convert e.g. bayer/yuv/16-bit/float images upstream, e.g. with image_proc or cv_bridge)"
        )
    _check_size(width, height, max_pixels, f"image ({encoding})")
    channels, order = _ENCODINGS[enc]
    row = width * channels
    if step < row:
        raise ImageError(
            f"image step {step} is smaller than width*channels = {width}*{channels} = {row}; fix the header"
        )
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if buf.dtype != np.uint8:
        raise ImageError(f"image data has dtype {buf.dtype}, expected bytes / uint8")
    if buf.size != step * height:
        raise ImageError(
            f"image data has {buf.size} bytes but step*height = {step}*{height} = {step * height}; "
            "the message is truncated or its header is wrong"
        )
    rows = buf.reshape(height, step)[:, :row].reshape(height, width, channels)
    if enc == "rgb8":
        return rows if step == row else np.ascontiguousarray(rows)
    if enc == "mono8":
        return np.repeat(rows, 3, axis=2)
    return np.ascontiguousarray(rows[:, :, list(order)])


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
_HIGH_DEPTH = (
    "16-bit (and 12-bit) images are not supported, like the raw 16UC1/mono16/rgb16 encodings; "
    "convert to 8-bit upstream (e.g. with image_proc or cv_bridge)"
)


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
    if depth == 16:
        raise ImageError(f"{what} is a 16-bit PNG: {_HIGH_DEPTH}")
    return int(width), int(height), 0.0


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
    dropped; 16-bit PNGs and 12-bit JPEGs are refused like 16UC1/mono16/rgb16.
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
    _check_size(width, height, max_pixels, f"compressed image ({fmt})")
    needed = 3.0 * width * height + max(3.0 * width * height, state)
    allowed = _DECODE_MEMORY * 3.0 * max_pixels
    if needed > allowed:
        raise ImageError(
            f"{what} is a progressive JPEG of {width}x{height}: decoding it keeps its coefficients "
            f"besides the image, about {needed / 1e6:.0f} MB, above the {allowed / 1e6:.0f} MB that "
            "max_pixels allows; publish a baseline JPEG or a smaller image, or raise max_pixels"
        )
    bgr = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ImageError(f"{what} could not be decoded: corrupt or truncated")
    _check_size(int(bgr.shape[1]), int(bgr.shape[0]), max_pixels, f"compressed image ({fmt})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: one image in memory


def check_rgb(image: np.ndarray | torch.Tensor, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise :class:`ImageError` unless ``image`` is an (H, W, 3) uint8 array/tensor within the size limit."""
    if isinstance(image, np.ndarray):
        dtype_ok = image.dtype == np.uint8
    elif isinstance(image, torch.Tensor):
        dtype_ok = image.dtype == torch.uint8
    else:
        raise ImageError(f"expected an (H, W, 3) uint8 numpy array or tensor, got {type(image).__name__}")
    shape = tuple(image.shape)
    if len(shape) != 3 or shape[2] != 3:
        raise ImageError(
            f"expected an (H, W, 3) RGB image, got shape {shape}; convert it with image_from_buffer"
        )
    if not dtype_ok:
        raise ImageError(f"expected dtype uint8, got {image.dtype}; scale/convert to 8-bit RGB first")
    _check_size(int(shape[1]), int(shape[0]), max_pixels, "image")


def _norm_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (device.type, device.index)
    if key not in _constants:
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32)
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
        scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(device)
        shift = (-mean / std).view(1, 3, 1, 1).to(device)
        _constants[key] = (scale, shift)
    return _constants[key]


def _as_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image
    if not image.flags.writeable:
        # torch.from_numpy warns on read-only arrays; we never write, but copying is cheap relative to a model
        image = image.copy()
    return torch.from_numpy(np.ascontiguousarray(image))


def _resize_u8(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float32 (N, 3, r, r) holding the 8-bit resized image (values 0..255)."""
    size = (resolution, resolution)
    if image.shape[-2:] == size:
        return image.float()
    if image.device.type == "cpu":
        resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        return resized.float()
    x = F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0.0, 255.0)


def _resize_normalise(image: torch.Tensor, resolution: int, out: torch.Tensor | None) -> torch.Tensor:
    """uint8 (N, 3, H, W) → normalised float32 (N, 3, r, r), written into ``out`` when given."""
    x = _resize_u8(image, resolution)
    scale, shift = _norm_constants(x.device)
    if out is None:
        return torch.addcmul(shift, x, scale)
    return torch.addcmul(shift, x, scale, out=out)


def to_input_tensor(
    rgb: np.ndarray | torch.Tensor,
    *,
    resolution: int,
    device: str | torch.device = "cpu",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The model input (1, 3, r, r) float32 for an (H, W, 3) uint8 RGB image (see the module docstring).

    ``out`` (shape (1, 3, r, r), float32, on ``device``) receives the result (the
    engine's static input buffer on CUDA). A tensor ``rgb`` may already be on the device.
    """
    check_rgb(rgb)
    dev = torch.device(device)
    t = _as_tensor(rgb).to(dev, non_blocking=True)
    if out is not None and (tuple(out.shape) != (1, 3, resolution, resolution) or out.device != t.device):
        raise ImageError(
            f"out has shape {tuple(out.shape)} on {out.device}; need (1, 3, {resolution}, {resolution})"
        )
    return _resize_normalise(t.permute(2, 0, 1).unsqueeze(0), int(resolution), out)


def to_input_batch(
    images: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
    *,
    resolution: int,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(N, 3, r, r) float32 inputs for N RGB uint8 images — same result per image as :func:`to_input_tensor`.

    ``images`` is an (N, H, W, 3) uint8 array/tensor or a sequence of (H, W, 3) images
    (sizes may differ).
    """
    dev = torch.device(device)
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ImageError(f"expected an (N, H, W, 3) uint8 batch, got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ImageError("the batch is empty")
        check_rgb(images[0])
        t = _as_tensor(images).to(dev, non_blocking=True)
        return _resize_normalise(t.permute(0, 3, 1, 2), int(resolution), None)
    items = list(images)
    if not items:
        raise ImageError("the batch is empty")
    out = torch.empty((len(items), 3, resolution, resolution), dtype=torch.float32, device=dev)
    for i, image in enumerate(items):
        to_input_tensor(image, resolution=resolution, device=dev, out=out[i : i + 1])
    return out
