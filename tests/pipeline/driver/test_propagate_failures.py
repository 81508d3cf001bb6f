"""Bad input ends as recorded failures (bad video, bad prompt) or is refused up front (manifest, other model)."""

from __future__ import annotations

import json
import logging

from pipeline.driver.job import EXIT_REFUSED, EXIT_FAILED, EXIT_OK, run
from pipeline.io.masklets import read_masklets
from tests.helpers import make_video, synthetic_frames
from tests.pipeline.driver.propagate_support import MODEL, job_spec, prompt_row, prompts_for, write_manifest


def _good_video(tmp_path, name: str = "good", frames: int = 8) -> tuple[str, list[dict]]:
    f = synthetic_frames(frames, 64, 96, seed=3)
    make_video(tmp_path / "videos" / f"{name}.mp4", f)
    return f"videos/{name}.mp4", prompts_for(name, f"videos/{name}.mp4", f, "box")


def test_corrupt_video_and_late_prompt_fail_alone(tmp_path, ray_cluster, caplog):
    uri, rows = _good_video(tmp_path)
    (tmp_path / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    rows += [prompt_row("corrupt", "videos/corrupt.mp4", 0, 0, points=[[10.0, 10.0]], labels=[1]),
             prompt_row("late", uri, 0, 40, points=[[10.0, 10.0]], labels=[1])]
    manifest = write_manifest(rows, str(tmp_path / "manifest.parquet"))
    out = tmp_path / "out"

    with caplog.at_level(logging.INFO):
        status = run(job_spec(manifest, str(tmp_path), str(out), ray_cluster.address))

    assert status == EXIT_FAILED
    assert "2 of 3 videos failed" in caplog.text
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["videos"]) == (1, 2, 3)
    assert not (out / "_SUCCESS").exists()  # written only when every video of the shard is done
    assert set(summary["failures"]) == {"corrupt", "late"}
    assert "corrupt.mp4" in summary["failures"]["corrupt"]
    assert "40" in summary["failures"]["late"] and "row 3" in summary["failures"]["late"]
    for video_id in ("corrupt", "late"):
        marker = json.loads((out / "_state" / "failed" / f"{video_id}.json").read_text())
        assert marker["reason"] == summary["failures"][video_id]
    assert sorted(p.name for p in (out / "masklets").iterdir()) == ["good.json"]
    assert read_masklets(str(out / "masklets" / "good.json")).frame_count == 8


def test_malformed_manifest_rejected_before_anything(tmp_path, caplog):
    uri, rows = _good_video(tmp_path)
    rows += [prompt_row("good", uri, 2, -1, points=[[1.0, 1.0]], labels=[1]),
             prompt_row("good", uri, 3, 0, points=[[1.0, 1.0]]),
             prompt_row("bad id!", uri, 0, 0, box=[1.0, 1.0, 5.0, 5.0])]
    manifest = write_manifest(rows, str(tmp_path / "manifest.parquet"))
    out = tmp_path / "out"

    with caplog.at_level(logging.INFO):
        status = run(job_spec(manifest, str(tmp_path), str(out), "127.0.0.1:1"))  # Ray is never reached

    assert status == EXIT_REFUSED
    for row, column in ((2, "frame_idx"), (3, "point_labels"), (4, "video_id")):
        assert f"row {row}, column {column!r}" in caplog.text
    assert "nothing was written" in caplog.text
    assert not out.exists()


def test_prefix_of_another_model_is_refused(tmp_path, ray_cluster, caplog):
    _, rows = _good_video(tmp_path, frames=4)
    manifest = write_manifest(rows, str(tmp_path / "manifest.parquet"))
    out = str(tmp_path / "out")
    assert run(job_spec(manifest, str(tmp_path), out, ray_cluster.address)) == EXIT_OK

    with caplog.at_level(logging.INFO):
        status = run(job_spec(manifest, str(tmp_path), out, ray_cluster.address, model="sam2_hiera_tiny"))
    assert status == EXIT_REFUSED
    assert "output.overwrite=true" in caplog.text
    assert read_masklets(f"{out}/masklets/good.json").provenance["model"] == MODEL

    status = run(job_spec(manifest, str(tmp_path), out, ray_cluster.address, model="sam2_hiera_tiny",
                          overwrite=True))
    assert status == EXIT_OK
    assert read_masklets(f"{out}/masklets/good.json").provenance["model"] == "sam2_hiera_tiny"
