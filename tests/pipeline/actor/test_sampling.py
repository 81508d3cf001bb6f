"""The frame grid (data.frame_step, clips) and SampledSource: the engine sees the tracked frames as 0..n-1, and
tracking them gives the masks the official predictor gives on a JPEG folder holding just those frames."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from pipeline.actor.decoding import VideoError, open_video
from pipeline.actor.sampling import SampledSource
from pipeline.plan.sampling import FrameGrid
from sam2core.video import SessionOptions, VideoSession
from tests.helpers import make_video, synthetic_frames
from tests.sam2core.video_cases import (Case, Outcome, compare, jpeg_roundtrip, oracle_pair, run_official,
                                        shape_center, shape_mask, synthetic_video)


def test_grid_counts_from_frame_zero_and_the_clip_end_is_inclusive():
    assert list(FrameGrid(4).frames(10)) == [0, 4, 8]
    assert list(FrameGrid(4, 301, 312).frames(1000)) == [304, 308, 312]  # the global grid inside the clip
    assert list(FrameGrid(1, 5, 7).frames(100)) == [5, 6, 7]
    assert list(FrameGrid(4, 2, None).frames(13)) == [4, 8, 12]
    assert list(FrameGrid(3, None, 100).frames(8)) == [0, 3, 6]  # cut to the frames the video has
    assert list(FrameGrid().frames(5)) == [0, 1, 2, 3, 4] and FrameGrid().every_frame
    assert FrameGrid(4, 301, 303).is_empty() and not FrameGrid(4, 301, 304).is_empty()
    assert FrameGrid(4, 301, 900).nearest(300) == [304]
    assert FrameGrid(4, 301, 900).nearest(903) == [900]
    assert FrameGrid(4).nearest(6) == [4, 8] and FrameGrid(4).nearest(8) == [8]
    assert FrameGrid(4, 300, 900).describe() == "data.frame_step=4, clip 300–900 inclusive"


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> tuple[str, np.ndarray]:
    frames = synthetic_frames(30, 48, 64, seed=2)
    return str(make_video(tmp_path_factory.mktemp("vid") / "clip.mp4", frames)), frames


def test_sampled_source_presents_the_tracked_frames_and_maps_numbers_back(mp4):
    uri, _ = mp4
    with open_video(uri, decoder="pyav") as video:
        every = np.stack(list(video.iter_frames(range(video.num_frames))))
    source = SampledSource(open_video(uri, decoder="pyav"), FrameGrid(4, 5, 27))
    try:
        assert list(source.frames) == [8, 12, 16, 20, 24]
        assert (source.num_frames, source.height, source.width) == (5, 48, 64)
        assert source.fps == pytest.approx(6.0)
        np.testing.assert_array_equal(np.stack(list(source.iter_frames([4, 3, 2, 1, 0]))), every[[24, 20, 16, 12, 8]])
        assert (source.frame(1), source.position(12), source.position(13), source.position(28)) == (12, 1, None, None)
        with pytest.raises(IndexError):
            list(source.iter_frames([5]))
    finally:
        source.close()
    with pytest.raises(VideoError, match=r"no frame to track \(data.frame_step=4, clip 29–the end of the video, "
                                         r"first tracked frame 32\) in the video's 30 frames \(0..29\)"):
        SampledSource(open_video(uri, decoder="pyav"), FrameGrid(4, 29, None))


# the official predictor on a folder of frames 4, 8, …, 20 of a 23-frame video (clip 2–21, step 4), prompted on
# frame 12 (position 2 there) and propagated both ways
_GRID = FrameGrid(4, 2, 21)
_CASE = Case([("points", 2, 1, [list(shape_center(12, 0))], [1], None, True),
              ("mask", 2, 2, shape_mask(12, 1)), ("propagate", None, "both", None)], num_frames=23)


def test_tracking_sampled_frames_equals_the_official_predictor_on_a_folder_of_them(tmp_path):
    official, model = oracle_pair(_CASE.name, _CASE.image_size, _CASE.weights_seed)
    whole, only = tmp_path / "whole", tmp_path / "sampled"
    whole.mkdir()
    only.mkdir()
    jpeg_roundtrip(synthetic_video(_CASE.num_frames), str(whole))
    kept = list(_GRID.frames(_CASE.num_frames))
    assert kept == [4, 8, 12, 16, 20]
    for position, frame in enumerate(kept):  # the same JPEG bytes: both sides decode identical pixels
        shutil.copy(whole / f"{frame}.jpg", only / f"{position}.jpg")
    with torch.inference_mode():
        theirs = run_official(official, str(only), _CASE)

    source = SampledSource(open_video(str(whole)), _GRID)
    try:
        session = VideoSession(model, source, SessionOptions())
        frame = source.position(12)
        echoes = [session.add_points(frame, 1, [list(shape_center(12, 0))], [1]).mask_logits.numpy(),
                  session.add_mask(frame, 2, shape_mask(12, 1)).mask_logits.numpy()]
        tracked = {r.frame_idx: r.mask_logits.numpy() for r in session.propagate(direction="both")}
    finally:
        source.close()
    assert sorted(source.frame(p) for p in tracked) == kept
    result = compare(theirs, Outcome(echoes, [tracked]))
    print(f"\nframe_step parity: object-frames={result.object_frames} min IoU={result.min_iou:.6f} "
          f"max |dlogit|={result.max_abs_diff:.3g} present={result.present_fraction:.2f}")
    assert result.min_iou == 1.0 and result.max_abs_diff <= 1e-3 and result.present_fraction > 0.5
