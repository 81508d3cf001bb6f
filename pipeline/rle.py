"""COCO run-length encoding split between the model's device and the host, byte-identical to pycocotools.

COCO RLE reads a mask in column-major (Fortran) order and stores the lengths of alternating runs, zeros first (a
mask whose first pixel is set starts with a run of length 0). The device part finds the run *boundaries* (torch,
so it runs on CUDA and CPU alike): only boundary positions leave the device, a few KiB per mask instead of H×W
bools. The host part turns boundaries into counts and counts into pycocotools' compressed ``counts`` string with
numpy, vectorised over every run of every mask of a frame.

Masks may be given as crops: a crop is the box ``(y0, x0, y1, x1)`` of a full ``H × W`` mask outside which every
pixel is known to be 0 (see ``pipeline.output`` for how the box is found from low-resolution logits). Boundaries of a
crop are computed with a 0 border above and below each column, mapped to full-frame positions, and boundary pairs
that meet at the same position (a column that ends set, followed by one that starts set, when the crop spans the
whole height) cancel, so a crop gives exactly the runs of the full mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

_MAX_CHUNKS = 7  # 5 bits per char: 7 chars carry any 32-bit signed difference


@dataclass
class Boundaries:
    """Run boundaries of N masks of one frame, on the host: ``positions[offsets[i]:offsets[i + 1]]`` are the sorted
    column-major positions where mask i changes value (0 → 1 or 1 → 0), for a mask of ``height × width``."""

    positions: np.ndarray  # int64 [total]
    offsets: np.ndarray  # int64 [N + 1]
    height: int
    width: int


def crop_boundaries(crops: Sequence[torch.Tensor], boxes: Sequence[tuple[int, int, int, int]],
                    height: int, width: int) -> tuple[torch.Tensor, list[int]]:
    """Boundary flags of boolean crops, one flat bool tensor on their device, and each crop's flag count.

    Crop i (``[y1 - y0, x1 - x0]``, the pixels of ``boxes[i]``) is padded with a 0 row above and below; flag j of its
    column c marks a change between padded rows j and j + 1, i.e. at full-frame position ``(x0 + c)·H + y0 + j``.
    The host maps flags to positions (``boundaries_from_flags``): the flags cost one byte per crop pixel to move,
    and no device-side ``nonzero`` (which would wait for the device) is needed.
    """
    flags, sizes = [], []
    for crop, (y0, x0, y1, x1) in zip(crops, boxes):
        if crop.numel() == 0:
            sizes.append(0)
            continue
        cols = crop.t().to(torch.int8)  # [w, h] column-major
        padded = torch.nn.functional.pad(cols, (1, 1))  # [w, h + 2]
        change = padded[:, 1:] != padded[:, :-1]  # [w, h + 1]
        flags.append(change.reshape(-1))
        sizes.append(change.numel())
    if not flags:
        device = crops[0].device if crops else torch.device("cpu")
        return torch.zeros(0, dtype=torch.bool, device=device), sizes
    return torch.cat(flags), sizes


def boundaries_from_flags(flags: np.ndarray, sizes: Sequence[int], boxes: Sequence[tuple[int, int, int, int]],
                          height: int, width: int) -> Boundaries:
    """Full-frame boundary positions of every crop from the flags of ``crop_boundaries`` (now on the host)."""
    positions, counts = [], []
    start = 0
    for size, (y0, x0, y1, x1) in zip(sizes, boxes):
        if size == 0:
            counts.append(0)
            continue
        h1 = y1 - y0 + 1
        idx = np.flatnonzero(flags[start:start + size])
        start += size
        col, row = np.divmod(idx, h1)
        pos = (col + x0) * height + y0 + row
        if pos.size and pos[-1] == height * width:  # the crop's last pixel is the mask's and is set: no boundary
            pos = pos[:-1]
        if y1 - y0 == height and pos.size > 1:  # full-height crop: a column ending set meets the next starting set
            dup = pos[1:] == pos[:-1]
            if dup.any():
                drop = np.zeros(pos.size, dtype=bool)
                drop[1:] |= dup
                drop[:-1] |= dup
                pos = pos[~drop]
        positions.append(pos)
        counts.append(pos.size)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = np.concatenate(positions).astype(np.int64) if positions else np.zeros(0, dtype=np.int64)
    return Boundaries(flat, offsets, height, width)


def full_boundaries(masks: torch.Tensor) -> Boundaries:
    """Boundaries of whole boolean masks ``[N, H, W]`` (any device); the reference path and a convenience for
    callers that hold full masks."""
    n, h, w = masks.shape
    boxes = [(0, 0, h, w)] * n
    flags, sizes = crop_boundaries(list(masks), boxes, h, w)
    return boundaries_from_flags(flags.cpu().numpy(), sizes, boxes, h, w)


def run_counts(b: Boundaries) -> list[np.ndarray]:
    """COCO run lengths of every mask (zeros first) from its boundaries."""
    total = b.height * b.width
    out = []
    for i in range(len(b.offsets) - 1):
        pos = b.positions[b.offsets[i]:b.offsets[i + 1]]
        edges = np.empty(pos.size + 2, dtype=np.int64)
        edges[0], edges[-1] = 0, total
        edges[1:-1] = pos
        out.append(np.diff(edges))
    return out


def compress_counts(counts: np.ndarray) -> str:
    """pycocotools' compressed string of one run-length list (``rleToString``): each count past the second is
    stored from the fourth on as its difference to the count two before, in 5-bit little-endian chunks with a continuation bit and
    sign extension, each chunk offset by 48 into printable ASCII."""
    x = counts.astype(np.int64)
    if x.size > 3:
        x = x.copy()
        x[3:] -= counts[1:-2]
    chunks = np.empty((x.size, _MAX_CHUNKS), dtype=np.int64)
    emit = np.empty((x.size, _MAX_CHUNKS), dtype=bool)
    rest = x
    going = np.ones(x.size, dtype=bool)
    for k in range(_MAX_CHUNKS):
        c = rest & 0x1F
        rest = rest >> 5
        more = np.where(c & 0x10, rest != -1, rest != 0)
        emit[:, k] = going
        chunks[:, k] = c | np.where(more, 0x20, 0)
        going = going & more
    chars = (chunks[emit] + 48).astype(np.uint8)
    return chars.tobytes().decode("ascii")


def coco_rles(b: Boundaries) -> list[dict]:
    """COCO RLE dicts (``{"size": [H, W], "counts": str}``) of every mask, as ``pycocotools.mask.encode`` gives."""
    size = [b.height, b.width]
    return [{"size": size, "counts": compress_counts(c)} for c in run_counts(b)]
