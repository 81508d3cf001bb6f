"""Automatic discovery in a job (pipeline.actor.discovery over sam2core.video.discovery) on synthetic videos where
objects enter mid-video.

Random weights make real masks meaningless, so the model is played by stand-ins that know each video's true masks:
the generator (an ``AutomaticMaskGenerator`` look-alike) returns the true masks of the objects visible on a keyframe,
the tracker (a ``VideoSession`` look-alike) follows the true object a prompt mask overlaps most. What is tested is
the walk's logic: keyframes, matching, admission, ids, manifest prompts, the cap, the backward fill of the final
pass, pruning.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.actor.discovery import discover, discovery_options, prune
from pipeline.io.masklets import MaskletBuilder, from_sav_json, to_sav_json
from pipeline.specs import AutoSpec, SpecError
from pipeline.plan.tasks import Prompt
from sam2core.modeling.sam2 import ImageFeatures
from sam2core.video.discovery import FoundObject, keyframes
from sam2core.video.discovery import admit as device_admit

H = W = 40
T = 24


def square(y: int, x: int, size: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y:y + size, x:x + size] = True
    return m


def synthetic_video() -> np.ndarray:
    """True masks [objects, T, H, W]: A everywhere; B enters at frame 6; C (small) at frame 9 and leaves after 14;
    D enters at frame 17, between keyframes."""
    gt = np.zeros((4, T, H, W), dtype=bool)
    for t in range(T):
        gt[0, t] = square(2, 2 + t // 4, 14)
        if t >= 6:
            gt[1, t] = square(22, 20, 12)
        if 9 <= t <= 14:
            gt[2, t] = square(2, 28, 8)
        if t >= 17:
            gt[3, t] = square(24, 2, 10)
    return gt


class FrameSource:
    """Frames whose first pixel holds the frame index (the stand-in generator reads it)."""

    def __init__(self, num_frames: int) -> None:
        self.num_frames = num_frames
        self.height, self.width = H, W

    def iter_frames(self, indices):
        for i in indices:
            image = np.zeros((H, W, 3), dtype=np.uint8)
            image[0, 0, 0] = i
            yield image


def admit(candidates: np.ndarray, known: list[np.ndarray], spec: AutoSpec, room: int) -> list[int]:
    """sam2core's admission on numpy masks, with the job's ``auto.*`` options."""
    stacked = np.stack(known) if known else np.zeros((0, *candidates.shape[1:]), dtype=bool)
    return device_admit(torch.from_numpy(np.ascontiguousarray(candidates)), torch.from_numpy(stacked),
                        discovery_options(spec), room)


def frame_features(t: int) -> ImageFeatures:
    """The tracker stand-in's features of the video's frame ``t``: one number, ``t``."""
    code = torch.full((1, 1, 1, 1), float(t))
    return ImageFeatures(code, code, (code, code))


class TrueGenerator:
    """The true masks of the objects visible on a frame (largest last, to exercise the sort), clicks on known
    objects or not; counts calls and keeps the ``skip`` masks it was given. Its features are what the tracker
    stand-in gives: the frame index (``frame_features``)."""

    def __init__(self, gt: np.ndarray) -> None:
        self.gt = gt
        self.frames: list[int] = []
        self.skips: dict[int, np.ndarray | None] = {}

    def generate_masks(self, image: np.ndarray, features: ImageFeatures,
                       skip: torch.Tensor | None = None) -> SimpleNamespace:
        t = int(image[0, 0, 0])
        assert t == int(features.feat)
        self.frames.append(t)
        self.skips[t] = None if skip is None else skip.numpy()
        masks = [m for m in self.gt[:, t] if m.any()][::-1]
        return SimpleNamespace(masks=torch.from_numpy(np.asarray(masks, dtype=bool).reshape(-1, H, W)),
                               stability_score=torch.linspace(0.9, 1.0, len(masks)))


@dataclass
class Result:
    frame_idx: int
    obj_ids: list[int]
    mask_logits: torch.Tensor


class Stream(list):
    """A feature stream stand-in: the items, and ``close``."""

    def close(self) -> None:
        pass


class TrueTracker:
    """A VideoSession look-alike: an object prompted with a mask follows the true object it overlaps most. Like the
    session, it numbers the frames of its source (the walk's frames, 0..n-1, while discovery walks); the masks are
    those of the video's frames; ``walked`` keeps the video's frames it was reset to, ``handed`` the frames whose
    features it was handed for the final pass (``keep_features``, forgotten when its video changes)."""

    def __init__(self, gt: np.ndarray) -> None:
        self.gt = gt
        self.source = FrameSource(gt.shape[1])
        self.walked: list[list[int]] = []
        self.handed: list[int] = []
        self.reset()
        self.max_prompted = 0

    def _frame(self, i: int) -> int:
        """The video's frame number of the source's frame ``i``."""
        frames = getattr(self.source, "frames", None)
        return i if frames is None else frames[i]

    def features(self, frame_idx: int) -> ImageFeatures:
        return frame_features(self._frame(frame_idx))

    def keep_features(self, frame_idx: int, feats: ImageFeatures, lasting: bool = True) -> bool:
        assert int(feats.feat) == self._frame(frame_idx)
        if lasting:
            self.handed.append(frame_idx)
        return True

    def stream_features(self, indices):
        """The features of the source's frames ``indices``, read from it in one go (as the session's stream)."""
        indices = list(indices)
        return Stream((i, self.features(i)) for i, _ in zip(indices, self.source.iter_frames(indices)))

    def compute_context(self) -> nullcontext:
        return nullcontext()

    def reset(self, source=None) -> None:
        if source is not None:
            self.source = source
            self.walked.append([self._frame(i) for i in range(source.num_frames)])
            self.handed = []
        self.truth: dict[int, int] = {}
        self.prompt_frames: dict[int, int] = {}

    @property
    def obj_ids(self) -> list[int]:
        return list(self.truth)

    def add_mask(self, frame_idx: int, obj_id: int, mask: np.ndarray) -> Result:
        overlap = (self.gt[:, self._frame(frame_idx)] & np.asarray(mask, dtype=bool)).reshape(len(self.gt), -1).sum(axis=1)
        self.truth[obj_id] = int(np.argmax(overlap))
        self.prompt_frames[obj_id] = frame_idx
        self.max_prompted = max(self.max_prompted, len(self.truth))
        return self._result(frame_idx)

    def add_points(self, frame_idx: int, obj_id: int, points=None, labels=None, box=None) -> Result:
        x, y = points[0]
        hit = [k for k in range(len(self.gt)) if self.gt[k, self._frame(frame_idx), int(y), int(x)]]
        self.truth[obj_id] = hit[0]
        self.prompt_frames[obj_id] = frame_idx
        return self._result(frame_idx)

    def _result(self, i: int) -> Result:
        masks = np.stack([self.gt[k, self._frame(i)] for k in self.truth.values()])
        return Result(i, self.obj_ids, torch.from_numpy(np.where(masks, 1.0, -1.0)))

    def propagate(self, start_frame=None, direction="both", max_frames=None):
        start = min(self.prompt_frames.values()) if start_frame is None else start_frame
        last = self.source.num_frames - 1
        end = last if max_frames is None else min(last, start + max_frames)
        frames = list(range(start, end + 1))
        if direction == "both":
            frames += list(range(start - 1, -1, -1))
        for t in frames:
            yield self._result(t)


def apply_prompt(session: TrueTracker, p: Prompt) -> Result:
    return session.add_points(p.frame_idx, p.obj_id, points=p.points, labels=p.point_labels)


def final_pass(gt: np.ndarray, found: list[FoundObject], prompts=()) -> tuple[MaskletBuilder, TrueTracker]:
    """What the worker does after discovery: every object prompted where it was found, tracked both ways."""
    tracker = TrueTracker(gt)
    for p in prompts:
        apply_prompt(tracker, p)
    for d in found:
        tracker.add_mask(d.frame_idx, d.obj_id, d.mask)
    builder = MaskletBuilder("v", T, H, W, tracker.obj_ids)
    for r in tracker.propagate(direction="both"):
        builder.add_frame(r.frame_idx, (r.mask_logits > 0).numpy(), [1.0] * len(r.obj_ids))
    return builder, tracker


def test_keyframes_follow_the_cadence() -> None:
    assert keyframes(10, 4) == [0, 4, 8]
    assert keyframes(1, 4) == [0]
    assert AutoSpec().every == 4  # SA-V: every 4th frame of 24 fps video


def test_each_entering_object_gets_one_id_and_starts_where_it_appears() -> None:
    gt = synthetic_video()
    generator = TrueGenerator(gt)
    session = TrueTracker(gt)
    found = discover(session, generator, AutoSpec(min_area=1))
    assert generator.frames == keyframes(T, 4)
    assert [(d.obj_id, d.frame_idx) for d in found] == [(0, 0), (1, 8), (2, 12), (3, 20)]
    assert session.handed == [0, 8, 12, 20]  # the final pass prompts there: those frames are not encoded again
    assert found[1].stability == pytest.approx(0.9)  # the score the generator gave that mask
    builder, tracker = final_pass(gt, found)
    assert sorted(tracker.truth.values()) == [0, 1, 2, 3]  # every true object once: nothing duplicated
    m = builder.build()
    assert m.first_appeared == [0, 6, 9, 17]  # backward fill reaches each object's first visible frame
    assert m.frame_indices == list(range(T))


def test_the_walk_tracks_keyframe_to_keyframe_and_skips_clicks_on_known_objects() -> None:
    """The session walks the keyframes (and prompt frames) as a video of their own, then is back on the whole
    video; each keyframe's generator skips the pixels of the objects known there (tracked or prompted), not those
    found on that keyframe itself."""
    gt = synthetic_video()
    generator, tracker = TrueGenerator(gt), TrueTracker(gt)
    found = discover(tracker, generator, AutoSpec(min_area=1))
    assert [d.frame_idx for d in found] == [0, 8, 12, 20]
    assert tracker.walked[0] == keyframes(T, 4) and tracker.walked[-1] == list(range(T))
    assert generator.skips[0] is None
    assert np.array_equal(generator.skips[4], gt[0, 4]) and np.array_equal(generator.skips[8], gt[0, 8])
    assert np.array_equal(generator.skips[12], gt[0, 12] | gt[1, 12])
    assert np.array_equal(generator.skips[16], gt[0, 16] | gt[1, 16])  # C left after frame 14: tracked empty
    prompts = [Prompt(7, 10, [[24.0, 26.0]], [1], None, None, 0)]  # B prompted on frame 10, between keyframes
    tracker = TrueTracker(gt)
    discover(tracker, TrueGenerator(gt), AutoSpec(min_area=1), prompts)
    assert tracker.walked[0] == [0, 4, 8, 10, 12, 16, 20]


def test_matching_by_coverage_drops_parts_of_known_objects() -> None:
    whole = square(0, 0, 20)
    part = square(0, 0, 8)  # IoU 0.16 but fully covered
    other = square(25, 25, 10)
    picked = admit(np.stack([part, other]), [whole], AutoSpec(min_area=1), room=10)
    assert picked == [1]
    straddling = square(15, 15, 10)  # a quarter of it inside the known mask: a new object
    assert admit(np.stack([part, straddling]), [whole], AutoSpec(min_area=1), room=10) == [1]
    assert admit(np.stack([whole]), [whole], AutoSpec(min_area=1), room=10) == []  # IoU 1
    assert admit(np.stack([part]), [], AutoSpec(min_area=100), room=10) == []  # 64 px < min_area


def test_cap_keeps_the_largest_objects() -> None:
    gt = synthetic_video()
    tracker = TrueTracker(gt)
    found = discover(tracker, TrueGenerator(gt), AutoSpec(min_area=1, max_objects=2))
    assert [(d.obj_id, d.frame_idx) for d in found] == [(0, 0), (1, 8)]
    assert tracker.max_prompted <= 2
    on_frame_12 = gt[:3, 12][::-1]  # C (64 px), B (144 px), A (196 px)
    assert admit(on_frame_12, [], AutoSpec(min_area=1), room=2) == [2, 1]


def test_mixed_mode_keeps_manifest_ids_and_numbers_new_ones_above() -> None:
    gt = synthetic_video()
    prompts = [Prompt(7, 10, [[24.0, 26.0]], [1], None, None, 0)]  # object B, prompted on frame 10
    found = discover(TrueTracker(gt), TrueGenerator(gt), AutoSpec(min_area=1), prompts)
    # B is visible on keyframe 8, before its prompt: discovered there (id 9); from frame 10 on it is known.
    assert [(d.obj_id, d.frame_idx) for d in found] == [(8, 0), (9, 8), (10, 12), (11, 20)]
    builder, tracker = final_pass(gt, found, prompts)
    assert tracker.obj_ids == [7, 8, 9, 10, 11]
    kept = prune(builder.build(), min_area=1, dedupe_iou=0.8, keep=[7])
    assert kept.obj_ids == [7, 8, 10, 11]  # the discovered copy of the manifest's object is removed, not it
    assert kept.first_appeared == [6, 0, 9, 17]


def test_manifest_object_blocks_rediscovery() -> None:
    gt = synthetic_video()
    prompts = [Prompt(3, 0, [[5.0, 5.0]], [1], None, None, 0)]  # object A from frame 0
    found = discover(TrueTracker(gt), TrueGenerator(gt), AutoSpec(min_area=1), prompts)
    assert [(d.obj_id, d.frame_idx) for d in found] == [(4, 8), (5, 12), (6, 20)]


def test_prune_removes_near_empty_and_duplicate_masklets() -> None:
    gt = synthetic_video()
    builder = MaskletBuilder("v", T, H, W, [0, 1, 2, 3, 4])
    tiny = square(30, 30, 2)
    for t in range(T):
        near_copy = gt[1, t].copy()
        if t == 20:
            near_copy[:] = False  # differs on one of 18 frames: still a duplicate (>= 90%)
        builder.add_frame(t, np.stack([gt[0, t], gt[1, t], near_copy, tiny, gt[3, t]]), [1.0] * 5)
    m = builder.build()
    kept = prune(m, min_area=5, dedupe_iou=0.8)
    assert kept.obj_ids == [0, 1, 4]
    assert kept.first_appeared == [0, 6, 17]
    assert len(kept.rles[0]) == 3 and len(kept.scores[5]) == 3
    # manifest objects are never removed; a discovered copy of one is, even when it is the longer masklet
    assert prune(m, min_area=5, dedupe_iou=0.8, keep=[2, 3]).obj_ids == [0, 2, 3, 4]


def test_auto_layout_fields_round_trip() -> None:
    builder = MaskletBuilder("v", 4, H, W, [0, 1])
    for t in range(4):
        builder.add_frame(t, np.stack([square(0, 0, 10), square(20, 20, 40) if t % 2 else np.zeros((H, W), bool)]),
                          [1.0, 1.0])
    m = builder.build()
    m.types, m.stability = ["manual", "auto"], [[0.5, 0.9]] * 4
    d = to_sav_json(m)
    assert d["masklet_size_abs"] == [100.0, 400.0]
    assert d["masklet_size_rel"] == pytest.approx([100 / 1600, 400 / 1600])
    assert d["masklet_size_bucket"] == ["small", "small"]
    assert d["masklet_visibility_changes"] == [0, 3]
    assert d["masklet_frame_count"] == [4, 4]
    assert d["masklet_first_appeared_frame"] == [0, 1]
    assert d["masklet_type"] == ["manual", "auto"]
    back = from_sav_json(d)
    assert back.types == m.types and back.stability == m.stability
    m.types = None
    assert "masklet_type" not in to_sav_json(m)  # prompted jobs keep their layout


def test_auto_spec_checks_its_ranges() -> None:
    with pytest.raises(SpecError, match="auto.every"):
        AutoSpec(every=0)
    with pytest.raises(SpecError, match="auto.match_iou"):
        AutoSpec(match_iou=1.5)
    with pytest.raises(SpecError, match="auto.generator.points"):
        AutoSpec(generator={"points": 3})


def test_an_object_that_leaves_and_returns_keeps_one_masklet() -> None:
    """E is visible on frames 0-9 and 18-23. The walk loses it in the gap and gives it a second id on keyframe 20;
    the final pass (full memory) tracks the first id through the gap as well, so the second masklet is contained in
    the first one and is removed, however long the gap."""
    gt = np.zeros((2, T, H, W), dtype=bool)
    for t in range(T):
        gt[0, t] = square(2, 2, 12)
        if t <= 9 or t >= 18:
            gt[1, t] = square(24, 24, 10)
    found = discover(TrueTracker(gt), TrueGenerator(gt), AutoSpec(min_area=1))
    assert [(d.obj_id, d.frame_idx) for d in found] == [(0, 0), (1, 0), (2, 20)]
    builder = MaskletBuilder("v", T, H, W, [0, 1, 2])
    for t in range(T):  # the final pass as SAM 2 tracks it: id 2 backward from keyframe 20 only to frame 18
        builder.add_frame(t, np.stack([gt[0, t], gt[1, t], gt[1, t] if t >= 18 else np.zeros((H, W), bool)]),
                          [1.0] * 3)
    kept = prune(builder.build(), min_area=1, dedupe_iou=0.8)
    assert kept.obj_ids == [0, 1]
    assert prune(builder.build(), min_area=1, dedupe_iou=0.8, keep=[2]).obj_ids == [0, 2]  # a manifest id stays


class PeakSession:
    """A real ``VideoSession`` whose tensor bytes are sampled after every frame it yields (discovery uses only
    ``source``/``reset``/``add_mask``/``propagate``/``obj_ids``/``features``/``compute_context``)."""

    def __init__(self, session) -> None:
        self.session = session
        self.peak = 0

    def __getattr__(self, name):
        return getattr(self.session, name)

    def propagate(self, *args, **kwargs):
        for result in self.session.propagate(*args, **kwargs):
            self.peak = max(self.peak, self.session.state_nbytes())
            yield result


def _walk_peak(num_frames: int) -> tuple[int, int]:
    """(objects found, peak session bytes) of the walk and final pass over a video where a second object enters at
    frame 40, with the real engine (random weights) and a generator that returns the true masks."""
    from sam2core.build import build_model
    from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession

    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_tiny", image_size=32)
    frames = np.full((num_frames, 32, 32, 3), 60, dtype=np.uint8)
    gt = np.zeros((2, num_frames, 32, 32), dtype=bool)
    gt[0, :, 2:14, 2:14] = True
    gt[1, 40:, 18:30, 18:30] = True
    frames[gt[0]] = (220, 40, 40)
    frames[gt[1]] = (40, 40, 220)
    session = PeakSession(VideoSession(model, ArrayFrameSource(frames), SessionOptions()))

    class Generator:  # the true masks of the frame (frames with the same picture have the same masks)
        def generate_masks(self, image: np.ndarray, features, skip=None) -> SimpleNamespace:
            frame_idx = next(t for t in range(num_frames) if np.array_equal(frames[t], image))
            masks = [m for m in gt[:, frame_idx] if m.any()]
            return SimpleNamespace(masks=torch.from_numpy(np.asarray(masks, dtype=bool).reshape(-1, 32, 32)),
                                   stability_score=torch.ones(len(masks)))

    # random weights track badly, so the true masks keep looking new: the cap keeps the object count fixed
    found = discover(session, Generator(), AutoSpec(min_area=1, every=8, max_objects=2))
    session.reset()
    for d in found:
        session.add_mask(d.frame_idx, d.obj_id, d.mask)
    for _ in session.propagate(direction="both"):
        pass
    return len(found), session.peak


@pytest.mark.slow  # ~21 s; the session's own memory test runs in the default suite
def test_discovery_memory_does_not_grow_with_video_length() -> None:
    short, long = _walk_peak(60), _walk_peak(300)
    assert short[0] == long[0] == 2
    assert long[1] <= 1.1 * short[1], (short, long)
