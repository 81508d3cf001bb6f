"""Streaming sources: frames pushed one at a time (``VideoSession.track``) and sources whose video ends before the
count they claim. Pushed frames give the masks of ``propagate`` over the same frames (and so the official
predictor's); memory does not grow with the frames pushed; a source that ends early ends the forward pass cleanly."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch

from sam2core.automatic import AutomaticMaskGenerator
from sam2core.build import build_model
from sam2core.video import (ArrayFrameSource, DiscoveryOptions, FrameResult, PromptError, PushedFrames, SessionOptions,
                            VideoSession, discover_objects)
from tests.sam2core.video_cases import (Case, Outcome, compare, jpeg_roundtrip, oracle_pair, run_official,
                                        shape_center, shape_mask, synthetic_video)

NUM_FRAMES = 18  # >= 16: the object-pointer code of an open-ended stream is the official one for any such video


@pytest.fixture(scope="module")
def model():
    return oracle_pair("sam2.1_hiera_tiny", 128, 2)[1]


def _logits(results: Iterator[FrameResult] | Sequence[FrameResult]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    return {r.frame_idx: (r.low_res_logits.clone(), r.object_scores.clone()) for r in results}


def _assert_identical(ours: dict, expected: dict) -> None:
    assert sorted(ours) == sorted(expected)
    for t in expected:
        assert torch.equal(ours[t][0], expected[t][0]), f"frame {t}: logits differ"
        assert torch.equal(ours[t][1], expected[t][1]), f"frame {t}: object scores differ"


def _prompt_first(session: VideoSession) -> FrameResult:
    session.add_points(0, 1, [list(shape_center(0, 0))], [1])
    return session.add_mask(0, 2, shape_mask(0, 1))


# ------------------------------------------------------------------------------------------------ pushed frames
def test_pushed_frames_equal_propagate_and_the_official_predictor(model) -> None:
    """Frames pushed one at a time, prompts on the first: identical logits to a forward propagation over the same
    frames as a sized source, and the official predictor's masks."""
    frames = synthetic_video(NUM_FRAMES)
    with tempfile.TemporaryDirectory() as folder:
        decoded = jpeg_roundtrip(frames, folder)
        case = Case([("points", 0, 1, [list(shape_center(0, 0))], [1], None, True),
                     ("mask", 0, 2, shape_mask(0, 1)), ("propagate", 0, "forward", None)], num_frames=NUM_FRAMES)
        official = oracle_pair(case.name, case.image_size, case.weights_seed)[0]
        with torch.inference_mode():
            off = run_official(official, folder, case)

    sized = VideoSession(model, ArrayFrameSource(decoded))
    _prompt_first(sized)
    expected = _logits(sized.propagate(direction="forward"))

    live = VideoSession(model)
    results, echo = [], None
    for t, frame in enumerate(decoded):
        result = live.track(frame)
        if t == 0:
            assert result.obj_ids == [] and tuple(result.mask_logits.shape) == (0, 128, 128)
            echo = _prompt_first(live)
            result = echo
        results.append(result)
    assert live.num_frames == NUM_FRAMES and live.obj_ids == [1, 2]
    _assert_identical(_logits(results), expected)

    ours = Outcome([echo.mask_logits.cpu().numpy()], [{r.frame_idx: r.mask_logits.cpu().numpy() for r in results}])
    off = Outcome(off.echoes[1:], off.passes)  # the echo after both prompts
    result = compare(off, ours)
    assert result.present_fraction > 0.5
    assert result.min_iou >= 0.999 and result.max_abs_diff <= 1e-3


def test_object_prompted_on_a_later_frame_joins_there(model) -> None:
    """An object first prompted on pushed frame 6 has no mask before it, and from there the masks of a propagation
    of it alone from frame 6; the object prompted on frame 0 is unaffected."""
    frames = synthetic_video(NUM_FRAMES)
    late = 6
    live = VideoSession(model)
    results = []
    for t, frame in enumerate(frames):
        result = live.track(frame)
        if t == 0:
            result = live.add_points(0, 1, [list(shape_center(0, 0))], [1])
        if t == late:
            result = live.add_mask(late, 2, shape_mask(late, 1))
            assert result.obj_ids == [1, 2]
        results.append(result)
    assert [r.obj_ids for r in results[:late]] == [[1]] * late
    assert all(r.obj_ids == [1, 2] for r in results[late:])

    first = VideoSession(model, ArrayFrameSource(frames))
    first.add_points(0, 1, [list(shape_center(0, 0))], [1])
    expected_first = _logits(first.propagate(direction="forward"))
    second = VideoSession(model, ArrayFrameSource(frames))
    second.add_mask(late, 2, shape_mask(late, 1))
    expected_second = _logits(second.propagate(direction="forward"))

    for t, r in enumerate(results):
        assert torch.equal(r.low_res_logits[0], expected_first[t][0][0])
        if t >= late:
            assert torch.equal(r.low_res_logits[1], expected_second[t][0][0])
            assert torch.equal(r.object_scores[1], expected_second[t][1][0])


def test_correction_on_the_newest_frame_is_the_official_correction(model) -> None:
    """A click on the newest frame for an object tracked there is a correction (memory-conditioned, its tracked
    logits as mask input) that later frames read: as the official predictor tracking up to that frame, correcting
    it and tracking on from the next frame (a session that keeps its history does exactly that)."""
    frames = synthetic_video(NUM_FRAMES)
    fix_at, click = 8, [list(shape_center(8, 1))]
    live = VideoSession(model)
    results, tracked = {}, None
    for t, frame in enumerate(frames):
        result = live.track(frame)
        if t == 0:
            result = live.add_points(0, 1, [list(shape_center(0, 0))], [1])
        if t == fix_at:
            tracked = result.low_res_logits.clone()
            result = live.add_points(fix_at, 1, click, [1])
        results[t] = result
    assert not torch.equal(results[fix_at].low_res_logits, tracked)  # the click changed the mask

    full = VideoSession(model, ArrayFrameSource(frames), SessionOptions(keep_history=True))
    full.add_points(0, 1, [list(shape_center(0, 0))], [1])
    expected = _logits(full.propagate(direction="forward", max_frames=fix_at))
    expected[fix_at] = _logits([full.add_points(fix_at, 1, click, [1])])[fix_at]
    expected.update(_logits(full.propagate(start_frame=fix_at + 1, direction="forward")))
    _assert_identical(_logits(results.values()), expected)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model("sam2.1_hiera_tiny", image_size=32)


def test_state_held_does_not_grow_with_the_frames_pushed(small_model) -> None:
    """After 20 and after 40 pushed frames the session holds the same entries: outputs per object (the pointer
    window), spatial memories, tracked logits (the newest frame's only), no per-frame marks, the same bytes."""
    frames = synthetic_video(40, 32, 32)
    session = VideoSession(small_model)
    held = {}
    for t, frame in enumerate(frames):
        session.track(frame)
        if t == 0:
            session.add_points(0, 1, [list(shape_center(0, 0, 32, 32))], [1])
            session.add_mask(0, 2, shape_mask(0, 1, 32, 32))
        if t + 1 in (20, 40):
            held[t + 1] = [(len(obj.cond), len(obj.non_cond),
                            sum(out.memory is not None for out in obj.non_cond.values()),
                            sum(out.low_res is not None for out in obj.non_cond.values()), len(obj.tracked))
                           for obj in session.state.objects.values()], session.state_nbytes()
    assert held[20] == held[40]
    per_object = held[40][0]
    assert per_object == [(1, 16, 7, 1, 0)] * 2  # pointers t..t-15, memories t..t-6, the newest mask


def test_pushed_frames_refuse_what_they_cannot_do(model) -> None:
    frames = synthetic_video(3)
    session = VideoSession(model)
    with pytest.raises(PromptError, match="object 1, frame 0: .*no frame pushed yet"):
        session.add_points(0, 1, [[10, 10]], [1])
    session.track(frames[0])
    session.add_points(0, 1, [list(shape_center(0, 0))], [1])
    session.track(frames[1])
    with pytest.raises(PromptError, match=r"object 2, frame 0: .*newest is frame 1"):
        session.add_points(0, 2, [[10, 10]], [1])
    with pytest.raises(ValueError, match="frame 2: expected uint8"):
        session.track(frames[2][:-2])
    with pytest.raises(ValueError, match="track\\(frame\\)"):
        next(session.propagate())
    sized = VideoSession(model, ArrayFrameSource(frames))
    with pytest.raises(ValueError, match="VideoSession\\(model\\)"):
        sized.track(frames[0])
    sized.reset(PushedFrames())  # the same session, now on a new stream
    assert sized.track(frames[0]).frame_idx == 0 and sized.num_frames == 1


# ------------------------------------------------------------------------------------------------ early end
class EndsEarly:
    """A video whose count claims ``claimed`` frames while only ``len(frames)`` decode: each read decodes from the
    start with a generator, as a decoder does, and stops where the video does."""

    def __init__(self, frames: np.ndarray, claimed: int) -> None:
        self.frames, self.num_frames = frames, claimed
        self.height, self.width = frames.shape[1:3]

    def _decode(self) -> Iterator[tuple[int, np.ndarray]]:
        yield from enumerate(self.frames)

    def iter_frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        decoded = dict(self._decode())
        for i in indices:
            if i not in decoded:
                return
            yield decoded[i]


def test_source_that_ends_early_ends_the_forward_pass_there(model) -> None:
    """A header claiming 24 frames over 18 that decode: "both" from frame 4 tracks frames 0..17 once each, reports
    18 frames, and gives the masks of the same prompts on the 18 frames as a sized source. Frames are encoded 4 at a
    time on the encoder thread, so the source ends inside a batch (one frame of 17..20 exists); the walk of
    discovery below ends a pass with one frame per batch."""
    options = SessionOptions(encoder_batch=4, overlap_encoder=True)
    frames = synthetic_video(NUM_FRAMES)
    session = VideoSession(model, EndsEarly(frames, claimed=24), options)
    session.add_points(4, 1, [list(shape_center(4, 0))], [1])
    ours = _logits(session.propagate(direction="both"))
    assert session.num_frames == NUM_FRAMES
    reference = VideoSession(model, ArrayFrameSource(frames), options)
    reference.add_points(4, 1, [list(shape_center(4, 0))], [1])
    _assert_identical(ours, _logits(reference.propagate(direction="both")))
    with pytest.raises(PromptError, match="outside the video \\(frames 0..17\\)"):
        session.add_points(18, 1, [[10, 10]], [1])
    fresh = VideoSession(model, EndsEarly(frames, claimed=24), options)
    with pytest.raises(PromptError, match="frame 20: the video ends before this frame"):
        fresh.add_points(20, 1, [[10, 10]], [1])


def test_discovery_walk_ends_where_the_video_does(model) -> None:
    """Keyframes 0, 4, 8, 12 of a video claiming 16 frames that has 10: the walk reaches 0, 4, 8 and stops (it reads
    keyframes only, so the final pass is what finds the last frame)."""
    session = VideoSession(model, EndsEarly(synthetic_video(10), claimed=16))
    generator = AutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    reached: list[int] = []
    found = discover_objects(session, generator, DiscoveryOptions(every=4, max_objects=50, min_area=1),
                             on_frame=reached.append)
    assert reached == [0, 4, 8] and found
    assert all(d.frame_idx in (0, 4, 8) for d in found)
    session.reset()
    for d in found:
        session.add_mask(d.frame_idx, d.obj_id, d.mask)
    assert sorted(r.frame_idx for r in session.propagate(direction="both")) == list(range(10))
    assert session.num_frames == 10
