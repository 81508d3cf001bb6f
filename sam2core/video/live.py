"""Live tracking: frames pushed to a session one at a time, each tracked at once, for videos of unknown length.

A session built without a video (``VideoSession(model)``, or ``reset(PushedFrames())``) takes frames through
``VideoSession.track(frame)``: frame ``t`` (``t`` = frames pushed before it) is encoded, every object prompted so far
is tracked on it, and its masks come back. Prompts go on the newest frame, after it was tracked (its features are
cached): an object prompted there for the first time joins the session on that frame (a conditioning frame, decoded
without memory), and an object already tracked there gets a correction, as the official predictor decodes one
(memory-conditioned, its tracked logits as mask input), which the frames after it then read. Frames before an
object's first prompt have no mask of it: unlike ``propagate`` over a whole video, nothing is tracked towards
earlier frames, and no frame attends to a prompt on a later frame.

Memory does not grow with the number of frames: the store is pruned after every frame to what the next frame (or a
correction on the newest one) can read, only the newest frame's tracked logits and features are held, and no
per-frame marks are kept (``keep_history`` does not apply). Conditioning outputs (one per prompted frame and object)
stay, as in any session. Each frame is encoded on the calling thread: there is nothing to read ahead.

The length of a stream is not known while it is tracked. The official predictor normalises the object-pointer
position code by ``min(num_frames, max_obj_ptrs_in_encoder) - 1``; a stream is tracked as a video of unbounded
length, so its masks equal those of the official predictor (and of ``propagate``) on the same frames with the same
prompts whenever the video has at least ``max_obj_ptrs_in_encoder`` (16) frames; a shorter video's pointer code
differs slightly from the official one, which knows the final length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from sam2core.modeling.sam2 import ImageFeatures

from .feature_stream import host_frame, to_device
from .memory import frames_to_keep, prune
from .options import SessionOptions
from .results import FrameResult, tracked_frame_result
from .state import SessionState
from .tracker import Tracker

OPEN_END = 1 << 62  # the length a stream is tracked as: longer than any video, so never a border


class PushedFrames:
    """The ``FrameSource`` of a session on pushed frames: no count (``num_frames`` is None), the size of the first
    frame pushed, and only the newest frame held (for a prompt's features when they are no longer cached)."""

    def __init__(self) -> None:
        self.num_frames: int | None = None
        self.height: int | None = None
        self.width: int | None = None
        self.pushed = 0
        self._newest: torch.Tensor | None = None

    @property
    def newest(self) -> int | None:
        """Index of the newest frame pushed (None before the first)."""
        return self.pushed - 1 if self.pushed else None

    def push(self, frame: np.ndarray | torch.Tensor) -> tuple[int, torch.Tensor]:
        """Take the next frame (uint8 HxWx3, the size of the first one): its index and host tensor."""
        first = self.height is None
        if first:
            shape = tuple(np.shape(frame))
            if len(shape) != 3 or shape[2] != 3:
                raise ValueError(f"frame 0: expected uint8 HxWx3, got shape {shape}")
            self.height, self.width = int(shape[0]), int(shape[1])
        try:
            host = host_frame(frame, self.pushed, self, False)
        except ValueError:
            if first:  # the next frame pushed is the first again
                self.height = self.width = None
            raise
        self._newest = host
        self.pushed += 1
        return self.pushed - 1, host

    def iter_frames(self, indices: Sequence[int]) -> Iterator[torch.Tensor]:
        for i in indices:
            if i != self.newest:
                raise ValueError(f"frame {i}: only the newest pushed frame ({self.newest}) is held")
            yield self._newest


class LiveTracker:
    """Tracks a session's objects on each pushed frame and keeps the store bounded."""

    def __init__(self, tracker: Tracker, source: PushedFrames, state: SessionState, options: SessionOptions,
                 on_features: Callable[[int, ImageFeatures], None]) -> None:
        self.tracker = tracker
        self.source = source
        self.state = state
        self.options = options
        self.on_features = on_features  # told each pushed frame's features (the session caches the newest)

    def step(self, frame: np.ndarray | torch.Tensor) -> FrameResult:
        """Push ``frame``, track every object on it (their prompts already folded into memory), return its masks."""
        tracker = self.tracker
        frame_idx, host = self.source.push(frame)
        feats = tracker.encode(to_device([host], tracker.device))
        self.on_features(frame_idx, feats)
        objects = list(self.state.objects.values())
        size = (self.source.height, self.source.width)
        if not objects:
            low = tracker.model.config.image_size // 4
            return FrameResult(frame_idx, [], torch.empty(0, low, low, device=tracker.device),
                               torch.empty(0, device=tracker.device), size, self.options.non_overlap_masks)
        cond_frames = [list(obj.cond) for obj in objects]
        num_cond = tracker.pass_cond(cond_frames)
        tracker.warm_up(tracker.pass_patterns(cond_frames, [frame_idx], False, OPEN_END))
        with torch.inference_mode(), tracker.autocast():
            masks, outputs = tracker.track(feats, objects, frame_idx, False, OPEN_END, keep_masks=True,
                                           num_cond=num_cond)
        # the next frame's window, and this frame's own (a correction on it attends to that)
        keep_ptr, keep_mem = frames_to_keep(frame_idx + 1, False, OPEN_END, tracker.params)
        own_ptr, own_mem = frames_to_keep(frame_idx, False, OPEN_END, tracker.params)
        keep_ptr |= own_ptr | {frame_idx}
        keep_mem |= own_mem | {frame_idx}
        for obj, out in zip(objects, outputs):
            for older in obj.non_cond.values():
                older.low_res = None  # a tracked mask is only kept while its frame is the newest
            obj.non_cond[frame_idx] = out
            prune(obj, keep_ptr, keep_mem)
        return tracked_frame_result(frame_idx, [o.obj_id for o in objects], list(masks.split(1)),
                                    [out.score for out in outputs], size, self.options.non_overlap_masks)
