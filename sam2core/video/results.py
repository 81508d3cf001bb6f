"""``FrameResult``: the masks of all objects on one frame, at S/4 as computed, at video resolution on request."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
import torch.nn.functional as F

from sam2core.modeling.sam2 import NO_OBJECT_LOGIT

from .postprocess import non_overlap
from .state import FrameOutput


class FrameResult:
    """Masks of all objects (``obj_ids``) on frame ``frame_idx``, on the model device.

    ``low_res_logits`` ``[n_obj, S/4, S/4]`` float32 are what the model computed (``NO_OBJECT_LOGIT`` for an object
    without an output on a prompted frame) and cost nothing more; ``mask_logits`` ``[n_obj, H, W]`` are upsampled to
    video resolution (bilinear, as the official predictor; the non-overlap constraint applied there when the
    session asks for it) on first access only, so a caller that encodes masks its own way never pays for them.
    """

    def __init__(self, frame_idx: int, obj_ids: list[int], low_res_logits: torch.Tensor, object_scores: torch.Tensor,
                 video_size: tuple[int, int], non_overlap_masks: bool, present: torch.Tensor | None = None) -> None:
        self.frame_idx = frame_idx
        self.obj_ids = obj_ids
        self.low_res_logits = low_res_logits
        self.object_scores = object_scores
        self.video_size = video_size
        self.non_overlap_masks = non_overlap_masks
        self._present = present  # bool per object (prompted frames); None: every object has an output

    @cached_property
    def mask_logits(self) -> torch.Tensor:
        """``[n_obj, H, W]`` float32 logits at video resolution (objects without an output: ``NO_OBJECT_LOGIT``)."""
        with torch.inference_mode():
            low = self.low_res_logits[:, None]
            if self._present is None:
                logits = F.interpolate(low, size=self.video_size, mode="bilinear", align_corners=False)
            else:
                logits = low.new_full((low.shape[0], 1, *self.video_size), NO_OBJECT_LOGIT)
                for i in torch.nonzero(self._present).flatten().tolist():
                    logits[i] = F.interpolate(low[i:i + 1], size=self.video_size, mode="bilinear",
                                              align_corners=False)[0]
            if self.non_overlap_masks:
                logits = non_overlap(logits)
        return logits[:, 0]


def prompted_frame_result(frame_idx: int, obj_ids: list[int], outputs: Sequence[FrameOutput | None],
                          size: tuple[int, int], low_res_size: int, device: torch.device,
                          non_overlap_masks: bool) -> FrameResult:
    """All objects on a prompted frame; an object without an output (or without its mask) there gets
    ``NO_OBJECT_LOGIT`` everywhere, as the official predictor returns."""
    low = torch.full((len(outputs), low_res_size, low_res_size), NO_OBJECT_LOGIT, device=device)
    scores = torch.full((len(outputs),), NO_OBJECT_LOGIT, device=device)
    present = torch.zeros(len(outputs), dtype=torch.bool)
    for i, out in enumerate(outputs):
        if out is not None and out.low_res is not None:
            low[i] = out.low_res.float()[0, 0]
            scores[i] = out.score.float().view(())
            present[i] = True
    return FrameResult(frame_idx, obj_ids, low, scores, size, non_overlap_masks, present)


def tracked_frame_result(frame_idx: int, obj_ids: list[int], masks: Sequence[torch.Tensor],
                         scores: Sequence[torch.Tensor], size: tuple[int, int], non_overlap_masks: bool) -> FrameResult:
    """Stack the objects' low-res logits [1,1,S/4,S/4] and scores [1,1] of one propagated frame."""
    with torch.inference_mode():
        logits = (masks[0] if len(masks) == 1 else torch.cat(list(masks))).float()
        object_scores = torch.cat(list(scores)).float().view(-1)
    return FrameResult(frame_idx, obj_ids, logits[:, 0], object_scores, size, non_overlap_masks)
