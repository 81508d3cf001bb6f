"""Discovery's admission rule as the pipeline computed it before matching moved to the device: full-resolution bool
masks on the host, numpy, every candidate against every known and admitted mask. The oracle that
``sam2core.video.discovery.admit`` is checked against (tests) and the old row of the matching benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _iou_and_coverage(new: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For flattened bool masks ``new`` [N, P] and ``known`` [M, P]: IoU [N, M] and the share of each new mask
    covered by each known one [N, M]."""
    inter = new.astype(np.float32) @ known.T.astype(np.float32)
    area_new = new.sum(axis=1, dtype=np.float64)[:, None]
    area_known = known.sum(axis=1, dtype=np.float64)[None, :]
    union = area_new + area_known - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)
    coverage = np.divide(inter, area_new, out=np.zeros_like(inter, dtype=np.float64), where=area_new > 0)
    return iou, coverage


def reference_admit(candidates: np.ndarray, known: Sequence[np.ndarray], min_area: int, match_iou: float,
                    match_coverage: float, room: int) -> list[int]:
    """Indices of ``candidates`` [N, H, W] admitted as new objects, largest first, at most ``room``: smaller than
    ``min_area`` pixels, or IoU ≥ ``match_iou`` / covered ≥ ``match_coverage`` by a known or admitted mask:
    dropped."""
    if room <= 0 or len(candidates) == 0:
        return []
    flat = candidates.reshape(len(candidates), -1)
    areas = flat.sum(axis=1)
    kept: list[np.ndarray] = [np.asarray(k, dtype=bool).reshape(-1) for k in known]
    admitted: list[int] = []
    for i in sorted(range(len(flat)), key=lambda i: (-int(areas[i]), i)):
        if len(admitted) >= room:
            break
        if areas[i] < max(min_area, 1):
            continue
        if kept:
            iou, cov = _iou_and_coverage(flat[i:i + 1], np.stack(kept))
            if (iou >= match_iou).any() or (cov >= match_coverage).any():
                continue
        admitted.append(i)
        kept.append(flat[i])
    return admitted
