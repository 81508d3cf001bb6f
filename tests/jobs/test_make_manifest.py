"""Manifest making: rows, frames (6 fps → 24 fps, or kept at 6 fps; only a strided run's frames) and masks from SA-V
JSON and PNG folders; the job end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from pipeline.dataset.annotations import read_png_video, read_sav_json
from pipeline.plan.manifest import load_manifest
from pipeline.io.rle import decode_rle
from pipeline.dataset.manifest_maker import PromptSpec, manifest_table, prompt_rows
from tests.jobs.jobdata import SAV_EXAMPLE, write_png

MANUAL = json.loads((SAV_EXAMPLE / "sav_000001_manual.json").read_text())


def _nonempty_positions(obj: int) -> list[int]:
    return [i for i, frame in enumerate(MANUAL["masklet"])
            if mask_utils.area({"size": frame[obj]["size"], "counts": frame[obj]["counts"].encode()}) > 0]


def test_first_appearance_mask_rows() -> None:
    m = read_sav_json(str(SAV_EXAMPLE / "sav_000001_manual.json"))
    rows = prompt_rows(m, "videos/sav_000001.mp4", PromptSpec(frames="first", kind="mask"))
    assert [(r["obj_id"], r["frame_idx"]) for r in rows] == [(0, 0), (1, 0), (2, 0), (4, 0), (3, 4 * 113)]
    for r in rows:
        pos = r["frame_idx"] // 4
        assert r["mask"] == MANUAL["masklet"][pos][r["obj_id"]]
        assert r["video_uri"] == "videos/sav_000001.mp4" and r["points"] is None and r["box"] is None


def test_every_annotated_frame_rows() -> None:
    m = read_sav_json(str(SAV_EXAMPLE / "sav_000001_manual.json"))
    rows = prompt_rows(m, "v.mp4", PromptSpec(frames="all", kind="mask"))
    expected = sorted((4 * p, o) for o in range(5) for p in _nonempty_positions(o))
    assert sorted((r["frame_idx"], r["obj_id"]) for r in rows) == expected
    assert len(rows) == 120 + 121 + 110 + 8 + 121


def test_prompts_only_on_the_frames_a_strided_run_samples(caplog: pytest.LogCaptureFixture) -> None:
    """annotation_step numbers SA-V's annotated positions (4: the 24 fps video's frames, 1: the 6-fps frames);
    prompts.frame_step keeps the frames a data.frame_step run tracks."""
    m = read_sav_json(str(SAV_EXAMPLE / "sav_000001_manual.json"))
    first = [(0, 0), (1, 0), (2, 0), (4, 0), (3, 452)]
    assert [(r["obj_id"], r["frame_idx"]) for r in prompt_rows(m, "v.mp4", PromptSpec(frame_step=4))] == first
    eight = prompt_rows(m, "v.mp4", PromptSpec(frame_step=8))
    assert [(r["obj_id"], r["frame_idx"]) for r in eight] == [(0, 0), (1, 0), (2, 0), (4, 0), (3, 456)]
    assert eight[-1]["mask"] == MANUAL["masklet"][456 // 4][3]                # the annotation of video frame 456
    every = prompt_rows(m, "v.mp4", PromptSpec(frames="all", frame_step=8))
    expected = sorted((4 * p, o) for o in range(5) for p in _nonempty_positions(o) if (4 * p) % 8 == 0)
    assert sorted((r["frame_idx"], r["obj_id"]) for r in every) == expected
    six_fps = read_sav_json(str(SAV_EXAMPLE / "sav_000001_manual.json"), annotation_step=1)
    assert [(r["obj_id"], r["frame_idx"]) for r in prompt_rows(six_fps, "folder", PromptSpec())] == [
        (0, 0), (1, 0), (2, 0), (4, 0), (3, 113)]
    with caplog.at_level("WARNING"):
        sparse = prompt_rows(m, "v.mp4", PromptSpec(frame_step=400))           # frames 0 and 400 only
    assert [r["obj_id"] for r in sparse] == [0, 1, 2, 4]
    assert "video sav_000001 object 3: no prompt, empty on every annotated frame that prompts.frame_step=400 " \
           "samples" in caplog.text


def test_boxes_and_points_come_from_the_mask() -> None:
    m = read_sav_json(str(SAV_EXAMPLE / "sav_000001_manual.json"))
    boxes = prompt_rows(m, "v.mp4", PromptSpec(kind="box"))
    for r in boxes:
        rle = MANUAL["masklet"][r["frame_idx"] // 4][r["obj_id"]]
        x, y, w, h = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()})
        assert r["box"] == [x, y, x + w, y + h]
    spec = PromptSpec(kind="points", num_points=3, seed=7)
    points = prompt_rows(m, "v.mp4", spec)
    assert points == prompt_rows(m, "v.mp4", spec)                      # seeded
    assert points != prompt_rows(m, "v.mp4", PromptSpec(kind="points", num_points=3, seed=8))
    for r in points:
        mask = decode_rle(MANUAL["masklet"][r["frame_idx"] // 4][r["obj_id"]])
        assert r["point_labels"] == [1, 1, 1] and len({tuple(p) for p in r["points"]}) == 3
        for x, y in r["points"]:
            assert x % 1 == 0.5 and mask[int(y), int(x)]


def test_png_folders_give_frame_indices_from_file_names(tmp_path: Path) -> None:
    lab = np.zeros((20, 30), dtype=np.uint8)
    for f in (8, 12):
        write_png(tmp_path / "davis_vid" / f"{f:05d}.png", lab)
    lab2 = lab.copy()
    lab2[3:7, 4:10] = 2
    write_png(tmp_path / "davis_vid" / "00016.png", lab2)
    write_png(tmp_path / "davis_vid" / "00020.png", lab2)
    rows = prompt_rows(read_png_video(str(tmp_path / "davis_vid")), "d.mp4", PromptSpec(kind="box"))
    assert [(r["obj_id"], r["frame_idx"], r["box"]) for r in rows] == [(2, 16, [4.0, 3.0, 10.0, 7.0])]
    rows = prompt_rows(read_png_video(str(tmp_path / "davis_vid")), "d.mp4", PromptSpec(frames="all"))
    assert [r["frame_idx"] for r in rows] == [16, 20]
    assert (decode_rle(rows[0]["mask"]) == (lab2 == 2)).all()


def test_table_has_the_contract_types_and_loads(tmp_path: Path) -> None:
    m = read_sav_json(str(SAV_EXAMPLE / "sav_000001_manual.json"))
    rows = (prompt_rows(m, "sav_000001.mp4", PromptSpec(kind="mask"))
            + [r for r in prompt_rows(m, "sav_000001.mp4", PromptSpec(kind="points", num_points=2, frames="all"))
               if r["frame_idx"] == 8])
    table = manifest_table(rows)
    types = {f.name: f.type for f in table.schema}
    assert types["obj_id"] == pa.int64() and types["frame_idx"] == pa.int64()
    assert pa.types.is_list(types["points"]) and pa.types.is_list(types["points"].value_type)
    assert pa.types.is_floating(types["points"].value_type.value_type)
    assert pa.types.is_integer(types["point_labels"].value_type)
    assert pa.types.is_floating(types["box"].value_type)
    assert types["mask"] == pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
    pq.write_table(table, tmp_path / "m.parquet")
    plan = load_manifest(str(tmp_path / "m.parquet"), str(tmp_path))
    (task,) = plan.tasks
    assert task.video_uri == str(tmp_path / "sav_000001.mp4") and task.num_objects == 5


def test_job_writes_manifest_and_names_bad_files(sav_dir: Path, run_job, tmp_path: Path) -> None:
    (sav_dir / "broken_manual.json").write_text(json.dumps({"hello": "world"}))
    out = tmp_path / "out" / "manifest.parquet"
    proc = run_job("make_manifest", f"annotations={sav_dir}", f"manifest={out}", "prompts.kind=points",
                   "prompts.num_points=2", "prompts.frames=all", "video_uri='JPEGImages_24fps/{video_id}'")
    assert "skipped video broken: " in proc.stdout and "broken_manual.json: not an SA-V annotation" in proc.stdout
    assert "480 rows, 1 videos, 1 skipped" in proc.stdout
    table = pq.read_table(out)
    assert table.num_rows == 480
    assert set(table["video_uri"].to_pylist()) == {"JPEGImages_24fps/sav_000001"}
    assert sorted(set(table["frame_idx"].to_pylist()))[:3] == [0, 4, 8]


def test_job_writes_prompts_for_a_strided_run_in_the_6fps_numbering(sav_dir: Path, run_job, tmp_path: Path) -> None:
    """A folder holding only SA-V's annotated frames (annotation_step=1: numbered 0, 1, 2, …) tracked every 2nd frame
    (prompts.frame_step=2): object 3 first shows on annotated frame 113, so it is prompted on 114."""
    out = tmp_path / "folder.parquet"
    run_job("make_manifest", f"annotations={sav_dir}", f"manifest={out}", "annotation_step=1", "prompts.frame_step=2",
            "video_uri='JPEGImages_6fps/{video_id}'")
    rows = pq.read_table(out).to_pylist()
    assert [(r["obj_id"], r["frame_idx"]) for r in rows] == [(0, 0), (1, 0), (2, 0), (4, 0), (3, 114)]
    assert rows[-1]["mask"] == MANUAL["masklet"][114][3] and rows[0]["video_uri"] == "JPEGImages_6fps/sav_000001"


def test_job_reads_and_writes_s3(sav_dir: Path, run_job, s3_server: dict) -> None:
    import s3fs

    bucket = s3_server["make_bucket"]("manifest")
    fs = s3fs.S3FileSystem(**s3_server["storage_options"])
    fs.put(str(sav_dir / "sav_000001_manual.json"), f"{bucket}/ann/sav_000001_manual.json")
    run_job("make_manifest", f"annotations=s3://{bucket}/ann", f"manifest=s3://{bucket}/m/manifest.parquet",
            env=s3_server["env"])
    with fs.open(f"{bucket}/m/manifest.parquet", "rb") as f:
        table = pq.read_table(f)
    assert table["obj_id"].to_pylist() == [0, 1, 2, 4, 3]


@pytest.mark.parametrize("bad", [{"frames": "some"}, {"kind": "scribble"}, {"num_points": 0}])
def test_bad_prompt_spec(bad: dict) -> None:
    with pytest.raises(ValueError):
        PromptSpec(**bad)
