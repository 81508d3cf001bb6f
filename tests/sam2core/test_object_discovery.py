"""sam2core.video.discovery on its own, as a notebook uses it (no pipeline): a real session and generator (random
weights), and the device matcher against the full-resolution host rule it replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2core import AutomaticMaskGenerator, build_model
from sam2core.video import ArrayFrameSource, PromptError, VideoSession
from sam2core.video.discovery import DiscoveryOptions, ObjectPrompt, admit, discover_objects, keyframes
from testkit.admission import reference_admit

SIZE = 64
FRAMES = 9


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("sam2.1_hiera_tiny", image_size=SIZE).eval()


def video() -> np.ndarray:
    """Two squares on a gradient; the second one enters at frame 5."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    frames = np.stack([np.stack([xx * 3, yy * 3, np.full_like(xx, 90)], axis=-1)] * FRAMES).astype(np.uint8)
    frames[:, 8:28, 6:26] = (230, 30, 30)
    frames[5:, 36:60, 34:60] = (30, 30, 230)
    return frames


def test_discovers_on_keyframes_and_the_found_objects_prompt_a_final_pass(model) -> None:
    session = VideoSession(model, ArrayFrameSource(video()))
    generator = AutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    options = DiscoveryOptions(every=4, max_objects=5, min_area=1)
    reached: list[int] = []
    found = discover_objects(session, generator, options, on_frame=reached.append)
    assert reached == keyframes(FRAMES, 4) == [0, 4, 8]
    assert 0 < len(found) <= 5
    assert [d.obj_id for d in found] == list(range(len(found)))
    assert [d.frame_idx for d in found] == sorted(d.frame_idx for d in found)
    for d in found:  # each one is a generator mask of its keyframe, as a bool tensor at video resolution
        assert d.frame_idx in (0, 4, 8) and d.mask.dtype == torch.bool and d.mask.shape == (SIZE, SIZE)
        image = video()[d.frame_idx]
        with torch.inference_mode():
            masks = generator.generate_masks(image, session.features(d.frame_idx))
        same = [i for i in range(len(masks)) if torch.equal(masks.masks[i], d.mask)]
        assert same and d.stability == pytest.approx(float(masks.stability_score[same[0]]))
    session.reset()
    for d in found:
        session.add_mask(d.frame_idx, d.obj_id, d.mask)
    frames = [r.frame_idx for r in session.propagate(direction="both")]
    assert sorted(frames) == list(range(FRAMES))


def test_the_walk_stops_once_the_cap_is_reached(model) -> None:
    session = VideoSession(model, ArrayFrameSource(video()))
    generator = AutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    reached: list[int] = []
    found = discover_objects(session, generator, DiscoveryOptions(every=4, max_objects=1, min_area=1),
                             on_frame=reached.append)
    assert [(d.obj_id, d.frame_idx) for d in found] == [(0, 0)] and reached == [0]  # nothing tracked after frame 0
    assert not session.obj_ids


def test_prompted_objects_keep_their_ids_and_new_ones_start_above(model) -> None:
    session = VideoSession(model, ArrayFrameSource(video()))
    generator = AutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    square = np.zeros((SIZE, SIZE), dtype=bool)
    square[8:28, 6:26] = True
    prompts = [ObjectPrompt(0, 7, mask=square), ObjectPrompt(2, 3, points=[[45.0, 47.0]], labels=[1])]
    reached: list[int] = []
    found = discover_objects(session, generator, DiscoveryOptions(every=4, max_objects=3, min_area=1), prompts,
                             on_frame=reached.append)
    assert reached == [0, 2, 4, 8]  # a prompt frame is a boundary of the walk too
    assert 0 < len(found) <= 3 and [d.obj_id for d in found] == list(range(8, 8 + len(found)))


class Logged(ArrayFrameSource):
    """The frames asked of the video, in order."""

    def __init__(self, frames: np.ndarray) -> None:
        super().__init__(frames)
        self.asked: list[int] = []

    def iter_frames(self, indices):
        self.asked += list(indices)
        return super().iter_frames(indices)


def test_the_walk_reads_only_its_keyframes_and_prompt_frames(model) -> None:
    """The walk tracks from boundary to boundary directly: the frames between them are never read (nor encoded),
    and each boundary is read once, in one stream ahead of the walk (the generator gets the picture the stream read,
    and a prompt given on the video its features: a video decoder would restart for a second read, and is not
    shared between threads); the session is left on its own video, every frame of it there for the final pass."""
    source = Logged(video())
    session = VideoSession(model, source)
    generator = AutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    options = DiscoveryOptions(every=4, max_objects=9, min_area=1)
    discover_objects(session, generator, options)
    assert source.asked == [0, 4, 8]
    source.asked.clear()
    prompts = [ObjectPrompt(2, 3, points=[[45.0, 47.0]], labels=[1])]
    found = discover_objects(session, generator, options, prompts)
    assert source.asked == [0, 2, 4, 8]
    assert session.source is source and not session.obj_ids
    source.asked.clear()
    for d in found:
        session.add_mask(d.frame_idx, d.obj_id, d.mask)
    assert sorted(r.frame_idx for r in session.propagate(direction="both")) == list(range(FRAMES))


def test_the_final_pass_encodes_no_frame_the_walk_found_objects_on(model) -> None:
    """The keyframes where objects were found are read (and encoded) by the walk only: their features are handed to
    the session, and the final pass's prompts and propagation reuse them (every other frame is read once). Its masks
    are those of a fresh session given the same prompts."""
    generator = AutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    source = Logged(video())
    session = VideoSession(model, source)
    found = discover_objects(session, generator, DiscoveryOptions(every=4, max_objects=9, min_area=1))
    found_on = {d.frame_idx for d in found}
    assert found_on and source.asked == [0, 4, 8]
    source.asked.clear()
    fresh = VideoSession(model, ArrayFrameSource(video()))
    for s in (session, fresh):
        for d in found:
            s.add_mask(d.frame_idx, d.obj_id, d.mask)
    ours = {r.frame_idx: r.mask_logits.clone() for r in session.propagate(direction="both")}
    assert sorted(source.asked) == [t for t in range(FRAMES) if t not in found_on]
    expected = {r.frame_idx: r.mask_logits.clone() for r in fresh.propagate(direction="both")}
    assert sorted(ours) == list(range(FRAMES))
    for t in expected:
        assert torch.equal(ours[t], expected[t]), f"frame {t}"


def test_a_bad_prompt_is_refused_naming_its_frame_of_the_video(model) -> None:
    session = VideoSession(model, ArrayFrameSource(video()))
    generator = AutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    bad = ObjectPrompt(6, 3, points=[[45.0, 47.0]], labels=[1, 0])  # the walk's frame 2 (boundaries 0, 4, 6, 8)
    with pytest.raises(PromptError, match="object 3, frame 6"):
        discover_objects(session, generator, DiscoveryOptions(every=4, max_objects=9, min_area=1), [bad])
    assert session.source.num_frames == FRAMES  # back on its video


def blobs(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """``count`` masks of one to three random ellipses each."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.zeros((count, height, width), dtype=bool)
    for k in range(count):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(1, height / 2), rng.uniform(1, width / 2)
            out[k] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return out


def test_device_matcher_admits_what_the_full_resolution_host_rule_admitted() -> None:
    """Random blobs, near-copies of known masks, parts of them, empty masks, random thresholds and room: the same
    admissions, in the same order, as the old host computation on full-resolution masks (testkit.admission)."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = int(rng.integers(8, 70)), int(rng.integers(8, 70))
        known = blobs(rng, int(rng.integers(0, 8)), h, w)
        candidates = blobs(rng, int(rng.integers(0, 14)), h, w)
        for i in range(min(len(candidates), len(known))):
            kind = rng.integers(0, 4)
            if kind == 0:  # the known mask with a few pixels flipped
                candidates[i] = known[i] ^ (rng.random((h, w)) < 0.05)
            elif kind == 1:  # a part of it
                candidates[i] = known[i] & blobs(rng, 1, h, w)[0]
            elif kind == 2:
                candidates[i] = False
        if len(candidates) > 1 and rng.random() < 0.5:  # two candidates of one object
            candidates[-1] = candidates[0] ^ (rng.random((h, w)) < 0.02)
        min_area = int(rng.integers(0, 60))
        match_iou, match_coverage = float(rng.uniform(0.05, 1.0)), float(rng.uniform(0.05, 1.0))
        room = int(rng.integers(0, 12))
        options = DiscoveryOptions(min_area=min_area, match_iou=match_iou, match_coverage=match_coverage)
        got = admit(torch.from_numpy(candidates), torch.from_numpy(known), options, room)
        assert got == reference_admit(candidates, list(known), min_area, match_iou, match_coverage, room)


def test_matching_by_coverage_and_iou() -> None:
    def square(y: int, x: int, size: int) -> torch.Tensor:
        m = torch.zeros(40, 40, dtype=torch.bool)
        m[y:y + size, x:x + size] = True
        return m

    whole, part, other = square(0, 0, 20), square(0, 0, 8), square(25, 25, 10)
    options = DiscoveryOptions(min_area=1)
    assert admit(torch.stack([part, other]), whole[None], options, room=10) == [1]  # covered: IoU 0.16 only
    assert admit(torch.stack([whole]), whole[None], options, room=10) == []  # IoU 1
    nothing = torch.zeros(0, 40, 40, dtype=torch.bool)
    assert admit(torch.stack([part, whole]), nothing, options, room=10) == [1]  # part is inside whole: dropped
    assert admit(torch.stack([part, other]), nothing, options, room=1) == [1]  # the largest first: 100 px over 64
    assert admit(torch.stack([part]), nothing, DiscoveryOptions(min_area=100), room=10) == []  # 64 px < 100
