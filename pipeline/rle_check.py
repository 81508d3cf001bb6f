"""Vectorised check of COCO compressed RLE strings (no bitmap decode).

pycocotools' decoder writes runs into an H*W buffer without bounds checks, so a malformed ``counts`` string from
a manifest could crash a worker. This decodes the run lengths of many strings at once with numpy (in chunks, so
memory stays bounded) and reports, per string, whether it is well formed with non-negative runs, and their sum.

Format: each number is 5-bit groups, least significant first, chars ``'0' + group`` with 0x20 = "more follows";
0x10 in the last group is the sign. Run m > 2 is stored as a delta to run m - 2.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_MAX_CHARS_PER_NUMBER = 12  # 60 bits: more continuation chars than this cannot be a valid run length
_CHUNK_CHARS = 4_000_000


def rle_run_totals(counts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """For each string of ``counts``: (well_formed, sum of run lengths). Null and empty strings are malformed."""
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
    """(ok, total) per string for non-empty strings concatenated in ``raw`` (uint8) with lengths ``lens``."""
    str_start = np.cumsum(lens) - lens
    last = str_start + lens - 1
    bad = np.maximum.reduceat(((raw < 48) | (raw > 111)).view(np.uint8), str_start) > 0
    is_end = raw < 80  # chars '0'..'O' carry no "more follows" bit
    bad |= ~is_end[last]  # a number cut off by the end of the string
    is_end[last] = True
    tok_end = np.flatnonzero(is_end)
    ntok = np.add.reduceat(is_end.view(np.uint8), str_start, dtype=np.int64)
    tok_start = np.empty_like(tok_end)
    tok_start[0] = 0
    tok_start[1:] = tok_end[:-1] + 1
    tok_len = tok_end - tok_start + 1
    if tok_len.max() > _MAX_CHARS_PER_NUMBER:
        tok_str = np.repeat(np.arange(lens.size), ntok)
        bad |= np.bincount(tok_str[tok_len > _MAX_CHARS_PER_NUMBER], minlength=lens.size) > 0
        tok_len = np.minimum(tok_len, _MAX_CHARS_PER_NUMBER)
    values = (raw[tok_start].astype(np.int64) - 48) & 0x1F
    for k in range(1, int(tok_len.max())):
        longer = np.flatnonzero(tok_len > k)
        values[longer] |= ((raw[tok_start[longer] + k].astype(np.int64) - 48) & 0x1F) << (5 * k)
    negative = ((raw[tok_end] - 48) & 0x10) != 0
    values -= negative.astype(np.int64) << (5 * tok_len)
    # run m > 2 is stored as a delta to run m - 2: a cumulative sum per (string, parity of m) chain
    first_tok = np.cumsum(ntok) - ntok
    m = np.arange(values.size) - np.repeat(first_tok, ntok)
    odd = (m & 1).astype(bool)
    even_chain = ~odd & (m >= 2)
    runs = values.copy()
    for chain in (odd, even_chain):
        cs = np.cumsum(np.where(chain, values, 0))
        before = np.where(first_tok > 0, cs[first_tok - 1], 0)
        runs = np.where(chain, cs - np.repeat(before, ntok), runs)
    bad |= np.minimum.reduceat(runs, first_tok) < 0
    return ~bad, np.add.reduceat(runs, first_tok)
