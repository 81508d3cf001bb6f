"""What a video session remembers: per object its prompts, its conditioning outputs and a pruned tracking store.

Everything here is plain data. Which entries the tracker may still need (and so which ones survive pruning) is
decided in ``memory.py``; the session only asks this module to hold and drop them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

UNTRACKED, FORWARD, BACKWARD = 0, 1, 2


@dataclass
class FrameOutput:
    """One object's result on one frame, in the compact form kept for later frames.

    ``low_res``: mask logits [1,1,S/4,S/4] float32 (kept for prompted frames, and for tracked frames only with
    ``keep_history``);
    ``memory``: memory-encoder features [1,64,h,w] stored as bfloat16 like the official predictor (None until encoded);
    ``obj_ptr``: [1,256]; ``score``: object score logit [1,1].
    """

    low_res: torch.Tensor | None
    obj_ptr: torch.Tensor
    score: torch.Tensor
    memory: torch.Tensor | None = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.low_res, self.obj_ptr, self.score, self.memory)
                   if t is not None)


@dataclass
class PointPrompt:
    """Clicks of one object on one frame in model-input pixels: coords [1,N,2] float32, labels [1,N] int32."""

    coords: torch.Tensor
    labels: torch.Tensor


@dataclass
class ObjectState:
    """All an object needs: clicks per frame (kept so that later clicks can be appended), conditioning outputs
    (their insertion order is the attention order), the pruned tracking store, and how each frame was tracked
    (``tracked``: one byte per frame, UNTRACKED / FORWARD / BACKWARD)."""

    obj_id: int
    points: dict[int, PointPrompt] = field(default_factory=dict)
    cond: dict[int, FrameOutput] = field(default_factory=dict)
    non_cond: dict[int, FrameOutput] = field(default_factory=dict)
    # outputs of prompts not yet folded into the memory bank: (frame, is_cond) -> output
    pending: dict[tuple[int, bool], FrameOutput] = field(default_factory=dict)
    tracked: bytearray = field(default_factory=bytearray)

    def how_tracked(self, frame_idx: int) -> int:
        """UNTRACKED, FORWARD or BACKWARD (frames past the end of ``tracked``, as a session on pushed frames keeps
        no marks: UNTRACKED)."""
        return self.tracked[frame_idx] if frame_idx < len(self.tracked) else UNTRACKED

    def latest_output(self, frame_idx: int, is_cond: bool) -> FrameOutput | None:
        """The newest output of this object on a frame: pending prompt first, then conditioning, then tracked."""
        out = self.pending.get((frame_idx, is_cond))
        if out is None:
            out = self.cond.get(frame_idx)
        if out is None:
            out = self.non_cond.get(frame_idx)
        return out

    def nbytes(self) -> int:
        total = sum(p.coords.numel() * p.coords.element_size() + p.labels.numel() * p.labels.element_size()
                    for p in self.points.values())
        for store in (self.cond, self.non_cond, self.pending):
            total += sum(out.nbytes() for out in store.values())
        return total


@dataclass
class SessionState:
    """Objects in the order they were first prompted (that order is the output order). ``num_frames``: the video's
    length as far as it is known (lowered when a forward pass finds the source ending early); None for pushed
    frames, whose objects keep no per-frame marks."""

    num_frames: int | None
    objects: dict[int, ObjectState] = field(default_factory=dict)

    def get_or_new(self, obj_id: int) -> ObjectState:
        """The state of ``obj_id``, or a fresh one that joins the session only once ``register``-ed (so that a
        prompt that fails leaves no trace). New objects are allowed at any time, as in the official predictor."""
        obj = self.objects.get(obj_id)
        return obj if obj is not None else ObjectState(obj_id=obj_id, tracked=bytearray(self.num_frames or 0))

    def register(self, obj: ObjectState) -> None:
        self.objects.setdefault(obj.obj_id, obj)

    @property
    def obj_ids(self) -> list[int]:
        return list(self.objects)

    def nbytes(self) -> int:
        """Bytes of tensors held for all objects (the figure that must not grow with video length)."""
        return sum(obj.nbytes() for obj in self.objects.values())
