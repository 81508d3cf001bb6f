"""Run-length encoding split between device (torch boundaries) and host (numpy strings) gives pycocotools' bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from pipeline.io.rle import boundaries_from_flags, coco_rles, crop_boundaries, full_boundaries


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
