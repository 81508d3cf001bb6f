"""Bicubic resizing of uint8 frames that reproduces Pillow's ``Image.resize`` (default BICUBIC filter) bit for bit.

The official video predictor resizes every JPEG frame with Pillow, so matching its input pixel for pixel means
redoing Pillow's resampling arithmetic rather than approximating it with ``F.interpolate``: per axis, each output
pixel reads a window of input taps with bicubic (a = -0.5) weights, the filter widened by the scale when
downscaling; the weights, normalised by their sum, are turned into fixed point with ``PRECISION_BITS`` fractional
bits, and a pass adds half a unit to the integer products, shifts the fractional bits away and clips to 0..255.
Two passes, each rounded to 8 bits. Pillow runs the horizontal pass first, except (since Pillow 13) when the height
shrinks by more than twice as many pixels as the width; the installed Pillow decides, as it does for the official
loader.

Taps and integer weights are computed once per (input size, output size, device). A pass gathers whole rows with
``index_select`` and accumulates ``uint8 x int32`` products in int32, on the frames' device; the axis being
resampled is moved to dim 1 first, so both passes gather rows. On CPU the output rows are done in blocks whose
accumulator stays in cache.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point fraction for 8-bit images
BICUBIC_A = -0.5
BICUBIC_SUPPORT = 2.0
_HALF = 1 << (PRECISION_BITS - 1)
_CPU_BLOCK_ELEMENTS = 1 << 19  # int32 accumulator entries per block on CPU (2 MiB)


def _pillow_major() -> int:
    try:
        return int(version("pillow").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 13


PILLOW_VERTICAL_FIRST = _pillow_major() >= 13  # whether the installed Pillow may run the vertical pass first


@dataclass(frozen=True)
class Taps:
    """One axis of a resize: output pixel ``j`` is ``sum_k weight[k, j] * input[index[k, j]]`` in fixed point."""

    index: torch.Tensor  # [K, out] int64 input positions (past a pixel's window: a valid position with weight 0)
    weight: torch.Tensor  # [K, out, 1] int32 weights scaled by 2**PRECISION_BITS

    @property
    def size(self) -> int:
        return self.index.shape[1]


def _bicubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    near = ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * BICUBIC_A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=32)
def _host_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's window bounds and fixed-point weights for one axis, in its float64 operation order."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filter_scale
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - first
    taps = int(count.max())
    k = np.arange(taps)[:, None]
    inside = k < count
    weight = np.where(inside, _bicubic(((k + first) - center + 0.5) * (1.0 / filter_scale)), 0.0)
    total = np.zeros(out_size)
    for row in weight:  # summed tap after tap, as Pillow does
        total = total + row
    weight = np.where(total != 0.0, weight / np.where(total != 0.0, total, 1.0), weight)
    scaled = weight * (1 << PRECISION_BITS)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return np.where(inside, k + first, first), fixed


@functools.lru_cache(maxsize=32)
def pillow_taps(in_size: int, out_size: int, device: torch.device) -> Taps:
    """Taps and fixed-point weights of Pillow's bicubic resampling of one axis from ``in_size`` to ``out_size``."""
    index, weight = _host_taps(in_size, out_size)
    return Taps(torch.from_numpy(index).to(device), torch.from_numpy(weight).to(device).unsqueeze(-1))


def _resample_rows(x: torch.Tensor, taps: Taps) -> torch.Tensor:
    """One Pillow pass over dim 1 of a contiguous uint8 ``[N, L, M]``: ``[N, taps.size, M]`` uint8."""
    n, _, m = x.shape
    size = taps.size
    rows = size
    if x.device.type == "cpu":
        blocks = -(-size * n * m // _CPU_BLOCK_ELEMENTS)
        rows = -(-size // max(blocks, 1))
    out = torch.empty((n, size, m), dtype=torch.uint8, device=x.device)
    acc_rows = torch.empty((n, rows, m), dtype=torch.int32, device=x.device)
    for start in range(0, size, rows):
        stop = min(start + rows, size)
        acc = acc_rows[:, : stop - start].fill_(_HALF)
        for k in range(taps.index.shape[0]):
            acc.addcmul_(x.index_select(1, taps.index[k, start:stop]), taps.weight[k, start:stop])
        out[:, start:stop] = acc.bitwise_right_shift_(PRECISION_BITS).clamp_(0, 255)
    return out


def vertical_first(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Whether Pillow resamples the height before the width for this resize (both axes change size)."""
    dh, dw = in_hw[0] - out_hw[0], in_hw[1] - out_hw[1]
    return PILLOW_VERTICAL_FIRST and dh > 0 and dh > 2 * dw and in_hw[1] != out_hw[1]


def pil_bicubic_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize uint8 ``[..., H, W]`` images to ``size = (h, w)`` exactly as Pillow's ``Image.resize((w, h))`` does.

    Channels are leading dims: ``[B, 3, H, W]`` frames go as they are, ``[B, H, W, 3]`` ones as
    ``frames.permute(0, 3, 1, 2)`` (a view; the first pass reads it in any layout). Returns a contiguous
    ``[..., h, w]`` uint8 tensor on the images' device, or ``images`` itself when the size does not change.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    *lead, in_h, in_w = images.shape
    out_h, out_w = size
    if (in_h, in_w) == (out_h, out_w):
        return images
    device = images.device
    rows_taps, cols_taps = pillow_taps(in_h, out_h, device), pillow_taps(in_w, out_w, device)
    if in_w == out_w or vertical_first((in_h, in_w), (out_h, out_w)):
        x = _resample_rows(images.reshape(-1, in_h, in_w).contiguous(), rows_taps)
        if in_w != out_w:
            x = _resample_rows(x.transpose(1, 2).contiguous(), cols_taps).transpose(1, 2)
    else:
        x = _resample_rows(images.transpose(-1, -2).reshape(-1, in_w, in_h).contiguous(), cols_taps)
        x = x.transpose(1, 2).contiguous()
        if in_h != out_h:
            x = _resample_rows(x, rows_taps)
    return x.contiguous().view(*lead, out_h, out_w)
