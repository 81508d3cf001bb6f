"""``VideoSession``: prompts in, masks per frame out, for one video at a time, with bounded memory.

Semantics are those of the official ``SAM2VideoPredictor`` (sam2 1.1.0, per-object predictor). Differences, by design:
- frames are streamed (never the whole video in memory) and encoded on a background thread while the previous
  frame is tracked; on accelerators objects with the same memory layout are batched (``tracker.py``);
- by default (``keep_history=False``) the tracking store keeps only what later frames can read, so memory does not
  grow with the video. A forward or "both" propagation then starts from a clean store (as the first propagation of a
  fresh official session with the same prompts does), and a "backward" call re-uses what a preceding forward call from
  the same start left. A click on an already tracked frame (a correction, which attends to the tracking history)
  first re-tracks that object alone, without yielding, along the passes since the store was cleared up to that frame
  (a backward frame also replays the forward pass's first frames it reads), rebuilding the window the official
  predictor would read there; further clicks on that frame reuse it until the next propagation. The correction is
  then applied as the official one (memory-conditioned, previous logits as mask input; spec §4.2).
  ``keep_history=True`` keeps every tracked output instead, exactly like the official predictor (no replay, memory
  grows with the video);
- in "both" the start frame is yielded once (the official yields it again from its backward pass);
- memories are cast to the compute dtype, so fp32 does not crash where the official one does (spec §0.2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence, Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .frames import FeatureStream, FrameSource, host_frame, to_device
from .memory import MemoryParams, frames_to_keep, prune
from .postprocess import non_overlap
from .prompts import PromptError, mask_prompt, point_prompt
from .state import BACKWARD, FORWARD, UNTRACKED, FrameOutput, ObjectState, PointPrompt, SessionState
from .tracker import Tracker

NO_OBJECT_LOGIT = -1024.0
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_DIRECTIONS = ("forward", "backward", "both")
_Masks = dict[int, tuple[torch.Tensor, torch.Tensor]]  # obj_id -> (low-res logits [1,1,S/4,S/4], score [1,1])


@dataclass
class SessionOptions:
    """Engine switches. Post-processing is off by default, as in the official ``vos_inference.py``.

    ``prefetch``: frames decoded ahead; ``encoder_batch``: frames per image-encoder call; ``overlap_encoder``: encode
    the next frames on a background thread (its own CUDA stream) while the current one is tracked.
    ``apply_postprocessing``: stability fallback for single-mask prompts and binarised prompt memories (the official
    switch, minus hole filling, which is ``fill_hole_area``). ``keep_history``: keep every tracked output (memory grows
    with the video) instead of replaying tracking for refinement clicks on tracked frames. ``max_cond_frames`` and
    ``memory_stride`` are the official ``max_cond_frames_in_attn`` and ``memory_temporal_stride_for_eval``.
    """

    fill_hole_area: int = 0
    non_overlap_masks: bool = False
    apply_postprocessing: bool = False
    dtype: str = "float32"
    compile: bool = False
    prefetch: int = 4
    encoder_batch: int = 1
    overlap_encoder: bool = True
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


@dataclass
class _Pass:
    """Frames one propagation pass tracked, in order (the start frame first)."""

    reverse: bool
    start: int
    frames: list[int]


# module -> (method, dynamic shapes) compiled; memory attention is entered through its per-frame prefix and its
# per-object remainder, whose memory length varies
_COMPILED_METHODS = {"image_encoder": (("forward", False),),
                     "memory_attention": (("shared_prefix", False), ("forward_from_prefix", True)),
                     "memory_encoder": (("forward", False),), "sam_mask_decoder": (("forward", False),)}


def _compile_model(model: Any) -> None:
    """torch.compile the heavy modules' entry points once per model."""
    for name, methods in _COMPILED_METHODS.items():
        module = getattr(model, name)
        if not getattr(module, "_sam2core_compiled", False):
            for method, dynamic in methods:
                setattr(module, method, torch.compile(getattr(module, method), dynamic=dynamic))
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
        self._passes: list[_Pass] = []  # bounded mode: the passes since the tracking store was last cleared
        self._window: tuple[int, dict[int, ObjectState]] | None = None  # bounded mode: see _replayed

    @property
    def obj_ids(self) -> list[int]:
        return self.state.obj_ids

    def state_nbytes(self) -> int:
        """Bytes of tensors this session holds (tracking state plus the one cached frame's features)."""
        total = self.state.nbytes()
        if self._window is not None:
            total += sum(out.nbytes() for store in self._window[1].values() for out in store.non_cond.values())
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

    def _frame_role(self, obj: ObjectState, frame_idx: int) -> tuple[bool, bool]:
        """(initial, reverse): a frame the object was not tracked on is an initial conditioning frame; otherwise the
        prompt corrects the tracked result, in the direction the frame was tracked."""
        how = obj.tracked[frame_idx]
        return how == UNTRACKED, how == BACKWARD

    def _replayed(self, frame_idx: int) -> dict[int, ObjectState]:
        """Bounded mode: obj_id -> a replayed store for every object tracked on ``frame_idx``, holding what the
        official predictor's store would hold for a prompt there (cached until the next propagation)."""
        if self._window is None or self._window[0] != frame_idx:
            stores: dict[int, ObjectState] = {}
            for mark in (FORWARD, BACKWARD):
                objects = [obj for obj in self.state.objects.values() if obj.tracked[frame_idx] == mark]
                if objects:
                    stores.update(self._replay(objects, frame_idx, mark == BACKWARD))
            self._window = (frame_idx, stores)
        return self._window[1]

    def _replay(self, objects: list[ObjectState], frame_idx: int, reverse: bool) -> dict[int, ObjectState]:
        """Re-track ``objects`` on scratch copies, nothing yielded, so that each holds what the official store holds
        for a prompt on ``frame_idx``: the memory window of that step and the frame's tracked output with its mask."""
        num_frames = self.state.num_frames
        window_ptr, window_mem = frames_to_keep(frame_idx, reverse, num_frames, self._tracker.params)
        hold = window_ptr | window_mem | {frame_idx}
        scratch = [ObjectState(obj_id=obj.obj_id, cond=dict(obj.cond), tracked=bytearray(num_frames))
                   for obj in objects]
        stores = {obj.obj_id: obj for obj in scratch}
        for run in self._replay_runs(frame_idx, reverse, hold):
            for t, masks in self._track_frames(run.frames, run.reverse, run.start, scratch, hold):
                if t == frame_idx:  # its tracked output as computed then (a later pass may add to its window)
                    for obj_id, (low_res, _) in masks.items():
                        stores[obj_id].non_cond[t].low_res = low_res
        return stores

    def _replay_runs(self, frame_idx: int, reverse: bool, hold: set[int]) -> list[_Pass]:
        """The parts of the recorded passes that produced ``hold`` (a frame and its window), in order.

        The window of a backward frame lies in the backward pass and the first frames of the forward pass before it
        (which the backward pass also reads); that of a forward frame in the forward pass and, near its start, in a
        later backward pass from the same start. Each pass is cut where nothing further is needed.
        """
        forward = self._passes[0] if self._passes and not self._passes[0].reverse else None
        backward = next((p for p in reversed(self._passes) if p.reverse and
                         (frame_idx in p.frames if reverse else hold & set(p.frames))), None)
        if (backward if reverse else forward) is None:
            raise PromptError(f"frame {frame_idx}: no record of how the frame was tracked")
        runs: list[_Pass] = []
        paired = forward is not None and backward is not None and forward.start == backward.start
        if forward is not None and (paired or not reverse):
            last = frame_idx if not reverse else forward.start
            if paired:
                mirror_ptr, mirror_mem = self._mirror_frames(forward.start)
                last = max(last, *mirror_ptr, *mirror_mem)
            runs.append(_Pass(False, forward.start, [t for t in forward.frames if t <= last]))
        if backward is not None:
            first = frame_idx if reverse else min(hold & set(backward.frames))
            runs.append(_Pass(True, backward.start, [t for t in backward.frames if t >= first]))
        return runs

    def _shown_output(self, obj: ObjectState, frame_idx: int, is_cond: bool) -> FrameOutput | None:
        """The output of ``obj`` on a prompted frame with its mask: its own newest one, or in bounded mode (where
        tracked masks are not kept) the replayed one."""
        out = obj.latest_output(frame_idx, is_cond)
        if (out is None or out.low_res is None) and obj.tracked[frame_idx] != UNTRACKED \
                and not self.options.keep_history:
            out = self._replayed(frame_idx)[obj.obj_id].latest_output(frame_idx, is_cond)
        return out

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
        initial, reverse = self._frame_role(obj, frame_idx)
        old = None if clear_old_points else obj.points.get(frame_idx)
        if old is not None:
            prompt = PointPrompt(torch.cat([old.coords, prompt.coords], dim=1),
                                 torch.cat([old.labels, prompt.labels], dim=1))
        store = obj if initial or self.options.keep_history else self._replayed(frame_idx)[obj_id]
        previous = self._shown_output(obj, frame_idx, initial)
        prev_logits = previous.low_res if previous is not None else None
        feats = self._features(frame_idx)
        with torch.inference_mode(), self._autocast():
            out = self._tracker.points_step(feats, store, frame_idx, prompt, prev_logits, initial, reverse,
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
        initial, _ = self._frame_role(obj, frame_idx)
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
            out = self._shown_output(obj, frame_idx, is_cond)
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
        self._window = None
        if not self.options.keep_history and direction != "backward":
            self._passes.clear()
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
        """One pass over ``order`` for all objects, yielding each frame's result (bounded mode: the frames done are
        recorded, for replays)."""
        objects = list(self.state.objects.values())
        done = _Pass(reverse, start, [])
        if not self.options.keep_history:
            self._passes.append(done)
        for frame_idx, tracked in self._track_frames(order, reverse, start, objects):
            done.frames.append(frame_idx)
            if frame_idx != start or emit_start:
                yield self._frame_result(frame_idx, objects, tracked, low_res)

    def _mirror_frames(self, start: int) -> tuple[set[int], set[int]]:
        """(pointer, memory) frames of a forward pass from ``start`` that a backward pass from there reads."""
        num_frames, params = self.state.num_frames, self._tracker.params
        ptr, mem = frames_to_keep(start, True, num_frames, params)
        ptr_before, mem_before = frames_to_keep(start - 1, True, num_frames, params)
        return ptr | ptr_before, mem | mem_before

    def _track_frames(self, order: Sequence[int], reverse: bool, start: int, objects: list[ObjectState],
                      hold: AbstractSet[int] = frozenset()) -> Iterator[tuple[int, _Masks]]:
        """Track ``objects`` over ``order`` (conditioning outputs are reused, the rest tracked), pruning the store
        as it goes in bounded mode (outputs of ``hold`` frames are kept). Yields (frame, {obj_id: (low-res logits,
        score)} of the objects tracked there)."""
        num_frames = self.state.num_frames
        params = self._tracker.params
        keep_history = self.options.keep_history
        # a later backward pass from `start` reads this pass's first frames: keep them until it is done
        kept_ptr, kept_mem = self._mirror_frames(start) if not reverse else (set(), set())
        kept_ptr |= hold
        kept_mem |= hold
        to_compute = [t for t in order if any(t not in obj.cond for obj in objects)]
        stream = FeatureStream(self.source, to_compute, self._encode, self._device, self.options.prefetch,
                               self.options.encoder_batch, self.options.overlap_encoder)
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
                    keep_ptr |= kept_ptr
                    keep_mem |= kept_mem
                for obj in objects:
                    obj.tracked[frame_idx] = mark
                    if not keep_history:
                        prune(obj, keep_ptr, keep_mem)
                yield frame_idx, low
        finally:
            stream.close()

    def _frame_result(self, frame_idx: int, objects: list[ObjectState], tracked: _Masks, low_res: bool) -> FrameResult:
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
