"""J/F metrics: hand-computed cases, the SA-V accumulation rules, and random masks against a plain re-computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.dataset.metrics import (boundary_map, boundary_radius, boundary_score, common_frames, dilate_disk,
                                      evaluate_video, region_score, score_object)
from pipeline.io.masklets import Masklets
from pipeline.io.rle import encode_rles


def _square(h: int, w: int, y: int, x: int, side: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y:y + side, x:x + side] = True
    return m


def _masklets(video_id: str, frames: list[int], masks: list[list[np.ndarray]], obj_ids: list[int]) -> Masklets:
    """Masklets from masks[frame_pos][obj_pos]."""
    h, w = masks[0][0].shape
    rles = [encode_rles(np.stack(per_obj)) for per_obj in masks]
    return Masklets(video_id, max(frames) + 1, h, w, obj_ids, frames, rles,
                    [[1.0] * len(obj_ids) for _ in frames], [0] * len(obj_ids))


# --- independent, deliberately naive re-computation of the evaluator's definitions -------------------------------

def _naive_boundary(m: np.ndarray) -> np.ndarray:
    h, w = m.shape
    out = np.zeros_like(m)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            neighbours = []
            if y == h - 1:
                neighbours = [(y, x + 1)]
            elif x == w - 1:
                neighbours = [(y + 1, x)]
            else:
                neighbours = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
            out[y, x] = any(m[y, x] != m[p] for p in neighbours)
    return out


def _naive_dilate(m: np.ndarray, r: int) -> np.ndarray:
    h, w = m.shape
    out = np.zeros_like(m)
    for y, x in zip(*np.nonzero(m)):
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dx * dx + dy * dy <= r * r and 0 <= y + dy < h and 0 <= x + dx < w:
                    out[y + dy, x + dx] = True
    return out


def _naive_f(pred: np.ndarray, gt: np.ndarray) -> float:
    r = math.ceil(0.008 * math.sqrt(pred.shape[0] ** 2 + pred.shape[1] ** 2))
    pb, gb = _naive_boundary(pred), _naive_boundary(gt)
    if pb.sum() == 0 and gb.sum() == 0:
        return 1.0
    if pb.sum() == 0 or gb.sum() == 0:
        return 0.0
    p = (pb & _naive_dilate(gb, r)).sum() / pb.sum()
    rc = (gb & _naive_dilate(pb, r)).sum() / gb.sum()
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random blobby mask (union of a few discs and rectangles, some touching the image border)."""
    m = np.zeros((h, w), dtype=bool)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(rng.integers(1, 4)):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, max(3, h // 3))
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    m[y0:y0 + rng.integers(1, h), x0:x0 + rng.integers(1, w)] ^= rng.random() < 0.5
    return m


# --- tests ----------------------------------------------------------------------------------------------------------

def test_radius_follows_image_diagonal() -> None:
    assert boundary_radius(848, 480) == 8          # ceil(0.008 * 974.4)
    assert boundary_radius(100, 100) == 2          # ceil(1.13)
    assert boundary_radius(3, 4) == 1


def test_boundary_of_a_square_is_offset_towards_origin() -> None:
    m = _square(8, 8, 2, 3, 3)                      # rows 2..4, cols 3..5
    b = boundary_map(m)
    assert b[1, 2] and b[1, 5] and b[4, 4] and b[4, 5]  # row above / column left are boundary (seg2bmap offset)
    assert not b[3, 4]                                  # interior pixel
    assert b.sum() == _naive_boundary(m).sum()


def test_identical_masks_score_100() -> None:
    m = _square(100, 100, 20, 30, 25)
    assert region_score(m, m) == 1.0
    assert boundary_score(m, m, boundary_radius(100, 100)) == 1.0


def test_disjoint_masks_score_0() -> None:
    a, b = _square(100, 100, 5, 5, 10), _square(100, 100, 60, 60, 10)
    assert region_score(a, b) == 0.0
    assert boundary_score(a, b, boundary_radius(100, 100)) == 0.0


def test_known_shift() -> None:
    gt = _square(100, 100, 40, 40, 20)
    pred = _square(100, 100, 40, 45, 20)           # 5 px to the right: overlap 15x20, union 25x20
    assert region_score(pred, gt) == pytest.approx(300 / 500)
    radius = boundary_radius(100, 100)             # 2 px: a 5 px shift leaves only the top/bottom edges matched
    assert boundary_score(pred, gt, radius) == pytest.approx(_naive_f(pred, gt))
    near = _square(100, 100, 40, 42, 20)           # 2 px shift: every boundary pixel within the tolerance
    assert region_score(near, gt) == pytest.approx(18 * 20 / (22 * 20))
    assert boundary_score(near, gt, radius) == 1.0


def test_one_empty_mask_scores_0_and_both_empty_1() -> None:
    empty = np.zeros((50, 50), dtype=bool)
    full = _square(50, 50, 10, 10, 10)
    assert region_score(empty, empty) == 1.0 and boundary_score(empty, empty, 1) == 1.0
    assert region_score(empty, full) == 0.0 and boundary_score(empty, full, 1) == 0.0
    assert boundary_score(full, empty, 1) == 0.0


@pytest.mark.parametrize("shape", [(17, 23), (48, 64), (130, 90)])
def test_random_masks_match_plain_computation(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    h, w = shape
    radius = boundary_radius(h, w)
    for _ in range(6):
        pred, gt = _blob(rng, h, w), _blob(rng, h, w)
        inter, union = (pred & gt).sum(), (pred | gt).sum()
        assert region_score(pred, gt) == pytest.approx(1.0 if union == 0 else inter / union)
        assert boundary_score(pred, gt, radius) == pytest.approx(_naive_f(pred, gt))
        assert (boundary_map(pred) == _naive_boundary(pred)).all()
        assert (dilate_disk(gt, radius) == _naive_dilate(gt, radius)).all()


def test_scoring_starts_at_first_appearance_then_empty_vs_empty_is_1() -> None:
    empty = np.zeros((40, 40), dtype=bool)
    obj = _square(40, 40, 5, 5, 10)
    half = _square(40, 40, 5, 5, 5) | _square(40, 40, 10, 5, 5)   # 10 rows x 5 cols: J = 0.5 against obj
    pairs = [(empty, empty), (empty, empty), (half, obj), (empty, empty), (obj, obj)]
    j, f, n = score_object(pairs, radius=1)
    assert n == 3                                   # two leading empty frames are not scored
    assert j == pytest.approx(100 * (0.5 + 1 + 1) / 3)
    assert score_object([(obj, empty), (empty, empty)], radius=1) is None   # never in ground truth: not reported


def test_video_skips_first_and_last_and_scores_only_gt_frames() -> None:
    h = w = 40
    gt_masks = [_square(h, w, 5, 5, 10), _square(h, w, 6, 6, 10), _square(h, w, 7, 7, 10), _square(h, w, 8, 8, 10)]
    gt = _masklets("v", [0, 4, 8, 12], [[m] for m in gt_masks], [3])
    # every-frame prediction: exact on the GT frames except frame 4 (shifted), garbage on frames between
    pred_frames, pred_masks = [], []
    for f in range(13):
        m = gt_masks[f // 4] if f % 4 == 0 else np.ones((h, w), dtype=bool)
        if f == 4:
            m = _square(h, w, 6, 8, 10)             # 2 px right: J = 80/120
        pred_frames.append(f)
        pred_masks.append([m])
    pred = _masklets("v", pred_frames, pred_masks, [3])
    (score,) = evaluate_video(gt, pred, skip_first_last=True)
    assert (score.obj_id, score.frames) == (3, 2)   # frames 4 and 8 only
    assert score.j == pytest.approx(100 * (80 / 120 + 1) / 2)
    (full,) = evaluate_video(gt, pred, skip_first_last=False)
    assert full.frames == 4
    assert full.j == pytest.approx(100 * (80 / 120 + 3) / 4)


def test_missing_object_is_empty_and_a_size_mismatch_is_an_error() -> None:
    gt = _masklets("vid7", [0, 4, 8], [[_square(30, 30, 3, 3, 5), _square(30, 30, 10, 10, 5)]] * 3, [1, 2])
    pred = _masklets("vid7", [0, 4, 8], [[_square(30, 30, 3, 3, 5)]] * 3, [1])
    scores = {s.obj_id: s for s in evaluate_video(gt, pred, skip_first_last=False)}
    assert scores[1].j == 100 and scores[2].j == 0 and scores[2].f == 0
    big = _masklets("vid7", [0, 4, 8], [[_square(31, 30, 3, 3, 5)]] * 3, [1])
    with pytest.raises(ValueError, match="video vid7: prediction is 31x30, ground truth 30x30"):
        evaluate_video(gt, big)


def test_strided_and_clipped_predictions_are_scored_at_the_common_frames() -> None:
    """6-fps ground truth (every 4th frame) against predictions of every 8th frame and of a clip: scored where both
    have a frame, exactly as the ground truth cut to those frames, less their first and last."""
    h = w = 40
    gt_frames = list(range(0, 49, 4))                                   # 0, 4, …, 48: 13 frames
    gt_masks = [[_square(h, w, 2 + f // 4, 3 + f // 4, 12)] for f in gt_frames]
    gt = _masklets("v", gt_frames, gt_masks, [5])
    pred_mask = {f: _square(h, w, 2 + f // 4, 4 + f // 4, 12) for f in range(49)}   # 1 px off everywhere
    for frames in (list(range(0, 49, 8)), list(range(20, 41, 4))):      # step 8; a clip 20..40 at step 4
        pred = _masklets("v", frames, [[pred_mask[f]] for f in frames], [5])
        shared = [f for f in gt_frames if f in frames]
        assert common_frames(gt, pred) == shared[1:-1] and common_frames(gt, pred, False) == shared
        cut = _masklets("v", shared, [gt_masks[gt_frames.index(f)] for f in shared], [5])
        assert evaluate_video(gt, pred) == evaluate_video(cut, pred)
        (score,) = evaluate_video(gt, pred)
        assert score.frames == len(shared) - 2 and 0 < score.j < 100
    every = _masklets("v", list(range(49)), [[pred_mask[f]] for f in range(49)], [5])
    assert common_frames(gt, every) == gt_frames[1:-1]                  # every frame: the protocol's frames
    odd = _masklets("v", list(range(1, 49, 4)), [[pred_mask[f]] for f in range(1, 49, 4)], [5])
    with pytest.raises(ValueError, match=r"video v: no ground-truth frame left to score: ground truth frames 0\.\.48 "
                                         r"\(13 frames\), prediction frames 1\.\.45 \(12 frames\)"):
        evaluate_video(gt, odd)
    two = _masklets("v", [0, 4], [[pred_mask[0]], [pred_mask[4]]], [5])
    with pytest.raises(ValueError, match="no ground-truth frame left to score once the first and last are dropped"):
        evaluate_video(gt, two)
    assert evaluate_video(gt, two, skip_first_last=False)[0].frames == 2
