"""The two video decoders (PyAV, decord) feed the model the same frames, hence give the same masklets."""

from __future__ import annotations

from pipeline.driver.job import EXIT_OK, run
from pipeline.io.masklets import read_masklets
from tests.helpers import make_video, synthetic_frames
from tests.pipeline.driver.propagate_support import job_spec, prompts_for, write_manifest


def test_pyav_and_decord_give_the_same_masks(tmp_path, ray_cluster):
    frames = synthetic_frames(10, 64, 96, seed=7)
    make_video(tmp_path / "videos" / "d.mp4", frames)
    manifest = write_manifest(prompts_for("d", "videos/d.mp4", frames, "mask"), str(tmp_path / "manifest.parquet"))
    results = {}
    for decoder in ("pyav", "decord"):
        out = str(tmp_path / decoder)
        assert run(job_spec(manifest, str(tmp_path), out, ray_cluster.address, decoder=decoder)) == EXIT_OK
        results[decoder] = read_masklets(f"{out}/masklets/d.json")
    assert results["pyav"].frame_count == results["decord"].frame_count == 10
    assert results["pyav"].rles == results["decord"].rles
