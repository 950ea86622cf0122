"""Torch-free model input: the same 8-bit antialiased bilinear resize as torch, in NumPy.

:func:`dynamic_ofa_ros.preprocess.to_input_tensor` resizes a uint8 RGB frame with torch's CPU
uint8 kernel (``interpolate(mode="bilinear", antialias=True)``, Pillow-SIMD's algorithm) and
normalises it with the ImageNet mean/std. :func:`to_input_array` computes the **same bytes**
without torch, so compiled backends (OpenVINO, ONNX Runtime) need no torch at runtime:

* per axis, torch's weights: the triangle filter stretched by the downscale factor, centred on
  ``scale * (i + 0.5)``, normalised in float64, then rounded to integers at the largest
  precision ``p`` (bits) under which the axis's largest weight still fits int16
  (``_compute_index_ranges_int16_weights``); each output sample is
  ``min(255, (sum(w * x) + 2**(p-1)) >> p)``;
* the width pass first, rounded to 8 bits, then the height pass (a pass whose size does not
  change is skipped, as in torch);
* each pass is a batched float32 matrix product over blocks of neighbouring output samples
  (a block reads one contiguous window of input samples). The sums are integers below
  2**24, so float32 computes them exactly in any order; where ``255 * sum(w)`` would exceed
  that, the weights are split into a high and a low part whose sums each stay exact
  (:class:`_AxisPlan`). The result equals torch's byte for byte (tested on photos and
  random frames of many sizes), and the normalisation then differs by float rounding only
  (< 1e-6).

Plans (index windows and weights) are cached per (input size, output size).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from dynamic_ofa_ros.errors import ImageError
from dynamic_ofa_ros.model_input import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["axis_weights", "resize_u8", "to_input_array"]

#: Output samples per block of a pass. A block's window grows with it (wasted multiply-adds) and
#: fewer blocks mean fewer, larger products; on a 2-core EPYC (Zen 3) 4 was fastest or within
#: noise of it for 224x224, 640x480 and 1280x720 -> 96..160 (8: 10-40 % slower on the width pass).
_BLOCK = 4
#: float32 represents every integer below this exactly.
_EXACT_F32 = float(2**24)
#: OpenBLAS runs a gemm of fewer multiply-adds than this on the calling thread; larger ones wake
#: its thread pool, whose spinning threads cost 5-10x on a busy 2-core machine. Passes are cut
#: into column chunks below it (the result does not depend on the chunking).
_SINGLE_THREAD_MACS = 65536 * 4
_SCALE = (1.0 / (255.0 * np.asarray(IMAGENET_STD, dtype=np.float32))).astype(np.float32)
_SHIFT = (-np.asarray(IMAGENET_MEAN, dtype=np.float32) / np.asarray(IMAGENET_STD, dtype=np.float32)).astype(
    np.float32
)


def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, int]:
    """Integer weights of torch's uint8 kernel for resizing one axis from ``n_in`` to ``n_out`` samples.

    Returns:
        ``(weights, precision)``: a float64 ``(n_out, n_in)`` matrix of integers (torch's int16
        weights, zero outside each output's window) and the number of fraction bits.
    """
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0  # (interp_size / 2) * scale, interp_size = 2
    max_taps = math.ceil(support) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    largest = 0.0
    for i in range(n_out):
        center = scale * (i + 0.5)
        first = max(int(center - support + 0.5), 0)
        size = min(max(min(int(center + support + 0.5), n_in) - first, 0), max_taps)
        distance = np.abs((np.arange(size) + first - center + 0.5) * invscale)
        row = np.where(distance < 1.0, 1.0 - distance, 0.0)
        total = float(row.sum())
        if total != 0.0:
            row = row / total
            largest = max(largest, float(row.max()))
        weights[i, first : first + size] = row
    precision = 0
    while precision < 22 and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    return np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)), precision


@dataclass(frozen=True)
class _AxisPlan:
    """One pass: windows of input samples per block and the block's weights, ready for matmul.

    Without a split (``split_bits == 0``) the weights are ``w / 2**p``, so the product is the
    exact quotient and the output is ``floor(q + 0.5)``. With a split, ``w = hi * 2**k + lo``:
    the first ``block`` rows hold ``hi / 2**(p-k)``, the next ``block`` rows ``lo``; the output is
    ``floor(hi_q + floor((lo_sum + 2**(p-1)) / 2**k) / 2**(p-k))`` -- the same integer, with
    every intermediate value below 2**24.
    """

    n_out: int
    block: int
    index: np.ndarray  # (blocks, window) input sample indices
    weights: np.ndarray  # (blocks, block or 2 * block, window) float32
    precision: int
    split_bits: int

    def apply(self, samples: np.ndarray) -> np.ndarray:
        """``samples`` (n_in, ...) uint8 or float32 -> (n_out, ...) float32 holding 0..255 integers."""
        rest = samples.shape[1:]
        blocks, window = self.index.shape
        gathered = samples[self.index].reshape(blocks, window, -1).astype(np.float32, copy=False)
        rows, columns = self.weights.shape[1], gathered.shape[2]
        product = np.empty((blocks, rows, columns), dtype=np.float32)
        step = max(1, _SINGLE_THREAD_MACS // (rows * window) - 1)
        for first in range(0, columns, step):
            chunk = slice(first, first + step)
            np.matmul(self.weights, gathered[:, :, chunk], out=product[:, :, chunk])
        if self.split_bits:
            high, low = product[:, : self.block], product[:, self.block :]
            low *= 2.0**-self.split_bits
            low += 2.0 ** (self.precision - 1 - self.split_bits)
            np.floor(low, out=low)
            low *= 2.0 ** -(self.precision - self.split_bits)
            high += low
            result = high
        else:
            result = product
            result += 0.5
        np.floor(result, out=result)
        np.minimum(result, 255.0, out=result)
        resized: np.ndarray = result.reshape(blocks * self.block, *rest)[: self.n_out]
        return resized


@functools.lru_cache(maxsize=64)
def _plan(n_in: int, n_out: int, block: int = _BLOCK) -> _AxisPlan:
    integer, precision = axis_weights(n_in, n_out)
    blocks = math.ceil(n_out / block)
    spans = []
    for b in range(blocks):
        rows = integer[b * block : (b + 1) * block]
        columns = np.nonzero(rows.any(axis=0))[0]
        spans.append((int(columns[0]), int(columns[-1]) + 1) if columns.size else (0, 1))
    window = max(hi - lo for lo, hi in spans)
    starts = np.array([min(lo, n_in - window) for lo, _ in spans], dtype=np.intp)
    banded = np.zeros((blocks, block, window), dtype=np.float64)
    for b, start in enumerate(starts):
        rows = integer[b * block : (b + 1) * block, start : start + window]
        banded[b, : rows.shape[0]] = rows
    row_sum = float(integer.sum(axis=1).max())
    taps = int(np.count_nonzero(integer, axis=1).max())
    split = 0
    # the high part's sum shrinks by 2**split; the low part's stays below 255 * 2**split * taps
    while 255.0 * row_sum / 2**split + 255.0 * 2**split * taps + 2.0 ** (precision - 1) >= _EXACT_F32:
        split += 1
        if split > precision:  # pragma: no cover - int16 weights never need this
            raise ImageError(f"cannot resize {n_in} -> {n_out} samples exactly in float32")
    if split == 0:
        weights = banded * 2.0**-precision
    else:
        high = np.floor(banded / 2**split)
        weights = np.concatenate([high * 2.0 ** -(precision - split), banded - high * 2**split], axis=1)
    return _AxisPlan(
        n_out=n_out,
        block=block,
        index=starts[:, None] + np.arange(window, dtype=np.intp)[None, :],
        weights=np.ascontiguousarray(weights, dtype=np.float32),
        precision=precision,
        split_bits=split,
    )


def resize_u8(rgb: np.ndarray, resolution: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (r, r, 3) float32 holding the 8-bit image torch's uint8 kernel produces."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"expected an (H, W, 3) uint8 image, got {rgb.dtype} {tuple(rgb.shape)}")
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    image: np.ndarray = np.ascontiguousarray(rgb)
    if width != resolution:
        # (W, H, 3): the width pass contracts over the first axis; cv2 transposes 3-channel images fast
        image = _plan(width, resolution).apply(cv2.transpose(image))
        image = cv2.transpose(np.ascontiguousarray(image))
    if height != resolution:
        image = _plan(height, resolution).apply(image)
    return np.asarray(image, dtype=np.float32)


def to_input_array(rgb: np.ndarray, *, resolution: int, out: np.ndarray | None = None) -> np.ndarray:
    """The model input (1, 3, r, r) float32 for an (H, W, 3) uint8 RGB image, without torch.

    Equal to :func:`dynamic_ofa_ros.preprocess.to_input_tensor` (same 8-bit resize, same
    normalisation; float rounding only). ``out`` receives the result when given.
    """
    resized = resize_u8(rgb, int(resolution))
    if out is None:
        out = np.empty((1, 3, resolution, resolution), dtype=np.float32)
    elif out.shape != (1, 3, resolution, resolution) or out.dtype != np.float32:
        raise ImageError(
            f"out has shape {out.shape} {out.dtype}; need (1, 3, {resolution}, {resolution}) f32"
        )
    planes = resized.transpose(2, 0, 1)
    np.multiply(planes, _SCALE[:, None, None], out=out[0])
    out[0] += _SHIFT[:, None, None]
    return out
