"""``python -m jobs.segment_images`` end to end on the shared Ray cluster: COCO out (pycocotools loads it), the masks
sam2core's image predictor gives, images of any mode upright, resume per task, failures named, refusals, S3 and
shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from pipeline.actor.image_loading import decode_image
from pipeline.io.rle import decode_rle, encode_rle, rle_areas
from pipeline.io.storage import read_bytes, write_bytes
from pipeline.plan.image_manifest import IMAGE_MANIFEST_SCHEMA
from pipeline.plan.image_tasks import ImageObject
from sam2core.build import build_model
from sam2core.image_predictor import decode_objects, encode_images, prepare_image, upsample

REPO = Path(__file__).resolve().parents[3]
MODEL, SIZE = "sam2.1_hiera_tiny", 128


def _pixels(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (4, 5, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))


def _dataset(root: Path) -> list[dict]:
    """Five images (RGB JPEG with an EXIF rotation, grayscale, RGBA, palette, plain RGB) and their prompts."""
    root.mkdir(parents=True, exist_ok=True)
    rotated = Image.fromarray(_pixels(0, 60, 90))
    exif = rotated.getexif()
    exif[0x0112] = 8
    rotated.save(root / "a.jpg", exif=exif.tobytes(), quality=95)  # viewed upright: 90 x 60 (HxW)
    Image.fromarray(_pixels(1, 70, 50)).convert("L").save(root / "b.png")
    Image.fromarray(_pixels(2, 64, 64)).convert("RGBA").save(root / "c.png")
    Image.fromarray(_pixels(3, 48, 80)).convert("P").save(root / "d.png")
    Image.fromarray(_pixels(4, 100, 75)).save(root / "e.png")
    mask = np.zeros((48, 80), dtype=bool)
    mask[10:30, 20:60] = True
    box = lambda x0, y0, x1, y1: {"box": [float(x0), float(y0), float(x1), float(y1)]}  # noqa: E731
    rows = [("a", "a.jpg", 0, box(5, 5, 40, 60), 3), ("a", "a.jpg", 1, {"points": [[20.0, 30.0]],
                                                                        "point_labels": [1]}, 3),
            ("b", "b.png", 0, box(0, 0, 30, 40), 1), ("b", "b.png", 5, {"points": [[10.0, 10.0], [30.0, 50.0]],
                                                                         "point_labels": [1, 0]}, None),
            ("c", "c.png", 0, {**box(10, 10, 50, 50), "points": [[30.0, 30.0]], "point_labels": [0]}, 2),
            ("d", "d.png", 0, {"mask": encode_rle(mask), "points": [[40.0, 20.0]], "point_labels": [1]}, 2),
            ("e", "e.png", 0, box(0, 0, 74, 99), 1), ("e", "e.png", 1, box(20, 30, 50, 80), 1)]
    return [{"image_id": i, "image_uri": u, "obj_id": o, "category_id": c, **p} for i, u, o, p, c in rows]


def _write_manifest(rows: list[dict], uri: str, so: dict | None = None) -> str:
    table = pa.Table.from_pylist(rows, schema=IMAGE_MANIFEST_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(uri, sink.getvalue().to_pybytes(), so)
    return uri


def _run(tmp_path: Path, address: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    args = [f"model={MODEL}", "model.checkpoint=random", f"model.image_size={SIZE}", "model.device=cpu",
            "model.dtype=float32", f"cluster.address={address}", "cluster.num_workers=1", "log_every_s=2",
            "images.per_task=2", "images.batch=2", *overrides, f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run([sys.executable, "-m", "jobs.segment_images", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    proc.log = proc.stdout + proc.stderr  # the job's log lines, wherever Hydra's logging sent them
    return proc


def _expected(root: Path, rows: list[dict]) -> dict[tuple[str, int], tuple[np.ndarray, float]]:
    """Each object's mask and predicted IoU from sam2core.image_predictor, one image at a time."""
    torch.manual_seed(0)
    model = build_model(MODEL, None, image_size=SIZE)
    out = {}
    for image_id in sorted({r["image_id"] for r in rows}):
        objs = sorted((r for r in rows if r["image_id"] == image_id), key=lambda r: r["obj_id"])
        pixels = decode_image((root / objs[0]["image_uri"]).read_bytes(), image_id)
        prompts = [ImageObject(r["obj_id"], r.get("points"), r.get("point_labels"), r.get("box"), r.get("mask"),
                               r["category_id"]).prompt() for r in objs]
        with torch.inference_mode():
            feats = encode_images(model, prepare_image(torch.from_numpy(pixels), SIZE)[None])
            found = decode_objects(model, feats, pixels.shape[:2], prompts)
            masks = upsample(found.logits, pixels.shape[:2]) > 0
        for r, m, s in zip(objs, masks, found.iou.tolist()):
            out[(image_id, r["obj_id"])] = (m.numpy(), s)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_local_job_coco_out_resume_and_failures(tmp_path, ray_cluster):
    root, out = tmp_path / "images", tmp_path / "out"
    rows = _dataset(root)
    manifest = _write_manifest(rows, str(tmp_path / "images.parquet"))
    base = [f"data.manifest={manifest}", f"data.root={root}", f"output.uri={out}"]

    proc = _run(tmp_path, ray_cluster.address, *base)
    assert proc.returncode == 0, proc.log[-3000:]
    doc = json.loads((out / "annotations.json").read_text())
    sizes = {img["id"]: (img["height"], img["width"]) for img in doc["images"]}
    assert sizes == {"a": (90, 60), "b": (70, 50), "c": (64, 64), "d": (48, 80), "e": (100, 75)}  # a: upright
    assert {img["file_name"] for img in doc["images"]} == {"a.jpg", "b.png", "c.png", "d.png", "e.png"}
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getAnnIds()) == len(rows) and {c["id"] for c in doc["categories"]} == {1, 2, 3}
    expected = _expected(root, rows)
    for ann in doc["annotations"]:
        mask, score = expected[(ann["image_id"], ann["obj_id"])]
        got = decode_rle(ann["segmentation"])
        assert _iou(got, mask) >= 0.99 and abs(ann["score"] - score) <= 1e-3, ann["image_id"]
        assert ann["area"] == int(rle_areas([ann["segmentation"]])[0]) == int(got.sum())
        if got.any():
            ys, xs = np.nonzero(got)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert 0.0 <= ann["stability_score"] <= 1.0
    assert any(decode_rle(a["segmentation"]).any() for a in doc["annotations"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["tasks"] == 3 and summary["random_weights"]

    # a re-run does nothing; a changed prompt recomputes its task only
    parts = sorted((out / "_state" / "parts").iterdir())
    stamps = {p.name: p.stat().st_mtime_ns for p in parts}
    proc = _run(tmp_path, ray_cluster.address, *base)
    assert proc.returncode == 0 and "nothing to do" in proc.log
    assert {p.name: p.stat().st_mtime_ns for p in parts} == stamps
    # the prefix is claimed: other weights are refused in one line, before any work
    assert "claim" in json.loads((out / "_state" / "provenance.json").read_text())
    proc = _run(tmp_path, ray_cluster.address, *base, "model.seed=1")
    assert proc.returncode == 2 and "random_seed 0 there, 1 now" in proc.log and "Traceback" not in proc.log
    assert {p.name: p.stat().st_mtime_ns for p in parts} == stamps
    rows[-1]["box"] = [25.0, 30.0, 50.0, 80.0]  # image e: the third task
    _write_manifest(rows, manifest)
    proc = _run(tmp_path, ray_cluster.address, *base)
    assert proc.returncode == 0, proc.log[-3000:]
    assert "images-000002 changed since it was done" in proc.log
    now = {p.name: p.stat().st_mtime_ns for p in parts}
    assert [n for n in stamps if now[n] != stamps[n]] == ["images-000002.json"]

    # a corrupt image and a missing one fail alone and are named; the others are written
    (root / "b.png").write_bytes(b"not a png")
    (root / "c.png").unlink()
    out = tmp_path / "out2"
    proc = _run(tmp_path, ray_cluster.address, *base[:2], f"output.uri={out}")
    assert proc.returncode == 1
    assert "b.png: not a readable image" in proc.log and "c.png: not found" in proc.log
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["failed_images"]) == {"b", "c"} and not (out / "_SUCCESS").exists()
    assert {img["id"] for img in json.loads((out / "annotations.json").read_text())["images"]} == {"a", "d", "e"}


def test_refusals_are_one_line_and_write_nothing(tmp_path, ray_cluster):
    root, out = tmp_path / "images", tmp_path / "out"
    rows = _dataset(root)
    rows[2]["box"] = [30.0, 0.0, 0.0, 40.0]
    rows[4]["obj_id"] = -1
    manifest = _write_manifest(rows, str(tmp_path / "images.parquet"))
    proc = _run(tmp_path, ray_cluster.address, f"data.manifest={manifest}", f"data.root={root}",
                f"output.uri={out}")
    assert proc.returncode == 2 and "row 2, column 'box'" in proc.log and "row 4, column 'obj_id'" in proc.log
    assert not out.exists()
    proc = _run(tmp_path, ray_cluster.address, f"data.manifest={manifest}", f"output.uri={out}",
                "prompts=manifest+auto")
    assert proc.returncode == 2 and "images take prompts=manifest or prompts=auto" in proc.log
    proc = _run(tmp_path, ray_cluster.address, f"output.uri={out}", "images.batch=0")
    assert proc.returncode == 2 and "images.batch=0" in proc.log
    proc = _run(tmp_path, ray_cluster.address, f"output.uri={out}", "data.on_invalid=drop_video")
    assert proc.returncode == 2 and "data.on_invalid=drop_video: the image job refuses" in proc.log
    assert not out.exists()


def test_s3_sharded_job_with_credentials(tmp_path, ray_cluster, s3_server, s3_bucket):
    so = s3_server["storage_options"]
    local = tmp_path / "images"
    rows = _dataset(local)
    for f in local.iterdir():
        write_bytes(f"s3://{s3_bucket}/images/{f.name}", f.read_bytes(), so)
    manifest = _write_manifest(rows, f"s3://{s3_bucket}/images.parquet", so)
    options = (f"{{key:{so['key']},secret:{so['secret']},client_kwargs:{{endpoint_url:"
               f"'{s3_server['endpoint_url']}',region_name:{s3_server['region']}}}}}")
    out = f"s3://{s3_bucket}/out"
    written = []
    for shard in (0, 1):
        proc = _run(tmp_path, ray_cluster.address, f"data.manifest={manifest}", f"data.root=s3://{s3_bucket}/images",
                    f"output.uri={out}", f"data.storage_options={options}", f"output.storage_options={options}",
                    "sharding.num_shards=2", f"sharding.shard_id={shard}", "images.per_task=1")
        assert proc.returncode == 0, proc.log[-3000:]
        assert so["secret"] not in proc.log + proc.stdout
        doc = json.loads(read_bytes(f"{out}/annotations-{shard}-of-2.json", so))
        written += [img["id"] for img in doc["images"]]
        assert so["secret"].encode() not in read_bytes(f"{out}/config-{shard}-of-2.yaml", so)
    assert sorted(written) == ["a", "b", "c", "d", "e"]


def test_auto_prompts_write_the_generators_masks(tmp_path, ray_cluster):
    """prompts=auto: a manifest of images only; each image gets what AutomaticMaskGenerator finds on it."""
    from sam2core.automatic import AutomaticMaskGenerator

    root, out = tmp_path / "images", tmp_path / "out"
    rows = _dataset(root)
    images = sorted({(r["image_id"], r["image_uri"]) for r in rows})
    manifest = tmp_path / "images.parquet"
    pq.write_table(pa.table({"image_id": [i for i, _ in images], "image_uri": [u for _, u in images]}), manifest)
    options = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    proc = _run(tmp_path, ray_cluster.address, "prompts=auto", f"data.manifest={manifest}", f"data.root={root}",
                f"output.uri={out}", *[f"auto.generator.{k}={v}" for k, v in options.items()])
    assert proc.returncode == 0, proc.log[-3000:]
    doc = json.loads((out / "annotations.json").read_text())
    torch.manual_seed(0)
    generator = AutomaticMaskGenerator(build_model(MODEL, None, image_size=SIZE), **options)
    for image_id, uri in images:
        found = generator.generate_masks(decode_image((root / uri).read_bytes(), uri))
        anns = sorted((a for a in doc["annotations"] if a["image_id"] == image_id), key=lambda a: a["obj_id"])
        assert len(anns) == len(found) > 0
        for ann, mask, iou, stability in zip(anns, found.masks, found.predicted_iou, found.stability_score):
            assert _iou(decode_rle(ann["segmentation"]), mask.numpy()) >= 0.99
            assert abs(ann["score"] - float(iou)) <= 1e-3 and abs(ann["stability_score"] - float(stability)) <= 1e-3


@pytest.mark.slow  # ~14 s; the video job's ctrl-c test runs the edge both jobs share (pipeline/driver/edges.py)
def test_ctrl_c_exits_130_in_one_line_and_a_rerun_finishes(tmp_path, ray_cluster, start_job):
    """An image whose reader blocks (a FIFO no one writes) keeps its task in flight; Ctrl-C once the worker is up
    stops the job with exit 130 and one line, and a re-run with the image in place finishes."""
    import signal
    import time

    root, out = tmp_path / "images", tmp_path / "out"
    rows = [r for r in _dataset(root) if r["image_id"] in ("b", "e")]
    blocked = root / "e.png"
    pixels = blocked.read_bytes()
    blocked.unlink()
    os.mkfifo(blocked)
    manifest = _write_manifest(rows, str(tmp_path / "images.parquet"))
    args = [f"data.manifest={manifest}", f"data.root={root}", f"output.uri={out}"]
    job = start_job("segment_images", [f"model={MODEL}", "model.checkpoint=random", f"model.image_size={SIZE}",
                                       "model.device=cpu", f"cluster.address={ray_cluster.address}",
                                       "cluster.num_workers=1", *args, f"hydra.run.dir={tmp_path / 'hydra'}"])
    # the worker is up: its task is sent, and its reader waits on the FIFO (wait for that state, not for a time)
    while "worker up" not in job.log.read_text() and job.poll() is None:
        time.sleep(0.05)
    assert job.poll() is None, job.log.read_text()
    job.send_signal(signal.SIGINT)  # Ctrl-C, to the job's own process
    job.wait(timeout=600)  # a net against a hang only: the job ends in seconds
    text = job.log.read_text()
    assert job.returncode == 130, text
    assert "interrupted; re-run the same command" in text and "Traceback" not in text
    assert not (out / "annotations.json").exists()
    blocked.unlink()
    blocked.write_bytes(pixels)
    proc = _run(tmp_path, ray_cluster.address, *args)
    assert proc.returncode == 0, proc.log[-3000:]
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 2


def test_a_task_with_failed_images_is_retried_by_a_rerun(tmp_path, ray_cluster):
    """An image missing on the first run fails alone; its task is not marked done, so a re-run with the image in
    place recomputes that task (and only it) and finishes with exit 0."""
    root, out = tmp_path / "images", tmp_path / "out"
    rows = _dataset(root)
    late = (root / "d.png").read_bytes()
    (root / "d.png").unlink()
    manifest = _write_manifest(rows, str(tmp_path / "images.parquet"))
    base = [f"data.manifest={manifest}", f"data.root={root}", f"output.uri={out}"]
    proc = _run(tmp_path, ray_cluster.address, *base)
    assert proc.returncode == 1 and "d.png: not found" in proc.log
    assert sorted(p.name for p in (out / "_state" / "done").iterdir()) == ["images-000000.json",
                                                                           "images-000002.json"]
    (root / "d.png").write_bytes(late)
    proc = _run(tmp_path, ray_cluster.address, *base)
    assert proc.returncode == 0, proc.log[-3000:]
    assert "3 tasks (5 images) in shard 0/1: 2 already done, 1 to run" in proc.log
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 5
