"""Propagation: the forward and backward passes that track every object through the video, frame by frame.

Features of the frames a pass needs are streamed (``feature_stream.FeatureStream``), except those the session keeps
(``feature_stream.KeptFeatures``: prompted frames, discovery's keyframes); each frame's objects are tracked by the
``Tracker`` and, in bounded mode (``keep_history=False``), the store is pruned after every frame to what later frames
can read. A forward pass also keeps its first frames, which a later backward pass from the same start reads. Bounded
mode records the frames each pass tracked, for ``replay.py`` to re-run parts of them.

A source whose video ends before its ``num_frames`` (its iterator stops early) ends a forward pass cleanly at its last
frame, and the session's length becomes the frames it has: a backward pass after it (and every later call) uses that
length. Frames tracked before the end was found used the claimed length for the object-pointer position code, which
is the same code whenever both lengths are at least ``max_obj_ptrs_in_encoder`` (16) frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence, Set as AbstractSet
from dataclasses import dataclass

import torch

from sam2core.modeling.sam2 import ImageFeatures

from sam2core.thread_plan import plan_threads

from .feature_stream import FeatureStream, FrameSource, KeptFeatures
from .memory import MemoryParams, frames_to_keep, prune
from .options import SessionOptions
from .results import FrameResult, tracked_frame_result
from .state import BACKWARD, FORWARD, ObjectState, SessionState
from .tracker import Tracker

Masks = dict[int, tuple[torch.Tensor, torch.Tensor]]  # obj_id -> (low-res logits [1,1,S/4,S/4], score [1,1])


@dataclass
class Pass:
    """Frames one propagation pass tracked, in order (the start frame first)."""

    reverse: bool
    start: int
    frames: list[int]


def pass_frames(start: int, num_frames: int, max_frames: int | None) -> tuple[list[int], list[int]]:
    """(forward, backward) frame orders of passes from ``start``, each the start frame plus up to ``max_frames``
    frames (None: to the end of the video); the backward one is empty when ``start`` is frame 0."""
    span = num_frames if max_frames is None else max_frames
    forward = list(range(start, min(start + span, num_frames - 1) + 1))
    backward = list(range(start, max(start - span, 0) - 1, -1)) if start > 0 else []
    return forward, backward


def mirror_frames(start: int, num_frames: int, params: MemoryParams) -> tuple[set[int], set[int]]:
    """(pointer, memory) frames of a forward pass from ``start`` that a backward pass from there reads."""
    ptr, mem = frames_to_keep(start, True, num_frames, params)
    ptr_before, mem_before = frames_to_keep(start - 1, True, num_frames, params)
    return ptr | ptr_before, mem | mem_before


def feature_stream(tracker: Tracker, source: FrameSource, indices: Sequence[int],
                   options: SessionOptions) -> FeatureStream:
    """The features of ``indices`` of ``source`` in order, decoded and encoded ahead as a pass does (the encoder
    thread when a core is spare, on CUDA its own stream)."""
    threads = plan_threads(options.overlap_encoder, tracker.device)
    return FeatureStream(source, indices, tracker.encode, tracker.device, options.prefetch, options.encoder_batch,
                         threads.overlap, threads.side_threads)


class Propagator:
    """Runs the passes of one video's session over its objects (``state``), recording them in bounded mode."""

    def __init__(self, tracker: Tracker, source: FrameSource, state: SessionState, options: SessionOptions,
                 kept: KeptFeatures, on_features: Callable[[int, ImageFeatures], None] | None = None) -> None:
        self.tracker = tracker
        self.source = source
        self.state = state
        self.options = options
        self.kept = kept  # frames whose features are not streamed again
        self.passes: list[Pass] = []  # bounded mode: the passes since the tracking store was last cleared
        self.on_features = on_features  # told each tracked frame's features (the session keeps the newest)

    def clear(self) -> None:
        """Empty the tracking store and the record of passes (conditioning outputs stay)."""
        self.passes.clear()
        for obj in self.state.objects.values():
            obj.non_cond.clear()

    def run(self, start: int, direction: str, max_frames: int | None) -> Iterator[FrameResult]:
        """The passes of ``direction`` ("forward", "backward" or "both": forward then backward) from ``start``,
        yielding each frame's result once."""
        forward, backward = pass_frames(start, self.state.num_frames, max_frames)
        if direction in ("forward", "both"):
            yield from self._run_pass(forward, False, start, True)
        if direction in ("backward", "both"):
            yield from self._run_pass(backward, True, start, direction == "backward")

    def _run_pass(self, order: Sequence[int], reverse: bool, start: int, emit_start: bool) -> Iterator[FrameResult]:
        """One pass over ``order`` for all objects, yielding each frame's result (bounded mode: the frames done are
        recorded, for replays)."""
        objects = list(self.state.objects.values())
        done = Pass(reverse, start, [])
        if not self.options.keep_history:
            self.passes.append(done)
        for frame_idx, tracked in self.track_frames(order, reverse, start, objects):
            done.frames.append(frame_idx)
            if frame_idx != start or emit_start:
                yield self._frame_result(frame_idx, objects, tracked)

    def track_frames(self, order: Sequence[int], reverse: bool, start: int, objects: list[ObjectState],
                     hold: AbstractSet[int] = frozenset()) -> Iterator[tuple[int, Masks]]:
        """Track ``objects`` over ``order`` (conditioning outputs are reused, the rest tracked), pruning the store
        as it goes in bounded mode (outputs of ``hold`` frames are kept). Yields (frame, {obj_id: (low-res logits,
        score)} of the objects tracked there)."""
        num_frames = self.state.num_frames
        params = self.tracker.params
        keep_history = self.options.keep_history
        # a later backward pass from `start` reads this pass's first frames: keep them until it is done
        kept_ptr, kept_mem = mirror_frames(start, num_frames, params) if not reverse else (set(), set())
        kept_ptr |= hold
        kept_mem |= hold
        cond_frames = [list(obj.cond) for obj in objects]
        num_cond = self.tracker.pass_cond(cond_frames)
        self.tracker.warm_up(self.tracker.pass_patterns(cond_frames, order, reverse, num_frames))
        to_compute = [t for t in order if any(t not in obj.cond for obj in objects)]
        stream = feature_stream(self.tracker, self.source, [t for t in to_compute if self.kept.get(t) is None],
                                self.options)
        features = iter(stream)
        mark = BACKWARD if reverse else FORWARD
        try:
            for frame_idx in order:
                tracked = [obj for obj in objects if frame_idx not in obj.cond]
                low = {}
                if tracked:
                    feats = self.kept.get(frame_idx)
                    if feats is None:
                        item = next(features, None)
                        if item is None:  # the source has no frame `frame_idx`: the video ends before it
                            self._ended(frame_idx, reverse)
                            return
                        feats = item[1]
                    if self.on_features is not None:
                        self.on_features(frame_idx, feats)
                    with torch.inference_mode(), self.tracker.autocast():
                        masks, outputs = self.tracker.track(feats, tracked, frame_idx, reverse, num_frames,
                                                            keep_masks=keep_history, num_cond=num_cond)
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

    def _ended(self, frame_idx: int, reverse: bool) -> None:
        """The source ran out at ``frame_idx``: going forward, the video has ``frame_idx`` frames (its claimed count
        was too high) and the pass ends cleanly; going backward every frame asked lies before frames it gave, so
        the source is broken."""
        if reverse or frame_idx < 1:
            raise ValueError(f"frame {frame_idx}: the frame source gave no frame")
        self.state.num_frames = min(self.state.num_frames, frame_idx)

    def _frame_result(self, frame_idx: int, objects: list[ObjectState], tracked: Masks) -> FrameResult:
        """The objects' low-res logits on a frame (tracked now, or their conditioning output) as a result."""
        masks, scores = [], []
        for obj in objects:
            if obj.obj_id in tracked:
                low, score = tracked[obj.obj_id]
            else:
                out = obj.cond[frame_idx]
                low, score = out.low_res, out.score
            masks.append(low)
            scores.append(score)
        return tracked_frame_result(frame_idx, [o.obj_id for o in objects], masks, scores,
                                    (self.source.height, self.source.width), self.options.non_overlap_masks)
