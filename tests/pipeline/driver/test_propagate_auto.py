"""``python -m jobs.propagate prompts=auto`` end to end on the bundled sample with random weights.

Random weights give few and meaningless masks; loose generator thresholds make it find some, so the whole path runs
(keyframe generator, chunked tracking, final pass, pruning, SA-V auto layout). The masks themselves are tested with
stand-ins in test_discovery.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.dataset.annotations import read_sav_json
from pipeline.dataset.evaluate import evaluate_one
from pipeline.plan.manifest import ManifestError, ManifestReadError, list_videos, load_manifest
from pipeline.io.masklets import read_masklets
from pipeline.specs import DataSpec, SpecError
from tests.pipeline.driver.propagate_support import REPO, job_overrides, write_manifest

SAMPLE = REPO / "data" / "sample"
LOOSE = {"auto.generator.points_per_side": 4, "auto.generator.pred_iou_thresh": 0.0,
         "auto.generator.stability_score_thresh": 0.0, "auto.min_area": 1, "auto.max_objects": 3,
         "model.image_size": 256}
AUTO_KEYS = ("masklet_stability_score", "masklet_size_rel", "masklet_size_abs", "masklet_size_bucket",
             "masklet_first_appeared_frame", "masklet_frame_count", "masklet_visibility_changes", "masklet_type")


@pytest.mark.slow  # ~45 s; prompts=auto runs end to end in the default suite in the mixed, frame_step and image jobs
def test_auto_job_on_the_sample_writes_sav_auto_masklets(tmp_path: Path, run_job, ray_cluster) -> None:
    out = tmp_path / "out"
    overrides = job_overrides(str(SAMPLE / "manifest.parquet"), str(SAMPLE), str(out), ray_cluster.address,
                              prompts="auto", **LOOSE)
    proc = run_job(overrides, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = 0
    for video_id in ("bouncing", "orbit", "slide"):
        path = out / "masklets" / f"{video_id}.json"
        d = json.loads(path.read_text())
        assert all(k in d for k in AUTO_KEYS)
        n = d["masklet_num"]
        found += n
        assert n <= 3 and len(set(d["masklet_id"])) == n
        assert d["masklet_type"] == ["auto"] * n
        assert len(d["masklet_stability_score"]) == len(d["masklet"]) == d["video_frame_count"]
        assert all(len(row) == n for row in d["masklet_stability_score"])
        m = read_sav_json(str(path))  # SA-V tooling reads it as is
        assert m.obj_ids == d["masklet_id"] and m.frame_indices == list(range(d["video_frame_count"]))
        assert read_masklets(str(path)).types == ["auto"] * n
        if n:
            scores = evaluate_one(video_id, [str(path)], str(path), None, True, 4)  # jobs.evaluate's scoring
            assert {s.obj_id for s in scores} <= set(d["masklet_id"])  # objects empty on scored frames are left out
            assert all(s.jf == pytest.approx(100.0) for s in scores if s.frames)
    assert found > 0  # the loose settings find something on random weights
    done = json.loads((out / "_state" / "done" / "slide.json").read_text())
    assert done["status"] == "done" and done["objects"] == json.loads((out / "masklets" / "slide.json")
                                                                      .read_text())["masklet_num"]
    rerun = run_job(overrides, timeout=300)  # resume: nothing left to do
    assert rerun.returncode == 0 and "3 already done, 0 to run" in rerun.stdout + rerun.stderr


def test_mixed_job_with_a_video_only_row(tmp_path: Path, run_job, ray_cluster) -> None:
    """prompts=manifest+auto: bouncing keeps its prompt rows, slide is listed by a video-only row."""
    rows = [r for r in pq.read_table(SAMPLE / "manifest.parquet").to_pylist() if r["video_id"] == "bouncing"]
    manifest = write_manifest(rows + [{"video_id": "slide", "video_uri": "videos/slide.mp4"}],
                              str(tmp_path / "mixed.parquet"))
    out = tmp_path / "out"
    cheap = {**LOOSE, "model.image_size": 128, "auto.every": 8}  # ~20 s on 2 CPU threads
    proc = run_job(job_overrides(manifest, str(SAMPLE), str(out), ray_cluster.address, prompts="manifest+auto",
                                 **cheap), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for video_id in ("bouncing", "slide"):
        assert json.loads((out / "_state" / "done" / f"{video_id}.json").read_text())["status"] == "done"
    bouncing = json.loads((out / "masklets" / "bouncing.json").read_text())
    types = dict(zip(bouncing["masklet_id"], bouncing["masklet_type"]))
    assert {o: types.get(o) for o in (0, 1)} == {0: "manual", 1: "manual"}
    assert all(t == "auto" and o > 1 for o, t in types.items() if o not in (0, 1))  # new ids above the manifest's
    slide = json.loads((out / "masklets" / "slide.json").read_text())
    assert slide["masklet_type"] == ["auto"] * slide["masklet_num"]


def test_auto_manifest_needs_only_video_columns(tmp_path: Path) -> None:
    uri = str(tmp_path / "videos.parquet")
    pq.write_table(pa.table({"video_id": ["slide", "slide", "orbit"],
                             "video_uri": ["videos/slide.mp4", "videos/slide.mp4", "videos/orbit"]}), uri)
    plan = load_manifest(uri, str(SAMPLE), mode="auto")
    assert sorted(t.video_id for t in plan.tasks) == ["orbit", "slide"]
    assert all(t.auto and t.prompts == () for t in plan.tasks)
    with pytest.raises(ManifestError, match="obj_id"):
        load_manifest(uri, str(SAMPLE))
    mixed = load_manifest(str(SAMPLE / "manifest.parquet"), str(SAMPLE), mode="manifest+auto")
    assert all(t.auto and t.prompts for t in mixed.tasks)
    listed = load_manifest(uri, str(SAMPLE), mode="manifest+auto")  # only video-only rows: as prompts=auto
    assert listed.tasks == plan.tasks


def test_data_videos_lists_files_by_glob_or_prefix(tmp_path: Path) -> None:
    plan = list_videos(str(SAMPLE / "videos" / "*.mp4"))
    assert sorted((t.video_id, t.video_uri) for t in plan.tasks) == [
        ("bouncing", str(SAMPLE / "videos" / "bouncing.mp4")), ("slide", str(SAMPLE / "videos" / "slide.mp4"))]
    assert all(t.auto and t.prompts == () for t in plan.tasks)
    (tmp_path / "a b.mp4").write_bytes(b"x")
    (tmp_path / "c.mp4").write_bytes(b"x")
    assert sorted(t.video_id for t in list_videos(f"{tmp_path}/").tasks) == ["a_b", "c"]
    (tmp_path / "c.avi").write_bytes(b"x")
    with pytest.raises(ManifestError, match="both name video 'c'"):
        list_videos(f"file://{tmp_path}/")
    with pytest.raises(ManifestReadError, match="no video files match"):
        list_videos(str(tmp_path / "*.mkv"))
    with pytest.raises(SpecError, match="needs prompts=auto"):
        DataSpec(name="x", manifest="", root="", videos="s3://b/*.mp4")
