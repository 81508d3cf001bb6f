"""Model steps of the video engine: image encoding, prompt steps for one object, and a tracking step for the objects
of a frame, all under the session's compute dtype.

On accelerators, objects whose memory plans have the same layout (same temporal slots, same pointer offsets) are
stacked along the batch dimension and share one memory-attention, mask-decoder and memory-encoder call; the results
equal those of one object at a time up to float rounding. On CPU each object gets its own calls: stacking measured
slower there (the stacked memory keys and values no longer fit in cache). Either way the memory-independent start of
memory attention is computed once per frame for all objects.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from .memory import MemoryParams, MemoryPlan, plan_memory
from .postprocess import fill_holes
from .state import FrameOutput, ObjectState, PointPrompt

MEMORY_DTYPE = torch.bfloat16  # spatial memories are stored in bf16, as the official predictor does
PREV_MASK_CLAMP = 32.0


class Tracker:
    """Runs the model for the session; ``model`` is a ``SAM2Model``, ``feats`` arguments its ``ImageFeatures``."""

    def __init__(self, model: Any, params: MemoryParams, fill_hole_area: int, apply_postprocessing: bool,
                 dtype: torch.dtype = torch.float32) -> None:
        self.model = model
        self.params = params
        self.fill_hole_area = fill_hole_area
        self.apply_postprocessing = apply_postprocessing
        self.dtype = dtype
        self.device = next(model.parameters()).device
        self.stack_objects = self.device.type != "cpu"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context every model step runs in: autocast to the compute dtype (nothing for float32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def encode(self, frames: torch.Tensor) -> Any:
        """Image features of frames [B,H,W,3] uint8 on the model device (may run on the encoder thread)."""
        with torch.inference_mode(), self.autocast():
            return self.model.encode_image(self.model.preprocess(frames))

    def _finish_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        return fill_holes(low_res, self.fill_hole_area) if self.fill_hole_area > 0 else low_res

    def _attend(self, prefix: Any, plans: list[MemoryPlan], num_frames: int) -> torch.Tensor:
        """Memory-conditioned features [B,256,h,w] for objects sharing one plan layout, from the frame's
        ``memory_prefix`` (the memory-independent start of memory attention, computed once per frame)."""
        first = plans[0]
        if len(plans) == 1:
            memories = [m.memory for m in first.memories]
        else:
            memories = [torch.cat([p.memories[i].memory for p in plans]) for i in range(len(first.memories))]
        if first.pointers:
            ptrs = torch.stack([torch.cat([o.obj_ptr for o in p.pointers]) for p in plans])
            offsets = torch.tensor(first.offsets, dtype=torch.float32).to(self.device, non_blocking=True)
        else:
            ptrs, offsets = None, None
        return self.model.attend_memory_from_prefix(prefix, memories, first.tpos, ptrs, offsets, num_frames)

    def track(self, feats: Any, objects: list[ObjectState], frame_idx: int, reverse: bool, num_frames: int,
              keep_masks: bool) -> tuple[torch.Tensor, list[FrameOutput]]:
        """One propagation step for ``objects`` on a frame none of them is conditioned on.

        Returns the (hole-filled) low-res logits [n,1,S/4,S/4] in the order of ``objects`` and their new outputs
        (memory encoded; ``low_res`` kept only when ``keep_masks``).
        """
        plans = [plan_memory(obj, frame_idx, reverse, num_frames, self.params) for obj in objects]
        groups: dict[Any, list[int]] = {}
        for i, plan in enumerate(plans):
            groups.setdefault(plan.key if self.stack_objects else i, []).append(i)
        low_res: list[torch.Tensor | None] = [None] * len(objects)
        outputs: list[FrameOutput | None] = [None] * len(objects)
        prefix = self.model.memory_prefix(feats.feat, feats.pos)
        for members in groups.values():
            group_feats = feats.expand(len(members))
            pix = self._attend(prefix, [plans[i] for i in members], num_frames)
            out = self.model.decode_masks(pix, group_feats.high_res, None, None, None, multimask=True,
                                          stability_fallback=self.apply_postprocessing)
            memory, _ = self.model.encode_memory(group_feats.feat, out.high_res, out.object_score_logits,
                                                 binarize=False)
            memory = memory.to(MEMORY_DTYPE)
            masks = self._finish_masks(out.low_res)
            for j, i in enumerate(members):
                low_res[i] = masks[j:j + 1]
                outputs[i] = FrameOutput(low_res=masks[j:j + 1] if keep_masks else None,
                                         obj_ptr=out.obj_ptr[j:j + 1], score=out.object_score_logits[j:j + 1],
                                         memory=memory[j:j + 1])
        stacked = low_res[0] if len(low_res) == 1 else torch.cat(low_res)
        return stacked, outputs  # type: ignore[return-value]

    def points_step(self, feats: Any, obj: ObjectState, frame_idx: int, prompt: PointPrompt,
                    prev_logits: torch.Tensor | None, initial: bool, reverse: bool, num_frames: int) -> FrameOutput:
        """Decode one object's clicks: an initial frame uses no memory; a correction on a tracked frame attends to
        the object's memory and also feeds the previous logits (clamped) as a mask prompt."""
        if initial:
            pix = self.model.add_no_memory(feats.feat)
        else:
            plan = plan_memory(obj, frame_idx, reverse, num_frames, self.params)
            pix = self._attend(self.model.memory_prefix(feats.feat, feats.pos), [plan], num_frames)
        if prev_logits is not None:
            prev_logits = prev_logits.clamp(-PREV_MASK_CLAMP, PREV_MASK_CLAMP)
        out = self.model.decode_masks(pix, feats.high_res, prompt.coords, prompt.labels, prev_logits,
                                      multimask=prompt.labels.shape[1] <= 1,
                                      stability_fallback=self.apply_postprocessing)
        return FrameOutput(low_res=self._finish_masks(out.low_res), obj_ptr=out.obj_ptr,
                           score=out.object_score_logits)

    def mask_step(self, feats: Any, mask: torch.Tensor) -> FrameOutput:
        """A mask prompt [1,1,S,S] (0/1) is taken as the output itself; the pointer comes from the raw features."""
        out = self.model.mask_as_output(feats.feat, feats.high_res, mask)
        return FrameOutput(low_res=self._finish_masks(out.low_res), obj_ptr=out.obj_ptr,
                           score=out.object_score_logits)

    def encode_prompt_memories(self, feats: Any, outputs: list[FrameOutput]) -> None:
        """Memories of prompted outputs on one frame, from their stored low-res logits upsampled to S×S (batched)."""
        low = outputs[0].low_res if len(outputs) == 1 else torch.cat([o.low_res for o in outputs])
        size = self.model.config.image_size
        high = F.interpolate(low.to(self.device), size=(size, size), mode="bilinear", align_corners=False)
        scores = torch.cat([o.score for o in outputs])
        memory, _ = self.model.encode_memory(feats.expand(len(outputs)).feat, high, scores,
                                             binarize=self.apply_postprocessing)
        memory = memory.to(MEMORY_DTYPE)
        for j, out in enumerate(outputs):
            out.memory = memory[j:j + 1]
