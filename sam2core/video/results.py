"""``FrameResult``: the masks of all objects on one frame, and how the session renders them at video resolution."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam2core.modeling.sam2 import NO_OBJECT_LOGIT

from .postprocess import non_overlap
from .state import FrameOutput


@dataclass
class FrameResult:
    """Masks of all objects on one frame: logits [n_obj,H,W] float32 on the model device (low-res on request)."""

    frame_idx: int
    obj_ids: list[int]
    mask_logits: torch.Tensor
    object_scores: torch.Tensor


def prompted_frame_result(frame_idx: int, obj_ids: list[int], outputs: Sequence[FrameOutput | None],
                          size: tuple[int, int], device: torch.device, non_overlap_masks: bool) -> FrameResult:
    """All objects on a prompted frame resized to ``size`` (H, W); an object without an output (or without its
    mask) there gets ``NO_OBJECT_LOGIT`` everywhere, as the official predictor returns."""
    h, w = size
    logits = torch.full((len(outputs), 1, h, w), NO_OBJECT_LOGIT, device=device)
    scores = torch.full((len(outputs),), NO_OBJECT_LOGIT, device=device)
    for i, out in enumerate(outputs):
        if out is not None and out.low_res is not None:
            logits[i] = F.interpolate(out.low_res.float(), size=(h, w), mode="bilinear", align_corners=False)[0]
            scores[i] = out.score.float().view(())
    if non_overlap_masks:
        logits = non_overlap(logits)
    return FrameResult(frame_idx, obj_ids, logits[:, 0], scores)


def tracked_frame_result(frame_idx: int, obj_ids: list[int], masks: Sequence[torch.Tensor],
                         scores: Sequence[torch.Tensor], size: tuple[int, int] | None,
                         non_overlap_masks: bool) -> FrameResult:
    """Stack the objects' low-res logits [1,1,S/4,S/4] and scores [1,1] of one propagated frame; resize the logits to
    ``size`` (H, W), or keep them at S/4 with ``size=None``."""
    with torch.inference_mode():
        logits = (masks[0] if len(masks) == 1 else torch.cat(list(masks))).float()
        if size is not None:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if non_overlap_masks:
            logits = non_overlap(logits)
        object_scores = torch.cat(list(scores)).float().view(-1)
    return FrameResult(frame_idx, obj_ids, logits[:, 0], object_scores)
