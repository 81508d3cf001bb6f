"""The video decoders (PyAV, decord, torchcodec where it loads) feed the model the same frames, hence give the same
masklets, on a phone-style video whose stream carries a 90° display rotation: every decoder gives the displayed
orientation, so the masks have the displayed size whichever decoder ran."""

from __future__ import annotations

import av
import numpy as np

from pipeline.actor.decoding import decoder_unavailable
from pipeline.driver.job import EXIT_OK, run
from pipeline.io.masklets import read_masklets
from tests.helpers import synthetic_frames
from tests.pipeline.driver.propagate_support import job_spec, prompts_for, write_manifest


def _rotated_video(path, frames: np.ndarray, rotation: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18", "g": "8", "bf": "2"}
        stream.set_display_rotation(rotation)  # counter-clockwise, as a phone held upright records it
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_every_decoder_gives_the_same_masks_in_the_displayed_orientation(tmp_path, ray_cluster):
    stored = synthetic_frames(10, 64, 96, seed=7)
    _rotated_video(tmp_path / "videos" / "d.mp4", stored, 90)
    shown = np.ascontiguousarray(np.rot90(stored, 1, axes=(1, 2)))  # 96 high, 64 wide, as a player shows it
    manifest = write_manifest(prompts_for("d", "videos/d.mp4", shown, "mask"), str(tmp_path / "manifest.parquet"))
    decoders = [d for d in ("pyav", "decord", "torchcodec") if decoder_unavailable(d) is None]
    results = {}
    for decoder in decoders:
        out = str(tmp_path / decoder)
        assert run(job_spec(manifest, str(tmp_path), out, ray_cluster.address, decoder=decoder)) == EXIT_OK
        results[decoder] = read_masklets(f"{out}/masklets/d.json")
    for decoder, m in results.items():
        assert (m.frame_count, m.height, m.width) == (10, 96, 64), decoder
        assert m.rles == results["pyav"].rles, decoder
