"""Region (J) and boundary (F) scores of predicted masklets against ground truth, by the SA-V evaluator's rules.

Rules (those of the SA-V evaluator; DESIGN.md "Evaluation"): per object, the ground-truth frame list loses its first and
last frame by default; scoring of an object starts on the first of those frames where it is non-empty in the ground
truth or the prediction; from then on empty-vs-empty scores 1 for both J and F. J is intersection over union; F is the
F-measure of boundary pixels (one-pixel boundaries offset towards the origin) matched within a disk of radius
``ceil(0.008 * image diagonal)``. An object is reported only if it is non-empty in some scored ground-truth frame; its J
and F are means over scored frames ×100. Pure numpy: the disk dilation is a union of row-wise dilations.

A prediction that tracked only some frames (every k-th frame, a clip window) is scored at the frames both sides have:
the ground-truth frames it holds, by original frame number, less the first and last of those. Nothing is invented
for the frames it did not track; ``common_frames`` says how many were scored.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from pipeline.io.masklets import Masklets
from pipeline.io.rle import decode_rle

log = logging.getLogger(__name__)

BOUNDARY_FRACTION = 0.008


@dataclass(frozen=True)
class ObjectScore:
    """Scores of one object of one video: J and F in percent, averaged over ``frames`` scored frames."""

    video_id: str
    obj_id: int
    j: float
    f: float
    frames: int

    @property
    def jf(self) -> float:
        """Mean of J and F."""
        return (self.j + self.f) / 2


def boundary_radius(height: int, width: int) -> int:
    """Matching tolerance in pixels: ``ceil(0.008 * sqrt(H² + W²))``."""
    return int(math.ceil(BOUNDARY_FRACTION * math.hypot(height, width)))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask: pixels differing from their right, lower or lower-right neighbour.

    On the last row only the right neighbour counts, on the last column only the lower one, and the bottom-right
    pixel is never a boundary (the seg2bmap convention of the DAVIS/SA-V evaluators).
    """
    m = np.asarray(mask, dtype=bool)
    out = np.zeros_like(m)
    out[:-1, :-1] = (m[:-1, :-1] != m[:-1, 1:]) | (m[:-1, :-1] != m[1:, :-1]) | (m[:-1, :-1] != m[1:, 1:])
    out[-1, :-1] = m[-1, :-1] != m[-1, 1:]
    out[:-1, -1] = m[:-1, -1] != m[1:, -1]
    out[-1, -1] = False
    return out


def _dilate_rows(mask: np.ndarray, half: int) -> np.ndarray:
    """Horizontal dilation by ``half`` pixels each side (a sliding-window OR through a cumulative sum)."""
    if half == 0:
        return mask
    h, w = mask.shape
    csum = np.zeros((h, w + 2 * half + 1), dtype=np.int32)
    np.cumsum(mask, axis=1, out=csum[:, half + 1: half + 1 + w])
    csum[:, half + 1 + w:] = csum[:, half + w: half + 1 + w]
    return (csum[:, 2 * half + 1:] - csum[:, : w]) > 0


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by the disk ``{(dx, dy): dx² + dy² <= radius²}``; pixels outside the image add nothing."""
    m = np.asarray(mask, dtype=bool)
    h = m.shape[0]
    out = np.zeros_like(m)
    rows_by_half: dict[int, np.ndarray] = {}
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        if half not in rows_by_half:
            rows_by_half[half] = _dilate_rows(m, half)
        src = rows_by_half[half]
        if dy >= 0:
            out[: h - dy] |= src[dy:]
        else:
            out[-dy:] |= src[: h + dy]
    return out


def region_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union; 1 when both masks are empty."""
    inter = np.count_nonzero(pred & gt)
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else inter / union


def _crop_box(pred: np.ndarray, gt: np.ndarray) -> tuple[slice, slice] | None:
    """Bounding box of both masks grown by one pixel (boundaries may sit one pixel above/left), or None if empty."""
    rows = np.flatnonzero(pred.any(axis=1) | gt.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(pred.any(axis=0) | gt.any(axis=0))
    h, w = pred.shape
    return (slice(max(rows[0] - 1, 0), min(rows[-1] + 2, h)), slice(max(cols[0] - 1, 0), min(cols[-1] + 2, w)))


def boundary_score(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """Boundary F-measure: precision/recall of boundary pixels matched within ``radius``.

    Both boundaries empty → 1; exactly one empty → 0. Works on the crop around both masks (exact: boundary pixels
    and their matches all lie inside it, and the crop keeps the image's last row/column when it reaches them).
    """
    box = _crop_box(pred, gt)
    if box is None:
        return 1.0
    pb = boundary_map(pred[box])
    gb = boundary_map(gt[box])
    n_pred = np.count_nonzero(pb)
    n_gt = np.count_nonzero(gb)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    precision = np.count_nonzero(pb & dilate_disk(gb, radius)) / n_pred
    recall = np.count_nonzero(gb & dilate_disk(pb, radius)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def score_object(pairs: Iterable[tuple[np.ndarray, np.ndarray]], radius: int) -> tuple[float, float, int] | None:
    """Mean J and F (percent) and the scored frame count over (pred, gt) mask pairs in frame order.

    Frames before the object first shows in either mask are skipped; None when it never shows in the ground truth.
    """
    js: list[float] = []
    fs: list[float] = []
    started = False
    in_gt = False
    for pred, gt in pairs:
        gt_any = bool(gt.any())
        if not started and not (gt_any or pred.any()):
            continue
        started = True
        in_gt = in_gt or gt_any
        js.append(region_score(pred, gt))
        fs.append(boundary_score(pred, gt, radius))
    if not in_gt:
        return None
    return float(np.mean(js)) * 100, float(np.mean(fs)) * 100, len(js)


def scored_frames(gt_frames: list[int], skip_first_last: bool) -> list[int]:
    """Ground-truth frames that are scored: all of them, or all but the first and last."""
    frames = sorted(gt_frames)
    return frames[1:-1] if skip_first_last else frames


def _span(frames: list[int]) -> str:
    """A frame list in a few words: ``0..480 (121 frames)``."""
    return f"{frames[0]}..{frames[-1]} ({len(frames)} frames)" if frames else "none"


def common_frames(gt: Masklets, pred: Masklets, skip_first_last: bool = True) -> list[int]:
    """The frames a video is scored on: the ground-truth frames the prediction holds (original frame numbers), less
    the first and last of them with ``skip_first_last``. For a prediction of every frame these are the protocol's
    frames; a strided or clipped one is scored where it tracked. ValueError names the video when none is left."""
    held = set(pred.frame_indices)
    shared = [f for f in sorted(gt.frame_indices) if f in held]
    frames = scored_frames(shared, skip_first_last)
    if not frames:
        rule = " once the first and last are dropped" if skip_first_last and shared else ""
        raise ValueError(f"video {gt.video_id}: no ground-truth frame left to score{rule}: ground truth frames "
                         f"{_span(sorted(gt.frame_indices))}, prediction frames {_span(sorted(pred.frame_indices))}")
    return frames


def evaluate_video(gt: Masklets, pred: Masklets, skip_first_last: bool = True) -> list[ObjectScore]:
    """Per-object scores of one video at its ``common_frames``.

    A ground-truth object missing from the prediction is scored as an empty prediction (logged).
    """
    if (gt.height, gt.width) != (pred.height, pred.width):
        raise ValueError(f"video {gt.video_id}: prediction is {pred.height}x{pred.width}, "
                         f"ground truth {gt.height}x{gt.width}")
    frames = common_frames(gt, pred, skip_first_last)
    pred_pos = {f: i for i, f in enumerate(pred.frame_indices)}
    gt_pos = {f: i for i, f in enumerate(gt.frame_indices)}
    pred_obj = {o: j for j, o in enumerate(pred.obj_ids)}
    absent = [o for o in gt.obj_ids if o not in pred_obj]
    if absent:
        log.warning("video %s: objects %s absent from the prediction, scored as empty", gt.video_id, absent)
    radius = boundary_radius(gt.height, gt.width)
    empty = np.zeros((gt.height, gt.width), dtype=bool)
    scores = []
    for k, obj in enumerate(gt.obj_ids):
        j = pred_obj.get(obj)
        pairs = ((empty if j is None else decode_rle(pred.rles[pred_pos[f]][j]), decode_rle(gt.rles[gt_pos[f]][k]))
                 for f in frames)
        result = score_object(pairs, radius)
        if result is None:
            log.info("video %s object %d: never present in scored ground-truth frames, not scored",
                     gt.video_id, obj)
            continue
        scores.append(ObjectScore(gt.video_id, int(obj), result[0], result[1], result[2]))
    return scores
