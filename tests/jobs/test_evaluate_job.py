"""Dataset evaluation: locating GT and predictions (JSON, masklet files, PNG folders), CSVs, the job on Ray."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset.annotations import read_sav_json
from pipeline.dataset.evaluate import evaluate_dataset, evaluate_one, read_pair
from pipeline.dataset.predictions import find_predictions
from pipeline.dataset.metrics import common_frames, evaluate_video
from pipeline.dataset.export import export_masklets
from pipeline.io.masklets import Masklets, masklets_to_bytes
from pipeline.io.rle import decode_rle, encode_rles
from tests.jobs.jobdata import SAV_EXAMPLE


def _every_frame_prediction(gt: Masklets, video_id: str, shift: int) -> Masklets:
    """All 24 fps frames: GT masks (object 1 shifted right by ``shift`` px) on GT frames, full masks elsewhere."""
    full = encode_rles(np.ones((len(gt.obj_ids), gt.height, gt.width), dtype=bool))
    gt_pos = {f: i for i, f in enumerate(gt.frame_indices)}
    rles = []
    for f in range(gt.frame_count):
        if f not in gt_pos:
            rles.append(full)
            continue
        frame = list(gt.rles[gt_pos[f]])
        frame[1] = encode_rles(np.roll(decode_rle(frame[1]), shift, axis=1)[None])[0]
        rles.append(frame)
    n = gt.frame_count
    return Masklets(video_id, n, gt.height, gt.width, list(gt.obj_ids), list(range(n)), rles,
                    [[1.0] * len(gt.obj_ids)] * n, [0] * len(gt.obj_ids), {"model": "test"})


def _copy_gt(gt_dir: Path, video_id: str) -> None:
    d = json.loads((SAV_EXAMPLE / "sav_000001_manual.json").read_text())
    d["video_id"] = video_id
    (gt_dir / f"{video_id}_manual.json").write_text(json.dumps(d))


def _frames_of(m: Masklets, video_id: str, frames: list[int]) -> Masklets:
    """The prediction cut to ``frames`` (original numbers), as a strided or clipped run writes it."""
    pos = [m.frame_indices.index(f) for f in frames]
    return Masklets(video_id, m.frame_count, m.height, m.width, list(m.obj_ids), list(frames),
                    [m.rles[p] for p in pos], [m.scores[p] for p in pos], [0] * len(m.obj_ids), m.provenance)


def test_job_scores_gt_frames_and_reports_missing_and_failed(tmp_path: Path, run_job) -> None:
    """Every frame (JSON), every 4th frame (Parquet), a clip 300, 304, … (JSON), no common frame (Parquet), none, and
    one made on a folder of the 6-fps frames (numbered 0, 1, 2, …: refused against 24 fps numbering)."""
    gt_dir, pred = tmp_path / "gt", tmp_path / "run"
    gt_dir.mkdir()
    for v in ("sav_000001", "sav_000002", "sav_000003", "sav_000004", "sav_000005", "sav_000006"):
        _copy_gt(gt_dir, v)
    gt = read_sav_json(str(gt_dir / "sav_000001_manual.json"))
    good = _every_frame_prediction(gt, "sav_000001", shift=6)
    step4 = _frames_of(good, "sav_000003", list(range(0, 483, 4)))
    clip = _frames_of(good, "sav_000004", list(range(300, 483, 4)))
    odd = _frames_of(good, "sav_000005", list(range(1, 483, 4)))
    n = len(gt.frame_indices)
    six_fps = Masklets("sav_000006", n, gt.height, gt.width, gt.obj_ids, list(range(n)), gt.rles, gt.scores,
                       gt.first_appeared)
    (pred / "masklets").mkdir(parents=True)
    for m, fmt, ext in ((good, "sav_json", "json"), (step4, "parquet", "parquet"), (clip, "sav_json", "json"),
                        (odd, "parquet", "parquet"), (six_fps, "sav_json", "json")):
        (pred / "masklets" / f"{m.video_id}.{ext}").write_bytes(masklets_to_bytes(m, fmt))

    proc = run_job("evaluate", f"pred={pred}", f"gt={gt_dir}", "strict=false", "cluster.num_cpus=1", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "FAILED sav_000005: ValueError: video sav_000005: no ground-truth frame left to score: ground truth " \
           "frames 0..480 (121 frames), prediction frames 1..481 (121 frames)" in lines
    assert "FAILED sav_000006: ValueError: video sav_000006: the ground truth has frame 480 but the prediction's " \
           "video has 121 frames: the two number frames differently (annotation_step=4; a prediction made on a " \
           "folder of the annotated frames only needs annotation_step=1) or the video is shorter than the " \
           "annotated one" in lines
    six_gt, six_pred = read_pair("sav_000006", [str(gt_dir / "sav_000006_manual.json")],
                                 str(pred / "masklets" / "sav_000006.json"), None, annotation_step=1)
    assert common_frames(six_gt, six_pred) == list(range(1, 120))          # the 6-fps numbering: every frame scored
    clipped = _frames_of(gt, "sav_000001", list(range(304, 480, 4)))   # the clip's GT frames less first and last
    expected = {"sav_000001": evaluate_video(gt, good), "sav_000004": evaluate_video(clipped, good, False)}
    expected["sav_000003"] = [replace(s, video_id="sav_000003") for s in expected["sav_000001"]]   # all GT frames
    assert {s.frames for s in expected["sav_000001"]} >= {119} and max(s.frames for s in expected["sav_000004"]) == 44
    n_objects = sum(len(v) for v in expected.values())
    assert f"{n_objects} objects in 3 videos; 2 failed, 1 without prediction" in proc.stdout
    assert "video sav_000004: scored at 44 of 119 ground-truth frames (the prediction lacks the others)" in lines
    assert "frames scored: 282 of 357 ground-truth frames; 1 videos scored at the frames their prediction has" in lines

    everything = [s for scores in expected.values() for s in scores]
    j = np.mean([s.j for s in everything])
    f = np.mean([s.f for s in everything])
    tag, jf_s, j_tag, j_s, f_tag, f_s = lines[-1].split()
    assert (tag, j_tag, f_tag) == ("J&F", "J", "F")
    assert float(j_s) == pytest.approx(j) and float(f_s) == pytest.approx(f)
    assert float(jf_s) == pytest.approx((j + f) / 2)
    assert 0 < j < 100 and 0 < f < 100
    by_obj = {s.obj_id: s for s in expected["sav_000001"]}
    assert by_obj[0].j == 100 and by_obj[1].j < 100        # full masks off the GT frames were never scored

    with open(pred / "eval_objects.csv") as fh:
        rows = list(csv.DictReader(fh))
    for v, scores in expected.items():                      # every 4th frame and the clip: scores as expected
        assert [(int(r["obj_id"]), float(r["J"]), float(r["F"]), int(r["frames"])) for r in rows
                if r["video_id"] == v] == [(s.obj_id, s.j, s.f, s.frames) for s in scores], v   # unrounded
    with open(pred / "eval_videos.csv") as fh:
        videos = {r["video_id"]: r for r in csv.DictReader(fh)}
    assert sorted(videos) == ["sav_000001", "sav_000003", "sav_000004"]
    assert float(videos["sav_000001"]["J"]) == pytest.approx(np.mean([s.j for s in expected["sav_000001"]]))
    assert [(videos[v]["frames"], videos[v]["gt_frames"]) for v in sorted(videos)] == [
        ("119", "119"), ("119", "119"), ("44", "119")]


def test_strict_names_videos_without_prediction(tmp_path: Path) -> None:
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    _copy_gt(gt_dir, "vid_a")
    _copy_gt(gt_dir, "vid_b")
    (tmp_path / "run" / "masklets").mkdir(parents=True)
    (tmp_path / "run" / "masklets" / "vid_a.json").write_text("{}")
    with pytest.raises(ValueError, match=r"no predictions for 1 ground-truth video\(s\): \['vid_b'\]"):
        evaluate_dataset(str(gt_dir), str(tmp_path / "run"), strict=True)


def _toy(video_id: str, frames: list[int], seed: int) -> Masklets:
    rng = np.random.default_rng(seed)
    rles = []
    for t in frames:
        masks = np.zeros((2, 32, 48), dtype=bool)
        masks[0, 4 + t % 5: 14 + t % 5, 5:20] = True
        masks[1, 16:28, 20 + rng.integers(0, 6): 40] = True
        rles.append(encode_rles(masks))
    return Masklets(video_id, max(frames) + 1, 32, 48, [1, 2], frames, rles, [[1.0, 1.0]] * len(frames), [0, 0])


def test_png_ground_truth_and_png_predictions(tmp_path: Path) -> None:
    gt = _toy("toy", [0, 4, 8, 12, 16], seed=0)
    pred = _toy("toy", list(range(17)), seed=1)
    export_masklets(gt, str(tmp_path / "gt"), "sav_png")
    export_masklets(pred, str(tmp_path / "pred"), "davis")
    assert find_predictions(str(tmp_path / "pred")) == {"toy": str(tmp_path / "pred" / "toy")}
    got = evaluate_one("toy", [str(tmp_path / "gt" / "toy")], str(tmp_path / "pred" / "toy"), None, True, 4)
    assert got == evaluate_video(gt, pred)
    assert [s.frames for s in got] == [3, 3]


def test_s3_ground_truth_predictions_and_png_folders(s3_server: dict) -> None:
    from pipeline.dataset.annotations import find_annotations, read_png_video
    from pipeline.io.storage import write_bytes

    so = s3_server["storage_options"]
    root = f"s3://{s3_server['make_bucket']('evaluate')}"
    gt = _toy("toy", [0, 4, 8, 12], seed=0)
    pred = _toy("toy", list(range(13)), seed=2)
    write_bytes(f"{root}/gt/toy.json", masklets_to_bytes(gt, "sav_json"), so)
    write_bytes(f"{root}/run/masklets/toy.parquet", masklets_to_bytes(pred, "parquet"), so)
    gt_uris = find_annotations(f"{root}/gt", so)
    preds = find_predictions(f"{root}/run", so)
    assert gt_uris == {"toy": [f"{root}/gt/toy.json"]} and preds == {"toy": f"{root}/run/masklets/toy.parquet"}
    assert evaluate_one("toy", gt_uris["toy"], preds["toy"], so, True, 4) == evaluate_video(gt, pred)
    export_masklets(pred, f"{root}/png", "sav_png", so)
    assert find_predictions(f"{root}/png", so) == {"toy": f"{root}/png/toy"}
    assert read_png_video(f"{root}/png/toy", so).rles == pred.rles


@pytest.mark.slow
def test_manifest_propagate_evaluate_render_export(tmp_path: Path, run_job) -> None:
    """The tools around the main job, chained on real propagation runs (random tiny model at 128 px), of every frame
    and of every 4th frame."""
    from pipeline.io.masklets import to_sav_json
    from tests.helpers import make_video, synthetic_frames

    frames = synthetic_frames(16, 64, 96)
    make_video(tmp_path / "videos" / "synth.mp4", frames)
    square = np.all(frames == (250, 250, 30), axis=-1)              # [T, H, W] the moving square
    annotated = list(range(0, 16, 4))
    gt = Masklets("synth", 16, 64, 96, [0], annotated, [encode_rles(square[t][None]) for t in annotated],
                  [[1.0]] * len(annotated), [0])
    sav = to_sav_json(gt)
    del sav["frame_indices"]                                        # official SA-V layout: every 4th frame implied
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "synth_manual.json").write_text(json.dumps(sav))

    manifest = tmp_path / "manifest.parquet"
    run_job("make_manifest", f"annotations={tmp_path / 'gt'}", f"manifest={manifest}")
    out = tmp_path / "run"
    run_job("propagate", "model=sam2.1_hiera_tiny", "model.checkpoint=random", "model.image_size=128",
            "model.device=cpu", "model.dtype=float32", f"data.manifest={manifest}", f"data.root={tmp_path / 'videos'}",
            f"output.uri={out}", "cluster.num_workers=1", "cluster.address=local")
    proc = run_job("evaluate", f"pred={out}", f"gt={tmp_path / 'gt'}", "cluster.num_cpus=1")
    assert proc.stdout.strip().splitlines()[-1].startswith("J&F ")
    run_job("render", f"prefix={out}", f"manifest={manifest}", f"data_root={tmp_path / 'videos'}")
    assert len(_decode_frames(out / "render" / "synth.mp4")) == 16
    run_job("render", f"prefix={out}", f"out={tmp_path / 'again'}")       # the prefix alone: the job's config
    assert len(_decode_frames(tmp_path / "again" / "synth.mp4")) == 16
    run_job("export", f"prefix={out}", "format=davis")                     # object id 0: renumbered, mapped
    assert json.loads((out / "export_davis" / "synth" / "object_ids.json").read_text()) == {
        "palette_index": {"1": 0}}
    run_job("export", f"prefix={out}", "format=sav_png")
    assert len(list((out / "export_sav_png" / "synth" / "000").glob("*.png"))) == 16

    strided = tmp_path / "run6fps"                                  # the same at SA-V's rate: every 4th frame
    run_job("propagate", "model=sam2.1_hiera_tiny", "model.checkpoint=random", "model.image_size=128",
            "model.device=cpu", "model.dtype=float32", f"data.manifest={manifest}", f"data.root={tmp_path / 'videos'}",
            "data.frame_step=4", f"output.uri={strided}", "cluster.num_workers=1", "cluster.address=local")
    proc = run_job("evaluate", f"pred={strided}", f"gt={tmp_path / 'gt'}", "cluster.num_cpus=1")
    assert "frames scored: 2 of 2 ground-truth frames; 0 videos scored" in proc.stdout
    run_job("render", f"prefix={strided}")
    assert len(_decode_frames(strided / "render" / "synth.mp4")) == 4
    run_job("export", f"prefix={strided}", "format=sav_png")
    assert sorted(p.name for p in (strided / "export_sav_png" / "synth" / "000").glob("*.png")) == [
        "00000.png", "00004.png", "00008.png", "00012.png"]


def _decode_frames(path: Path) -> list:
    import av

    with av.open(str(path)) as container:
        return list(container.decode(video=0))
