"""COCO run-length encoding (pycocotools' compressed ``{"size": [H, W], "counts": str}``): the one codec of the
project, which encodes, validates and decodes.

COCO RLE reads a mask in column-major (Fortran) order and stores the lengths of alternating runs, zeros first (a
mask whose first pixel is set starts with a run of length 0). Each run is written as 5-bit groups, least significant
first, chars ``'0' + group`` with 0x20 = "more follows" and 0x10 in the last group the sign; run m > 2 is stored as a
delta to run m - 2.

* Host masks (``encode_rle``/``encode_rles``, ``decode_rle``, ``rle_areas``): pycocotools, counts as ``str`` so a
  record is JSON-ready; ``coco_form`` is the form pycocotools' own functions take.
* Device masks (``crop_boundaries``, ``full_boundaries``, then ``coco_rles``): the run *boundaries* are found with
  torch on the model's device, so only boundary positions leave it (a few KiB per mask instead of H×W bools); the
  host turns them into counts and counts into the compressed string with numpy, vectorised over every run of every
  mask of a frame, byte-identical to pycocotools. Masks may be given as crops: a crop is the box
  ``(y0, x0, y1, x1)`` of a full ``H × W`` mask outside which every pixel is known to be 0 (see
  ``pipeline.actor.output_stage`` for how the box is found from low-resolution logits). Boundaries of a crop are
  computed with a 0 border above and below each column, mapped to full-frame positions, and boundary pairs that meet
  at the same position (a column that ends set, followed by one that starts set, when the crop spans the whole
  height) cancel, so a crop gives exactly the runs of the full mask.
* Validation (``rle_run_totals``): pycocotools' decoder writes runs into an H*W buffer without bounds checks, so a
  malformed ``counts`` string from a manifest could crash a worker. The run lengths of many strings are decoded at
  once with numpy (in chunks, so memory stays bounded), giving per string whether it is well formed with
  non-negative runs, and their sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from pycocotools import mask as mask_utils

_MAX_CHUNKS = 7  # 5 bits per char: 7 chars carry any 32-bit signed difference
_MAX_CHARS_PER_NUMBER = 12  # 60 bits: more continuation chars than this cannot be a valid run length
_MAX_RUN_BITS = 32  # pycocotools keeps run lengths as uint32
_CHUNK_CHARS = 1 << 18


# --- host masks (pycocotools) -------------------------------------------------------------------------------------

def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of one boolean HxW mask, counts as a str (JSON-ready)."""
    return encode_rles(np.asarray(mask)[None])[0]


def encode_rles(masks: np.ndarray) -> list[dict]:
    """COCO RLEs of N boolean masks given as an [N, H, W] array (one pycocotools call for all)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape [N, H, W], got {masks.shape}")
    fortran = np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)
    rles = mask_utils.encode(fortran)
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def coco_form(rle: dict) -> dict:
    """The form pycocotools' functions take: compressed counts as bytes (an uncompressed int list is compressed)."""
    size = [int(v) for v in rle["size"]]
    counts = rle["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_rle(rle: dict) -> np.ndarray:
    """Boolean HxW mask of a COCO RLE (counts as str or bytes, compressed or an uncompressed int list)."""
    return mask_utils.decode(coco_form(rle)).astype(bool)


def rle_areas(rles: Sequence[dict]) -> np.ndarray:
    """Pixel count of each RLE (int64), without decoding a bitmap."""
    if not rles:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(mask_utils.area([coco_form(r) for r in rles]), dtype=np.int64).reshape(-1)


# --- device masks: run boundaries on the device, strings on the host ---------------------------------------------


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


# --- validation of manifest strings (no bitmap decode) -------------------------------------------------------


def rle_run_totals(counts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """For each string of ``counts``: (well_formed, sum of run lengths). Null and empty strings are malformed, and
    so is one with a number beyond 32 bits (a run or difference no valid mask has)."""
    if isinstance(counts, pa.ChunkedArray):
        parts = [rle_run_totals(chunk) for chunk in counts.chunks]
        return (np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=bool),
                np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int64))
    n = len(counts)
    ok = np.zeros(n, dtype=bool)
    totals = np.zeros(n, dtype=np.int64)
    if n == 0:
        return ok, totals
    arr = counts.cast(pa.large_binary())
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + n + 1]
    data_buf = arr.buffers()[2]
    raw = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    row = 0
    while row < n:
        # rows [row, stop) hold about _CHUNK_CHARS bytes, contiguous in the Arrow data buffer
        stop = max(int(np.searchsorted(offsets, offsets[row] + _CHUNK_CHARS, side="right")) - 1, row + 1)
        stop = min(stop, n)
        rows = row + np.flatnonzero(lengths[row:stop] > 0)
        if rows.size:
            ok[rows], totals[rows] = _check_chunk(raw[offsets[row]:offsets[stop]], lengths[rows])
        row = stop
    ok &= valid
    return ok, totals


def _check_chunk(raw: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ok, total) per string for non-empty strings concatenated in ``raw`` (uint8) with lengths ``lens``.

    A number is a run of "more follows" chars (>= 'P') closed by one that is not; so the numbers before a char are
    the closing chars before it, and only the (few) continuation chars need positions."""
    start = np.cumsum(lens) - lens
    last = start + lens - 1
    is_end = raw < 80  # chars '0'..'O' carry no "more follows" bit
    bad = ~is_end[last]  # a number cut off by the end of the string
    if raw.min() < 48 or raw.max() > 111:
        bad |= np.maximum.reduceat((raw < 48) | (raw > 111), start)
    is_end[last] = True
    # every number's closing group, sign-extended from its 0x10 bit
    values = ((((raw - 48) << 3).view(np.int8) >> 3)[is_end]).astype(np.int64)
    cont = np.flatnonzero(~is_end)
    first = start - np.searchsorted(cont, start)  # each string's first number
    if cont.size:
        _add_leading_groups(raw, cont, values, first, bad)
    totals = values[first]  # run 0 is stored as is
    bad |= totals < 0
    for parity in (0, 1):
        _add_chains(values, parity, first, bad, totals)
    return ~bad, totals


def _add_leading_groups(raw: np.ndarray, cont: np.ndarray, values: np.ndarray, first: np.ndarray,
                        bad: np.ndarray) -> None:
    """Numbers of several chars: their continuation chars ``cont`` (positions in ``raw``) put below the closing
    group in ``values``. A number of more than _MAX_CHARS_PER_NUMBER chars, or one beyond 32 bits (no run of a
    valid mask is: pycocotools keeps runs as uint32), marks its string ``bad`` and counts as 0."""
    number = cont - np.arange(cont.size)  # the closing chars before a char = chars before it minus its rank in cont
    head = np.flatnonzero(np.diff(number, prepend=-1))  # first continuation char of each number
    group = np.arange(cont.size) - np.repeat(head, np.diff(head, append=cont.size))
    chars = np.diff(head, append=cont.size) + 1
    multi = number[head]
    low = np.add.reduceat(((raw[cont] - 48) & 0x1F).astype(np.int64)
                          << (5 * np.minimum(group, _MAX_CHARS_PER_NUMBER - 1)), head)
    values[multi] = (values[multi] << (5 * (np.minimum(chars, _MAX_CHARS_PER_NUMBER) - 1))) + low
    wrong = (chars > _MAX_CHARS_PER_NUMBER) | (np.abs(values[multi]) >> _MAX_RUN_BITS > 0)
    if wrong.any():
        values[multi[wrong]] = 0
        bad[np.searchsorted(first, multi[wrong], side="right") - 1] = True


def _add_chains(values: np.ndarray, parity: int, first: np.ndarray, bad: np.ndarray, totals: np.ndarray) -> None:
    """Runs m > 0 of every string held at global number positions of one ``parity``: run m is the prefix sum of
    its delta chain m, m - 2, ... (down to run 1 or 2), so within one parity class each string's chain is a
    contiguous stretch of one cumulative sum, less the sum before it. Adds their sum to ``totals`` and marks a
    string with a negative run ``bad``. Every |number| < 2**32, so the int64 sums cannot overflow."""
    numbers = values[parity::2]
    csum = np.empty(numbers.size + 1, dtype=np.int64)
    np.cumsum(numbers, out=csum[:-1])
    csum[-1] = 0
    end = np.append(first[1:], values.size)
    lo = (first + ((parity - first) & 1)) >> 1  # each string's first number of this parity (index in ``numbers``)
    hi = (end + ((parity - end) & 1)) >> 1
    chain = lo + ((first & 1) == parity)  # run 0 is no chain's member
    size = hi - chain
    before = np.where(chain > 0, csum[chain - 1], 0)
    cuts = np.empty(2 * lo.size + 1, dtype=np.int64)
    cuts[0:-1:2], cuts[1::2], cuts[-1] = lo, chain, numbers.size
    some = size > 0
    lowest = np.minimum.reduceat(csum, cuts)[1::2] - before
    bad |= some & (lowest < 0)
    totals += np.where(some, np.add.reduceat(csum, cuts)[1::2] - size * before, 0)
