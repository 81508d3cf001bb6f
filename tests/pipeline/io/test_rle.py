"""The COCO-RLE codec: device boundaries + host strings give pycocotools' bytes; encode → validate → decode round-trips;
malformed manifest strings are flagged without decoding."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from pycocotools import mask as mask_utils

from pipeline.io.rle import (boundaries_from_flags, coco_rles, crop_boundaries, decode_rle, encode_rle, encode_rles,
                             full_boundaries, rle_areas, rle_run_totals)


def _reference(masks: np.ndarray) -> list[str]:
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [r["counts"].decode("ascii") for r in encoded]


def _cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for h, w in [(1, 1), (1, 9), (9, 1), (203, 347), (1080, 1920)]:
        cases.append((f"empty {h}x{w}", np.zeros((1, h, w), bool)))
        cases.append((f"full {h}x{w}", np.ones((1, h, w), bool)))
        first = np.zeros((2, h, w), bool)
        first[0, 0, 0] = True
        first[1, -1, -1] = True
        cases.append((f"first/last pixel {h}x{w}", first))
        if h * w > 1:
            single = np.zeros((3, h, w), bool)
            for i in range(3):
                single[i, rng.integers(h), rng.integers(w)] = True
            cases.append((f"single pixels {h}x{w}", single))
    for density in (0.001, 0.5, 0.999):
        cases.append((f"random {density} 203x347", rng.random((4, 203, 347)) < density))
    blobs = np.zeros((12, 1080, 1920), bool)
    for i in range(12):
        blobs[i, 40 * i:40 * i + 500, 90 * i:90 * i + 700] = True
    blobs[11, :, 1900:] = True  # whole columns: runs that cross column ends
    cases.append(("12 blobs 1080x1920", blobs))
    return cases


@pytest.mark.parametrize("name,masks", _cases(), ids=[c[0] for c in _cases()])
def test_full_masks_match_pycocotools(name: str, masks: np.ndarray) -> None:
    ours = coco_rles(full_boundaries(torch.from_numpy(masks)))
    assert [r["counts"] for r in ours] == _reference(masks)
    assert all(r["size"] == list(masks.shape[1:]) for r in ours)


@pytest.mark.parametrize("seed", range(6))
def test_crops_give_the_runs_of_the_full_mask(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 60)), int(rng.integers(1, 60))
    masks, boxes, crops = np.zeros((5, h, w), bool), [], []
    for i in range(5):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = int(rng.integers(y0, h + 1)), int(rng.integers(x0, w + 1))
        if i == 0:
            y0, y1 = 0, h  # full height: runs meet across columns
        if i == 1:
            y0, x0, y1, x1 = 0, 0, h, w
        masks[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.6
        boxes.append((y0, x0, y1, x1))
        crops.append(torch.from_numpy(masks[i, y0:y1, x0:x1].copy()))
    flags, sizes = crop_boundaries(crops, boxes, h, w)
    ours = coco_rles(boundaries_from_flags(flags.numpy(), sizes, boxes, h, w))
    assert [r["counts"] for r in ours] == _reference(masks)


@pytest.mark.parametrize("name,masks", _cases()[:-1], ids=[c[0] for c in _cases()[:-1]])
def test_encode_validate_decode_round_trip(name: str, masks: np.ndarray) -> None:
    """Host and device encodings agree, pass validation with the mask's pixel count, and decode to the mask."""
    host = encode_rles(masks)
    device = coco_rles(full_boundaries(torch.from_numpy(masks)))
    assert host == device
    ok, totals = rle_run_totals(pa.array([r["counts"] for r in host]))
    assert ok.all() and (totals == masks.shape[1] * masks.shape[2]).all()
    np.testing.assert_array_equal(rle_areas(host), masks.reshape(len(masks), -1).sum(1))
    for rle, mask in zip(host, masks):
        np.testing.assert_array_equal(decode_rle(rle), mask)
    assert encode_rle(masks[0]) == host[0]
    uncompressed = {"size": list(masks.shape[1:]), "counts": [int(masks[0].size)]}  # one run of zeros
    np.testing.assert_array_equal(decode_rle(uncompressed), np.zeros(masks.shape[1:], bool))


def test_rle_check_against_pycocotools():
    """The vectorised RLE reader gives each string's pixel count and flags malformed strings."""
    rng = np.random.default_rng(3)
    masks = rng.random((40, 31, 45)) > 0.7
    masks[0] = False
    masks[1] = True
    big = np.zeros((2, 900, 1300), dtype=bool)
    big[0, 100:800, 50:1200] = True
    big[1] = rng.random((900, 1300)) > 0.5
    good = [r["counts"] for r in encode_rles(masks) + encode_rles(big)]
    # well-formed but 2100 pixels for a 31x45 mask: would overflow pycocotools' decoder
    longer = mask_utils.frPyObjects({"size": [31, 45], "counts": [100, 2000]}, 31, 45)["counts"].decode()
    cases = good + [None, "", "ab!", good[2][:-1], longer, "o", good[3] + "ooooooooooooooo1"]
    ok, totals = rle_run_totals(pa.array(cases).slice(0))
    assert ok[:42].all() and (totals[:40] == 31 * 45).all() and (totals[40:42] == 900 * 1300).all()
    assert not ok[42] and not ok[43] and not ok[44] and not ok[47] and not ok[48]
    assert ok[45] and totals[45] == 31 * 45 - 1  # a run cut off: fewer pixels
    assert ok[46] and totals[46] == 2100
    ok_sliced, totals_sliced = rle_run_totals(pa.array(cases).slice(7))
    np.testing.assert_array_equal(ok_sliced, ok[7:])
    np.testing.assert_array_equal(totals_sliced[ok_sliced], totals[7:][ok[7:]])


def _runs_one_by_one(counts: str) -> list[int] | None:
    """pycocotools' string reader, one char at a time (None where it would read past the end or a char is not one
    of its 64); a number of more than 12 chars or beyond 32 bits is malformed."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        value, group, more = 0, 0, True
        while more:
            if p == len(counts) or not 48 <= ord(counts[p]) <= 111:
                return None
            c = ord(counts[p]) - 48
            value |= (c & 0x1F) << (5 * group)
            more = bool(c & 0x20)
            p, group = p + 1, group + 1
            if not more and c & 0x10:
                value -= 1 << (5 * group)
        if group > 12 or abs(value) >= 1 << 32:
            return None
        runs.append(value + (runs[-2] if len(runs) > 2 else 0))
    return runs


@pytest.mark.parametrize("chunk_chars", [1, 100, 1 << 18])
def test_rle_check_matches_a_char_by_char_reader(chunk_chars: int, monkeypatch: pytest.MonkeyPatch):
    """Random well-formed, cut, corrupted and hand-made strings (long numbers, chars outside the 64), one string per
    validation chunk, a few, or all in one: the vectorised reader gives the same verdict and total as a plain
    reader."""
    monkeypatch.setattr("pipeline.io.rle._CHUNK_CHARS", chunk_chars)
    rng = np.random.default_rng(7)
    strings: list[str | None] = []
    for i in range(3000):
        kind = i % 6
        if kind in (0, 5):
            h, w = rng.integers(1, 40, 2)
            s = encode_rle(rng.random((h, w)) < rng.random())["counts"]
            if kind == 5:  # one char replaced
                j = int(rng.integers(len(s)))
                s = s[:j] + chr(int(rng.integers(44, 116))) + s[j + 1:]
        elif kind == 1:  # any of the 64 chars: numbers of every length, negative runs, some cut off
            s = bytes(rng.integers(48, 112, rng.integers(0, 30)).astype(np.uint8)).decode()
        elif kind == 2:  # mostly one-char numbers
            chars = rng.integers(48, 80, rng.integers(1, 40)).astype(np.uint8)
            chars[rng.random(chars.size) < 0.1] += 32
            s = bytes(chars).decode()
        elif kind == 3:  # one long number (up to 19 chars: past 12, past 32 bits)
            chars = rng.integers(80, 112, rng.integers(1, 20)).astype(np.uint8)
            chars[-1] = rng.integers(48, 80)
            s = "3" + bytes(chars).decode()
        else:
            s = None if rng.random() < 0.5 else ""
        strings.append(s)
    expected = [None if s is None else _runs_one_by_one(s) for s in strings]
    column = pa.array(strings, pa.string())
    for offset, counts in ((0, column), (5, column.slice(5)), (0, pa.chunked_array([column[:1234], column[1234:]]))):
        ok, totals = rle_run_totals(counts)
        assert len(ok) == len(totals) == len(strings) - offset
        for got_ok, total, runs in zip(ok, totals, expected[offset:]):
            want_ok = bool(runs) and min(runs) >= 0
            assert got_ok == want_ok, (runs, got_ok)
            if want_ok:
                assert total == sum(runs)
    assert not rle_run_totals(pa.array(["3" + "o" * 6 + "?"]))[0][0]  # 2**34 - 1: beyond 32 bits
    assert rle_run_totals(pa.array(["3" + "o" * 5 + "1"]))[1][0] == 3 + 2 ** 26 - 1  # 6 chars, 26 bits
