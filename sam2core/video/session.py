"""``VideoSession``: prompts in, masks per frame out, for one video at a time, with bounded memory.

Semantics are those of the official ``SAM2VideoPredictor`` (sam2 1.1.0, per-object predictor). Differences, by design:
- frames are streamed (never the whole video in memory) and encoded on a background thread while the previous
  frame is tracked; objects are batched (up to ``max_objects_per_batch``; memories in fixed slots, ``tracker.py``);
- by default (``keep_history=False``) the tracking store keeps only what later frames can read, so memory does not
  grow with the video. A forward or "both" propagation then starts from a clean store (as the first propagation of a
  fresh official session with the same prompts does), and a "backward" call re-uses what a preceding forward call from
  the same start left. A click on an already tracked frame (a correction, which attends to the tracking history)
  first re-tracks the objects tracked on that frame, without yielding, along the passes since the store was cleared
  up to that frame (a backward frame also replays the forward pass's first frames it reads), rebuilding the window
  the official predictor would read there (``replay.py``); further clicks on that frame reuse it until the next
  propagation. The correction is then applied as the official one (memory-conditioned, previous logits as mask
  input).
  ``keep_history=True`` keeps every tracked output instead, exactly like the official predictor (no replay, memory
  grows with the video);
- a prompted frame is encoded once: its features are kept (within a byte budget, ``feature_stream.KeptFeatures``)
  for its prompts' memories and for the passes, as are features handed over with ``keep_features`` (object
  discovery's keyframes);
- in "both" the start frame is yielded once (the official yields it again from its backward pass);
- memories are cast to the compute dtype, so fp32 does not crash where the official one does (it meets fp32
  memories with bf16 weights on a late prompt);
- a source whose video ends before its ``num_frames`` (frames that do not decode) ends a forward pass cleanly at its
  last frame; ``num_frames`` then says how many frames the video has (``propagation.py``);
- a session built without a video takes frames pushed one at a time (``track(frame)``, videos of unknown length,
  ``live.py``): each frame is tracked as it arrives, prompts go on the newest frame, memory stays bounded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch

from sam2core.modeling.sam2 import ImageFeatures, SAM2Model

from .feature_stream import FeatureStream, FrameSource, KeptFeatures, features_nbytes, host_frame, to_device
from .live import OPEN_END, LiveTracker, PushedFrames
from .memory import MemoryParams
from .options import COMPUTE_DTYPES, SessionOptions
from .prompts import PromptError, mask_prompt, point_prompt
from .propagation import Propagator, feature_stream, pass_frames
from .replay import Replay
from .results import FrameResult, prompted_frame_result
from .state import BACKWARD, UNTRACKED, FrameOutput, ObjectState, PointPrompt, SessionState
from .tracker import Tracker

_DIRECTIONS = ("forward", "backward", "both")


class VideoSession:
    """One video's prompts and tracking state; ``reset`` reuses the model (and optionally switches the video).
    Without a ``source`` the session takes pushed frames (``track``)."""

    def __init__(self, model: SAM2Model, source: FrameSource | None = None, options: SessionOptions | None = None,
                 prompt_frames: Mapping[int, Collection[int]] | None = None) -> None:
        self.options = options or SessionOptions()
        self.options.validate()
        self.model = model
        cfg = model.config
        params = MemoryParams(num_maskmem=cfg.num_maskmem, stride=self.options.memory_stride,
                              max_cond_frames=self.options.max_cond_frames,
                              max_obj_ptrs=cfg.max_obj_ptrs_in_encoder,
                              signed_ptr_offsets=cfg.use_signed_tpos_enc_to_obj_ptrs)
        device = next(model.parameters()).device
        self._tracker = Tracker(model, params, self.options.fill_hole_area, self.options.apply_postprocessing,
                                COMPUTE_DTYPES[self.options.dtype], self.options.objects_per_batch(device),
                                self.options.compile, self.options.encoder_batch)
        self._device = device
        self._image_size = cfg.image_size
        self.reset(source if source is not None else PushedFrames())
        self.warm_up(prompt_frames or {})

    # ------------------------------------------------------------------ lifecycle
    def reset(self, source: FrameSource | None = None) -> None:
        """Drop all prompts and tracking state; with ``source``, switch to another video (``PushedFrames()``: a new
        stream of pushed frames). Without, the video stays: its known length (``num_frames``), the numbering of
        pushed frames. The model is kept."""
        if source is not None:
            if source.num_frames is not None and source.num_frames < 1:
                raise ValueError("the video has no frames")
            self.source = source
            self._cached: tuple[int, ImageFeatures] | None = None  # (frame, features) of the frame encoded last
            self._kept = KeptFeatures()  # prompted frames' features, and those handed over (keep_features)
        else:
            self._kept.drop_passing()  # the prompts those were kept for are gone
        # on the same video the newest frame's features and the lasting kept ones stay valid: no tracking state
        self.state = SessionState(num_frames=self.source.num_frames if source is not None else self.state.num_frames)
        self._propagator = Propagator(self._tracker, self.source, self.state, self.options, self._kept,
                                      self._remember)
        self._replay = Replay(self.state, self._propagator)
        pushed = self.source if isinstance(self.source, PushedFrames) else None
        self._live = None if pushed is None else LiveTracker(self._tracker, pushed, self.state, self.options,
                                                             self._remember)

    def warm_up(self, prompt_frames: Mapping[int, Collection[int]]) -> None:
        """With ``compile``: compile now (on CUDA also record the CUDA graphs of) the image encoder and every frame
        pattern that propagating this video both ways from the earliest prompted frame can use, for objects prompted
        on ``prompt_frames`` (object id -> frames; frames outside the video are left to the prompts to refuse), so
        that its passes compile nothing. The session does it when built (``prompt_frames`` there); a pipeline
        worker does it for each video before the video's time budget starts. Without ``compile``: nothing."""
        num_frames = self.state.num_frames
        if num_frames is None:  # pushed frames: each frame warms up its own pattern
            self._tracker.warm_up()
            return
        cond_frames = [frames for frames in ({t for t in f if 0 <= t < num_frames} for f in prompt_frames.values())
                       if frames]
        patterns = set()
        if cond_frames:
            forward, backward = pass_frames(min(min(frames) for frames in cond_frames), num_frames, None)
            for order, reverse in ((forward, False), (backward, True)):
                patterns |= self._tracker.pass_patterns(cond_frames, order, reverse, num_frames)
        self._tracker.warm_up(patterns)

    @property
    def num_frames(self) -> int:
        """Frames of the video as far as the session knows: the source's count, lowered to the frames it has when a
        forward pass found it ending early; for pushed frames, the frames pushed so far."""
        if self._live is not None:
            return self._live.source.pushed
        return self.state.num_frames

    @property
    def obj_ids(self) -> list[int]:
        """Ids of the prompted objects, in the order they were first prompted (the order of every result)."""
        return self.state.obj_ids

    def state_nbytes(self) -> int:
        """Bytes of tensors this session holds (tracking state plus the cached and kept frame features)."""
        total = self.state.nbytes() + self._replay.nbytes() + self._kept.nbytes
        kept = None if self._cached is None else self._kept.get(self._cached[0])
        if self._cached is not None and (kept is None or kept.feat is not self._cached[1].feat):
            total += features_nbytes(self._cached[1])
        return total

    def _remember(self, frame_idx: int, feats: ImageFeatures) -> None:
        self._cached = (frame_idx, feats)

    def features(self, frame_idx: int) -> ImageFeatures:
        """Image features of one frame (raw backbone output, batch 1, in the session's compute dtype): the frame
        encoded last, whether for a prompt or as the last frame a propagation tracked, is reused, also across
        ``reset()`` on the same video, and so are the kept frames' (prompted ones, ``keep_features``). So a prompt
        (or an automatic mask generator, see ``AutomaticMaskGenerator.generate_masks``) on the frame a chunked
        propagation stopped at encodes nothing."""
        kept = self._kept.get(frame_idx)
        if kept is not None:
            return kept
        if self._cached is None or self._cached[0] != frame_idx:
            frame = next(iter(self.source.iter_frames([frame_idx])), None)
            if frame is None:
                raise PromptError(f"frame {frame_idx}: the video ends before this frame")
            frame = host_frame(frame, frame_idx, self.source, False)
            self._remember(frame_idx, self._tracker.encode(to_device([frame], self._device)))
        return self._cached[1]

    def keep_features(self, frame_idx: int, feats: ImageFeatures, lasting: bool = True) -> bool:
        """Keep features of a frame of this video computed elsewhere (from ``features`` or ``stream_features``, e.g.
        on a keyframe object discovery walked) for the prompts and passes that follow, within the kept frames'
        budget (``feature_stream.KeptFeatures``); whether they are kept. ``lasting`` ones outlive ``reset()``, the
        others are dropped by it, as a prompted frame's are; ``reset`` to another video drops them all."""
        return self._kept.keep(frame_idx, feats, lasting)

    def stream_features(self, indices: Sequence[int]) -> FeatureStream:
        """Features of the frames ``indices`` of the session's video, in order, decoded and encoded ahead of the
        caller as a pass does (on the encoder thread when a core is spare; on CUDA on its own stream); iterate it
        for ``(frame_idx, features)``, ``close()`` it when done. Object discovery walks its keyframes with it: the
        next one is encoded while the generator works on the current one."""
        return feature_stream(self._tracker, self.source, indices, self.options)

    def compute_context(self) -> contextlib.AbstractContextManager:
        """The context the session's model steps run in (autocast to its compute dtype; nothing for float32):
        code that runs the model on ``features`` outside the session enters it too."""
        return self._tracker.autocast()

    # ------------------------------------------------------------------ prompts
    def _check_target(self, frame_idx: int, obj_id: int) -> tuple[int, int]:
        """Validated (frame_idx, obj_id) as plain ints."""
        if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)):
            raise PromptError(f"object ids must be ints, got {obj_id!r} (frame {frame_idx})")
        if isinstance(frame_idx, bool) or not isinstance(frame_idx, (int, np.integer)):
            raise PromptError(f"object {obj_id}: frame index must be an int, got {frame_idx!r}")
        if self._live is not None:
            newest = self._live.source.newest
            if frame_idx != newest:
                where = "no frame pushed yet" if newest is None else f"the newest is frame {newest}"
                raise PromptError(f"object {obj_id}, frame {frame_idx}: pushed frames take prompts on the newest "
                                  f"frame only ({where})")
        elif not 0 <= frame_idx < self.state.num_frames:
            raise PromptError(f"object {obj_id}, frame {frame_idx}: outside the video "
                              f"(frames 0..{self.state.num_frames - 1})")
        return int(frame_idx), int(obj_id)

    def _frame_role(self, obj: ObjectState, frame_idx: int) -> tuple[bool, bool]:
        """(initial, reverse): a frame the object was not tracked on is an initial conditioning frame; otherwise the
        prompt corrects the tracked result, in the direction the frame was tracked."""
        if self._live is not None:  # pushed frames: prompts are on the newest frame, whose tracked output is kept
            return frame_idx not in obj.non_cond, False
        how = obj.how_tracked(frame_idx)
        return how == UNTRACKED, how == BACKWARD

    def _shown_output(self, obj: ObjectState, frame_idx: int, is_cond: bool) -> FrameOutput | None:
        """The output of ``obj`` on a prompted frame with its mask: its own newest one, or in bounded mode (where
        tracked masks are not kept) the replayed one."""
        out = obj.latest_output(frame_idx, is_cond)
        if (out is None or out.low_res is None) and obj.how_tracked(frame_idx) != UNTRACKED \
                and not self.options.keep_history:
            out = self._replay.stores(frame_idx)[obj.obj_id].latest_output(frame_idx, is_cond)
        return out

    def add_points(self, frame_idx: int, obj_id: int, points: npt.ArrayLike | None = None,
                   labels: npt.ArrayLike | None = None, box: npt.ArrayLike | None = None,
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
        keeps_window = self.options.keep_history or self._live is not None
        store = obj if initial or keeps_window else self._replay.stores(frame_idx)[obj_id]
        previous = self._shown_output(obj, frame_idx, initial)
        prev_logits = previous.low_res if previous is not None else None
        feats = self._prompt_features(frame_idx)
        with torch.inference_mode(), self._tracker.autocast():
            out = self._tracker.points_step(feats, store, frame_idx, prompt, prev_logits, initial, reverse,
                                            OPEN_END if self._live is not None else self.state.num_frames)
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
        feats = self._prompt_features(frame_idx)
        with torch.inference_mode(), self._tracker.autocast():
            out = self._tracker.mask_step(feats, mask_t)
        self.state.register(obj)
        obj.points.pop(frame_idx, None)
        obj.pending[(frame_idx, initial)] = out
        return self._prompt_result(frame_idx, initial)

    def _prompt_features(self, frame_idx: int) -> ImageFeatures:
        """``features`` of a prompted frame, kept (within budget) for its prompts' memories and the passes: pushed
        frames are not read again and are not kept."""
        feats = self.features(frame_idx)
        if self._live is None:
            self._kept.keep(frame_idx, feats)
        return feats

    def _prompt_result(self, frame_idx: int, is_cond: bool) -> FrameResult:
        """All objects on a prompted frame (objects without an output there: -1024); video resolution on request."""
        objects = list(self.state.objects.values())
        outputs = [self._shown_output(obj, frame_idx, is_cond) for obj in objects]
        return prompted_frame_result(frame_idx, [o.obj_id for o in objects], outputs,
                                     (self.source.height, self.source.width), self._image_size // 4, self._device,
                                     self.options.non_overlap_masks)

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
            feats = self.features(frame_idx)
            with torch.inference_mode(), self._tracker.autocast():
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

    def propagate(self, start_frame: int | None = None, direction: str = "both",
                  max_frames: int | None = None) -> Iterator[FrameResult]:
        """Track all objects through the video, yielding one ``FrameResult`` per frame as it is computed.

        ``start_frame`` defaults to the earliest prompted frame. "forward" runs to the last frame, "backward" to frame
        0, "both" does forward then backward (each frame yielded once). ``max_frames`` limits each pass to the start
        frame plus that many frames. Each result holds the S/4 logits; video-resolution ones are made on first access.
        A forward pass over a source that ends before its ``num_frames`` stops at its last frame (``num_frames``).
        """
        if self._live is not None:
            raise ValueError("a session on pushed frames tracks each frame as it is pushed (track(frame)); "
                             "propagate needs a video (VideoSession(model, source))")
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        num_frames = self.state.num_frames
        if start_frame is not None and not 0 <= start_frame < num_frames:
            raise PromptError(f"start frame {start_frame} is outside the video (frames 0..{num_frames - 1})")
        self._replay.clear()
        if not self.options.keep_history and direction != "backward":
            self._propagator.clear()  # bounded mode: a forward or "both" propagation starts from a clean store
        self._preflight()
        if start_frame is None:
            start_frame = min(t for obj in self.state.objects.values() for t in obj.cond)
        yield from self._propagator.run(start_frame, direction, max_frames)

    def track(self, frame: np.ndarray | torch.Tensor) -> FrameResult:
        """Push the next frame of a session built without a video (uint8 HxWx3, every frame the size of the first)
        and track every object prompted so far on it: its masks (none before the first prompt). Prompts given on the
        previous frame are folded into memory first. Then ``add_points``/``add_mask`` on this frame (its
        ``frame_idx``) add objects or correct them (``live.py``)."""
        if self._live is None:
            raise ValueError("track(frame) pushes frames to a session built without a video (VideoSession(model)); "
                             "a session on a video uses propagate")
        if self.state.objects:
            self._preflight()
        return self._live.step(frame)
