"""``VideoSession``: prompts in, masks per frame out, for one video at a time, with bounded memory.

Semantics are those of the official ``SAM2VideoPredictor`` (sam2 1.1.0, per-object predictor). Differences, by design:
- frames are streamed (never the whole video in memory) and objects with the same memory layout are batched;
- by default (``keep_history=False``) the tracking store keeps only what later frames can read, so memory does not
  grow with the video. A forward or "both" propagation then starts from a clean store (as the first propagation of a
  fresh official session with the same prompts does), a "backward" call re-uses what a preceding forward call from the
  same start left, and a click on an already tracked frame (a correction, which attends to the tracking history) needs
  ``keep_history=True``; that mode keeps every tracked output, exactly like the official predictor;
- in "both" the start frame is yielded once (the official yields it again from its backward pass);
- memories are cast to the compute dtype, so fp32 does not crash where the official one does (spec §0.2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .frames import FeatureStream, FrameSource, host_frame, to_device
from .memory import MemoryParams, frames_to_keep, prune
from .postprocess import non_overlap
from .prompts import PromptError, mask_prompt, point_prompt
from .state import BACKWARD, FORWARD, UNTRACKED, ObjectState, PointPrompt, SessionState
from .tracker import Tracker

NO_OBJECT_LOGIT = -1024.0
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_DIRECTIONS = ("forward", "backward", "both")


@dataclass
class SessionOptions:
    """Engine switches. Post-processing is off by default, as in the official ``vos_inference.py``.

    ``apply_postprocessing``: stability fallback for single-mask prompts and binarised prompt memories (the official
    switch, minus hole filling, which is ``fill_hole_area``). ``keep_history``: keep every tracked output (memory grows
    with the video) for official-exact refinement clicks and re-propagation. ``max_cond_frames`` and ``memory_stride``
    are the official ``max_cond_frames_in_attn`` and ``memory_temporal_stride_for_eval``.
    """

    fill_hole_area: int = 0
    non_overlap_masks: bool = False
    apply_postprocessing: bool = False
    dtype: str = "float32"
    compile: bool = False
    prefetch: int = 4
    encoder_batch: int = 1
    keep_history: bool = False
    max_cond_frames: int = -1
    memory_stride: int = 1


@dataclass
class FrameResult:
    """Masks of all objects on one frame: logits [n_obj,H,W] float32 on the model device (low-res on request)."""

    frame_idx: int
    obj_ids: list[int]
    mask_logits: torch.Tensor
    object_scores: torch.Tensor


_COMPILED_MODULES = {"image_encoder": False, "memory_attention": True, "memory_encoder": False,
                     "sam_mask_decoder": False}


def _compile_model(model: Any) -> None:
    """torch.compile the heavy modules once per model (memory attention with dynamic shapes: its length varies)."""
    for name, dynamic in _COMPILED_MODULES.items():
        module = getattr(model, name)
        if not getattr(module, "_sam2core_compiled", False):
            module.forward = torch.compile(module.forward, dynamic=dynamic)
            module._sam2core_compiled = True


class VideoSession:
    """One video's prompts and tracking state; ``reset`` reuses the model (and optionally switches the video)."""

    def __init__(self, model: Any, source: FrameSource, options: SessionOptions | None = None) -> None:
        self.options = options or SessionOptions()
        if self.options.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.options.dtype!r}")
        if self.options.encoder_batch < 1 or self.options.prefetch < 0:
            raise ValueError("encoder_batch must be >= 1 and prefetch >= 0")
        self.model = model
        cfg = model.config
        params = MemoryParams(num_maskmem=cfg.num_maskmem, stride=self.options.memory_stride,
                              max_cond_frames=self.options.max_cond_frames,
                              max_obj_ptrs=cfg.max_obj_ptrs_in_encoder,
                              signed_ptr_offsets=cfg.use_signed_tpos_enc_to_obj_ptrs)
        self._tracker = Tracker(model, params, self.options.fill_hole_area, self.options.apply_postprocessing)
        self._device = self._tracker.device
        self._image_size = cfg.image_size
        if self.options.compile:
            _compile_model(model)
        self.reset(source)

    # ------------------------------------------------------------------ lifecycle
    def reset(self, source: FrameSource | None = None) -> None:
        """Drop all prompts and tracking state; with ``source``, switch to another video. The model is kept."""
        if source is not None:
            if source.num_frames < 1:
                raise ValueError("the video has no frames")
            self.source = source
        self.state = SessionState(num_frames=self.source.num_frames)
        self._cached: tuple[int, Any] | None = None

    @property
    def obj_ids(self) -> list[int]:
        return self.state.obj_ids

    def state_nbytes(self) -> int:
        """Bytes of tensors this session holds (tracking state plus the one cached frame's features)."""
        total = self.state.nbytes()
        if self._cached is not None:
            feats = self._cached[1]
            tensors = [feats.feat, feats.pos, *feats.high_res]
            total += sum(t.numel() * t.element_size() for t in tensors)
        return total

    # ------------------------------------------------------------------ model plumbing
    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = _DTYPES[self.options.dtype]
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=dtype)

    def _encode(self, frames: torch.Tensor) -> Any:
        with torch.inference_mode(), self._autocast():
            return self.model.encode_image(self.model.preprocess(frames))

    def _features(self, frame_idx: int) -> Any:
        """Features of one frame; the most recent one is cached (repeated clicks on a frame encode it once)."""
        if self._cached is None or self._cached[0] != frame_idx:
            frame = host_frame(next(iter(self.source.iter_frames([frame_idx]))), frame_idx, self.source, False)
            self._cached = (frame_idx, self._encode(to_device([frame], self._device)))
        return self._cached[1]

    # ------------------------------------------------------------------ prompts
    def _check_target(self, frame_idx: int, obj_id: int) -> tuple[int, int]:
        """Validated (frame_idx, obj_id) as plain ints."""
        if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)):
            raise PromptError(f"object ids must be ints, got {obj_id!r} (frame {frame_idx})")
        if isinstance(frame_idx, bool) or not isinstance(frame_idx, (int, np.integer)):
            raise PromptError(f"object {obj_id}: frame index must be an int, got {frame_idx!r}")
        if not 0 <= frame_idx < self.state.num_frames:
            raise PromptError(f"object {obj_id}, frame {frame_idx}: outside the video "
                              f"(frames 0..{self.state.num_frames - 1})")
        return int(frame_idx), int(obj_id)

    def _frame_role(self, obj: ObjectState, frame_idx: int, needs_memory: bool) -> tuple[bool, bool]:
        """(initial, reverse): a frame the object was not tracked on is an initial conditioning frame; otherwise the
        prompt corrects the tracked result, in the direction the frame was tracked."""
        how = obj.tracked[frame_idx]
        if how == UNTRACKED:
            return True, False
        if needs_memory and not self.options.keep_history:
            raise PromptError(f"object {obj.obj_id}, frame {frame_idx}: a click on an already tracked frame corrects "
                              "it using the tracking history; create the session with "
                              "SessionOptions(keep_history=True) for that")
        return False, how == BACKWARD

    def add_points(self, frame_idx: int, obj_id: int, points: Any = None, labels: Any = None, box: Any = None,
                   clear_old_points: bool = True) -> FrameResult:
        """Clicks (x, y in video pixels; label 1 positive, 0 negative) and/or a box [x0, y0, x1, y1] for one object.

        With ``clear_old_points=False`` the clicks are appended to the object's earlier clicks on that frame.
        Returns the masks of all objects on that frame.
        """
        frame_idx, obj_id = self._check_target(frame_idx, obj_id)
        if box is not None and not clear_old_points:
            raise PromptError(f"object {obj_id}, frame {frame_idx}: a box replaces earlier clicks; "
                              "use clear_old_points=True")
        prompt = point_prompt(f"object {obj_id}, frame {frame_idx}", points, labels, box,
                              (self.source.height, self.source.width), self._image_size, self._device)
        obj = self.state.get_or_new(obj_id)
        initial, reverse = self._frame_role(obj, frame_idx, needs_memory=True)
        old = None if clear_old_points else obj.points.get(frame_idx)
        if old is not None:
            prompt = PointPrompt(torch.cat([old.coords, prompt.coords], dim=1),
                                 torch.cat([old.labels, prompt.labels], dim=1))
        previous = obj.latest_output(frame_idx, initial)
        prev_logits = previous.low_res if previous is not None else None
        feats = self._features(frame_idx)
        with torch.inference_mode(), self._autocast():
            out = self._tracker.points_step(feats, obj, frame_idx, prompt, prev_logits, initial, reverse,
                                            self.state.num_frames)
        self.state.register(obj)
        obj.points[frame_idx] = prompt
        obj.pending[(frame_idx, initial)] = out
        return self._prompt_result(frame_idx, initial)

    def add_mask(self, frame_idx: int, obj_id: int, mask: np.ndarray | torch.Tensor) -> FrameResult:
        """A mask (2-D, bool or 0/1, any resolution, normally H x W) for one object on one frame; it replaces that
        object's clicks there. Returns the masks of all objects on that frame."""
        frame_idx, obj_id = self._check_target(frame_idx, obj_id)
        mask_t = mask_prompt(f"object {obj_id}, frame {frame_idx}", mask, self._image_size, self._device)
        obj = self.state.get_or_new(obj_id)
        initial, _ = self._frame_role(obj, frame_idx, needs_memory=False)
        feats = self._features(frame_idx)
        with torch.inference_mode(), self._autocast():
            out = self._tracker.mask_step(feats, mask_t)
        self.state.register(obj)
        obj.points.pop(frame_idx, None)
        obj.pending[(frame_idx, initial)] = out
        return self._prompt_result(frame_idx, initial)

    def _prompt_result(self, frame_idx: int, is_cond: bool) -> FrameResult:
        """All objects on a prompted frame at video resolution (objects without an output there: -1024)."""
        objects = list(self.state.objects.values())
        h, w = self.source.height, self.source.width
        logits = torch.full((len(objects), 1, h, w), NO_OBJECT_LOGIT, device=self._device)
        scores = torch.full((len(objects),), NO_OBJECT_LOGIT, device=self._device)
        for i, obj in enumerate(objects):
            out = obj.latest_output(frame_idx, is_cond)
            if out is not None and out.low_res is not None:
                logits[i] = F.interpolate(out.low_res.float(), size=(h, w), mode="bilinear", align_corners=False)[0]
                scores[i] = out.score.float().view(())
        if self.options.non_overlap_masks:
            logits = non_overlap(logits)
        return FrameResult(frame_idx, [o.obj_id for o in objects], logits[:, 0], scores)

    # ------------------------------------------------------------------ propagation
    def _preflight(self) -> None:
        """Fold pending prompt outputs into the memory bank: encode their memories (batched per frame, from the stored
        low-res logits), then file them as conditioning (initial) or tracked (correction) outputs."""
        if not self.state.objects:
            raise PromptError("no prompts: add points, a box or a mask for at least one object first")
        by_frame: dict[int, list] = {}
        for obj in self.state.objects.values():
            for (frame_idx, _), out in obj.pending.items():
                if out.memory is None:
                    by_frame.setdefault(frame_idx, []).append(out)
        for frame_idx in sorted(by_frame):
            feats = self._features(frame_idx)
            with torch.inference_mode(), self._autocast():
                self._tracker.encode_prompt_memories(feats, by_frame[frame_idx])
        for obj in self.state.objects.values():
            for want_cond in (False, True):
                for (frame_idx, is_cond), out in obj.pending.items():
                    if is_cond == want_cond:
                        (obj.cond if is_cond else obj.non_cond)[frame_idx] = out
            obj.pending.clear()
            if not obj.cond:
                raise PromptError(f"object {obj.obj_id}: no prompt on an untracked frame; it needs at least one "
                                  "points/box/mask prompt before propagation")
            for frame_idx in obj.cond:
                obj.non_cond.pop(frame_idx, None)

    def propagate(self, start_frame: int | None = None, direction: str = "both", max_frames: int | None = None,
                  low_res: bool = False) -> Iterator[FrameResult]:
        """Track all objects through the video, yielding one ``FrameResult`` per frame as it is computed.

        ``start_frame`` defaults to the earliest prompted frame. "forward" runs to the last frame, "backward" to frame
        0, "both" does forward then backward (each frame yielded once). ``max_frames`` limits each pass to the start
        frame plus that many frames. ``low_res`` yields the S/4 logits instead of video-resolution ones.
        """
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        num_frames = self.state.num_frames
        if start_frame is not None and not 0 <= start_frame < num_frames:
            raise PromptError(f"start frame {start_frame} is outside the video (frames 0..{num_frames - 1})")
        if not self.options.keep_history and direction != "backward":
            for obj in self.state.objects.values():
                obj.non_cond.clear()
        self._preflight()
        if start_frame is None:
            start_frame = min(t for obj in self.state.objects.values() for t in obj.cond)
        span = num_frames if max_frames is None else max_frames
        forward = list(range(start_frame, min(start_frame + span, num_frames - 1) + 1))
        backward = list(range(start_frame, max(start_frame - span, 0) - 1, -1)) if start_frame > 0 else []
        if direction in ("forward", "both"):
            yield from self._run_pass(forward, False, start_frame, True, low_res)
        if direction in ("backward", "both"):
            yield from self._run_pass(backward, True, start_frame, direction == "backward", low_res)

    def _run_pass(self, order: Sequence[int], reverse: bool, start: int, emit_start: bool,
                  low_res: bool) -> Iterator[FrameResult]:
        """One pass over ``order``: conditioning outputs are reused, everything else tracked (objects batched)."""
        objects = list(self.state.objects.values())
        num_frames = self.state.num_frames
        params = self._tracker.params
        keep_history = self.options.keep_history
        mirror_ptr: set[int] = set()
        mirror_mem: set[int] = set()
        if not reverse and not keep_history:
            # a later backward pass from `start` reads this pass's first frames: keep them until it is done
            for frame_idx in (start, start - 1):
                ptr, mem = frames_to_keep(frame_idx, True, num_frames, params)
                mirror_ptr |= ptr
                mirror_mem |= mem
        to_compute = [t for t in order if any(t not in obj.cond for obj in objects)]
        stream = FeatureStream(self.source, to_compute, self._encode, self._device, self.options.prefetch,
                               self.options.encoder_batch)
        features = iter(stream)
        mark = BACKWARD if reverse else FORWARD
        try:
            for frame_idx in order:
                tracked = [obj for obj in objects if frame_idx not in obj.cond]
                low = {}
                if tracked:
                    _, feats = next(features)
                    with torch.inference_mode(), self._autocast():
                        masks, outputs = self._tracker.track(feats, tracked, frame_idx, reverse, num_frames,
                                                             keep_masks=keep_history)
                    for j, (obj, out) in enumerate(zip(tracked, outputs)):
                        obj.non_cond[frame_idx] = out
                        low[obj.obj_id] = (masks[j:j + 1], out.score)
                if not keep_history:
                    keep_ptr, keep_mem = frames_to_keep(frame_idx + (-1 if reverse else 1), reverse, num_frames,
                                                        params)
                    keep_ptr |= mirror_ptr
                    keep_mem |= mirror_mem
                for obj in objects:
                    obj.tracked[frame_idx] = mark
                    if not keep_history:
                        prune(obj, keep_ptr, keep_mem)
                if frame_idx != start or emit_start:
                    yield self._frame_result(frame_idx, objects, low, low_res)
        finally:
            stream.close()

    def _frame_result(self, frame_idx: int, objects: list[ObjectState], tracked: dict, low_res: bool) -> FrameResult:
        """Stack the objects' low-res logits (tracked now, or their conditioning output) and resize to the video."""
        masks, scores = [], []
        for obj in objects:
            if obj.obj_id in tracked:
                low, score = tracked[obj.obj_id]
            else:
                out = obj.cond[frame_idx]
                low, score = out.low_res, out.score
            masks.append(low)
            scores.append(score)
        with torch.inference_mode():
            logits = (masks[0] if len(masks) == 1 else torch.cat(masks)).float()
            if not low_res:
                logits = F.interpolate(logits, size=(self.source.height, self.source.width), mode="bilinear",
                                       align_corners=False)
            if self.options.non_overlap_masks:
                logits = non_overlap(logits)
            object_scores = torch.cat(scores).float().view(-1)
        return FrameResult(frame_idx, [o.obj_id for o in objects], logits[:, 0], object_scores)
