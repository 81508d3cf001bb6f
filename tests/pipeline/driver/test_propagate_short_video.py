"""A video whose header claims more frames than it holds (an mp4 cut short, its index up front) does not fail: its
masklets cover the frames that decode, record both counts, and equal sam2core's run on the same file."""

from __future__ import annotations

from dataclasses import replace

import av
import numpy as np

from pipeline.actor.decoding import open_video
from pipeline.driver.job import EXIT_OK, run
from pipeline.io.masklets import from_parquet_table, from_sav_json, read_masklets, to_parquet_table, to_sav_json
from tests.helpers import synthetic_frames
from tests.pipeline.driver.propagate_support import decoded, direct_masks, job_spec, prompts_for, write_manifest

CLAIMED = 40


def _cut_mp4(folder, frames: np.ndarray) -> str:
    """An mp4 of ``frames`` with its index first (faststart), cut at 60% of its bytes: the header still claims every
    frame, the data holds fewer, and the last packet it holds is cut short (it fails to decode)."""
    whole = folder / "whole.mp4"
    with av.open(str(whole), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18", "g": "8", "bf": "2"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = whole.read_bytes()
    cut = folder / "videos" / "cut.mp4"
    cut.parent.mkdir()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    whole.unlink()
    return str(cut)


def test_a_video_shorter_than_its_header_gives_masklets_of_the_frames_it_has(tmp_path, ray_cluster):
    frames = synthetic_frames(CLAIMED, 64, 96, seed=7)
    path = _cut_mp4(tmp_path, frames)
    with open_video(path, decoder="pyav") as video:
        assert video.header_frames == CLAIMED and video.num_frames < CLAIMED
    rows = prompts_for("cut", "videos/cut.mp4", frames, "mask")
    manifest = write_manifest(rows, str(tmp_path / "manifest.parquet"))
    out = str(tmp_path / "out")
    assert run(job_spec(manifest, str(tmp_path), out, ray_cluster.address, decoder="pyav")) == EXIT_OK

    m = read_masklets(f"{out}/masklets/cut.json")
    expected = direct_masks(path, rows)  # the engine alone: its forward pass ends where decoding does
    assert 8 < len(expected) < CLAIMED
    assert m.frame_indices == list(range(len(expected)))
    assert (m.frame_count, m.header_frame_count) == (len(expected), CLAIMED)
    got = decoded(m)
    for t, masks in expected.items():
        np.testing.assert_array_equal(got[t], masks)
    assert to_sav_json(m)["video_header_frame_count"] == CLAIMED
    assert from_parquet_table(to_parquet_table(m)).header_frame_count == CLAIMED
    whole = replace(m, header_frame_count=None)  # a video that decodes as its header says: the layout of before
    assert "video_header_frame_count" not in to_sav_json(whole)
    assert from_sav_json(to_sav_json(whole)).header_frame_count is None
