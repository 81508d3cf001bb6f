"""data.frame_step and clips end to end (pipeline.driver.run on the session's Ray cluster, real mp4 files): the job
tracks the sampled frames only, writes them with the video's frame numbers and full frame count, resumes by a
digest that holds the step and the clip, and refuses a prompt off the sampled frames before any work."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.actor.decoding import open_video
from pipeline.driver.job import EXIT_REFUSED, EXIT_FAILED, EXIT_OK, run
from pipeline.io.masklets import read_masklets
from pipeline.io.rle import decode_rle
from pipeline.specs import AutoSpec, DataSpec, SpecError
from sam2core.build import build_model
from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession
from tests.helpers import make_video, synthetic_frames
from tests.pipeline.driver.propagate_support import (IMAGE_SIZE, MODEL, decoded, job_spec, prompt_row, square_mask,
                                                     write_manifest)

NUM_FRAMES = 18


@pytest.fixture
def strided(tmp_path) -> dict:
    """One 18-frame mp4 listed twice: "every4" prompted on frame 4 (a mask of the square, a click on the
    background), "window" with the clip 5–14 (frames 8 and 12 at step 4) prompted on frame 8, and "past" whose clip
    starts after the video's end (on the grid: the driver cannot know the video's length)."""
    frames = synthetic_frames(NUM_FRAMES, 64, 96, seed=5)
    make_video(tmp_path / "videos" / "clip.mp4", frames)
    rows = []
    for video_id, frame, clip in (("every4", 4, (None, None)), ("window", 8, (5, 14))):
        for row in (prompt_row(video_id, "videos/clip.mp4", 0, frame, mask=square_mask(frames, frame)),
                    prompt_row(video_id, "videos/clip.mp4", 1, frame, points=[[92.0, 60.0]], labels=[1])):
            rows.append({**row, "start_frame": clip[0], "end_frame": clip[1]})
    rows.append({**prompt_row("past", "videos/clip.mp4", 0, 40, points=[[5.0, 5.0]], labels=[1]),
                 "start_frame": 40, "end_frame": None})
    return {"manifest": write_manifest(rows, str(tmp_path / "manifest.parquet")), "rows": rows,
            "video": str(tmp_path / "videos" / "clip.mp4")}


def _with_step(spec, frame_step: int, **data):
    """``spec`` at ``data.frame_step``, its random weights drawn under seed 1 (whose masks are not empty here)."""
    return replace(spec, data=replace(spec.data, frame_step=frame_step, **data), model=replace(spec.model, seed=1))


def _tracked_alone(video: str, kept: list[int], rows: list[dict]) -> dict[int, np.ndarray]:
    """Masks per video frame from sam2core on an in-memory video of only the ``kept`` frames (the job's weights)."""
    with open_video(video, decoder="pyav") as source:
        every = np.stack(list(source.iter_frames(range(source.num_frames))))
    torch.manual_seed(1)
    session = VideoSession(build_model(MODEL, None, image_size=IMAGE_SIZE), ArrayFrameSource(every[kept]),
                           SessionOptions(dtype="float32"))
    for r in rows:
        if r["mask"] is not None:
            session.add_mask(kept.index(r["frame_idx"]), r["obj_id"], decode_rle(r["mask"]))
        else:
            session.add_points(kept.index(r["frame_idx"]), r["obj_id"], points=r["points"], labels=r["point_labels"])
    return {kept[r.frame_idx]: (r.mask_logits > 0).numpy() for r in session.propagate(direction="both")}


def test_a_strided_and_clipped_job_tracks_the_sampled_frames_and_keeps_their_numbers(tmp_path, strided,
                                                                                        ray_cluster, caplog):
    out = tmp_path / "out"
    spec = _with_step(job_spec(strided["manifest"], str(tmp_path), str(out), ray_cluster.address), 4)
    assert run(spec) == EXIT_FAILED
    reason = json.loads((out / "_state" / "failed" / "past.json").read_text())["reason"]
    assert "no frame to track (data.frame_step=4, clip 40–the end of the video, first tracked frame 40) in the " \
           "video's 18 frames" in reason

    for video_id, kept in (("every4", [0, 4, 8, 12, 16]), ("window", [8, 12])):
        m = read_masklets(str(out / "masklets" / f"{video_id}.json"))
        assert (m.frame_indices, m.frame_count) == (kept, NUM_FRAMES)
        expected = _tracked_alone(strided["video"], kept, [r for r in strided["rows"] if r["video_id"] == video_id])
        got = decoded(m)
        assert got.keys() == expected.keys()
        for f in kept:
            np.testing.assert_array_equal(got[f], expected[f], err_msg=f"{video_id} frame {f}")
        assert all(masks.any(axis=(1, 2)).all() for masks in got.values())  # every object on every frame

    markers = {p.name: p.read_text() for p in (out / "_state" / "done").iterdir()}
    assert {name: json.loads(text)["frames"] for name, text in markers.items()} == {"every4.json": 5, "window.json": 2}
    with caplog.at_level(logging.INFO):
        assert run(spec) == EXIT_FAILED  # the same step and clips: only the failed video again
    assert "2 already done, 1 to run" in caplog.text
    assert {p.name: p.read_text() for p in (out / "_state" / "done").iterdir()} == markers


def test_a_prompt_off_the_sampled_frames_is_refused_before_any_work(tmp_path, strided, caplog):
    out = tmp_path / "out"
    spec = _with_step(job_spec(strided["manifest"], str(tmp_path), str(out), "127.0.0.1:1"), 8)  # Ray never reached
    with caplog.at_level(logging.INFO):
        assert run(spec) == EXIT_REFUSED
    assert ("row 0, column 'frame_idx': frame 4 is not sampled (data.frame_step=8); nearest sampled frames: 0, 8"
            in caplog.text)
    assert "row 2, column 'frame_idx': frame 8 is outside the clip (data.frame_step=8, clip 5–14 inclusive); " \
           "nearest sampled frames: 8" not in caplog.text  # 8 is on the grid and in the clip
    assert "nothing was written" in caplog.text and not out.exists()
    with pytest.raises(SpecError, match="data.frame_step=0: must be an integer >= 1"):
        DataSpec(name="t", manifest="m.parquet", root=".", frame_step=0)


def test_automatic_keyframes_count_in_sampled_frames(tmp_path, ray_cluster):
    """prompts=auto with data.frame_step=2 and auto.every=2: the tracked frames are 0, 2, …, 10 and the generator
    runs on every 2nd of them, frames 0, 4 and 8; each discovered object carries the generator's stability on the
    keyframe where it was found (the sigmoid of its object score on every other frame)."""
    make_video(tmp_path / "videos" / "auto.mp4", synthetic_frames(12, 64, 96, seed=6))
    manifest = write_manifest([{"video_id": "auto", "video_uri": "videos/auto.mp4"}], str(tmp_path / "m.parquet"))
    out = tmp_path / "out"
    generator = {**AutoSpec().generator, "points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    spec = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address)
    spec = replace(spec, data=replace(spec.data, frame_step=2, prompts="auto"),
                   auto=AutoSpec(generator=generator, every=2, min_area=1, max_objects=3))
    assert run(spec) == EXIT_OK
    d = json.loads((out / "masklets" / "auto.json").read_text())
    assert (d["frame_indices"], d["video_frame_count"]) == ([0, 2, 4, 6, 8, 10], 12)
    assert d["masklet_num"] > 0  # the loose settings find something on random weights
    for j in range(d["masklet_num"]):
        found_on = [f for f, stab, scores in zip(d["frame_indices"], d["masklet_stability_score"], d["object_scores"])
                    if not math.isclose(stab[j], 1 / (1 + math.exp(-scores[j])), rel_tol=1e-6)]
        assert len(found_on) == 1 and found_on[0] in (0, 4, 8), (j, found_on)
    assert all(decode_rle(r).shape == (64, 96) for r in d["masklet"][0])
