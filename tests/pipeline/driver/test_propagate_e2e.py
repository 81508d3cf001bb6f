"""End to end through `python -m jobs.propagate`: S3 manifest + S3 videos -> S3 masklets, resume, no-op re-run."""

from __future__ import annotations

import boto3
import numpy as np
import pytest

from pipeline.plan.tasks import shard_of
from pipeline.io.masklets import read_masklets
from pipeline.io.storage import read_bytes, write_bytes
from tests.helpers import make_frame_folder, make_video, synthetic_frames
from tests.pipeline.driver.propagate_support import decoded, direct_masks, job_overrides, prompts_for, write_manifest

# ids chosen so that a 2-way sharding puts videos in both shards (checked below)
VIDEOS = {"clip-a": ("mp4", "points"), "clip-e": ("frames", "box"), "clip-c": ("mp4", "mask")}


@pytest.fixture
def s3_dataset(s3_server: dict, s3_bucket: str, tmp_path) -> dict:
    """Three 12-frame videos (two mp4, one JPEG folder) and their manifest in a fresh bucket."""
    so = s3_server["storage_options"]
    rows, frames_of = [], {}
    for i, (video_id, (kind, prompt)) in enumerate(VIDEOS.items()):
        frames = synthetic_frames(12, 64, 96, seed=i)
        frames_of[video_id] = frames
        if kind == "mp4":
            local = make_video(tmp_path / f"{video_id}.mp4", frames)
            rel = f"videos/{video_id}.mp4"
            write_bytes(f"s3://{s3_bucket}/{rel}", local.read_bytes(), so)
        else:
            folder = make_frame_folder(tmp_path / video_id, frames)
            rel = f"videos/{video_id}"
            for f in sorted(folder.iterdir()):
                write_bytes(f"s3://{s3_bucket}/{rel}/{f.name}", f.read_bytes(), so)
        rows += prompts_for(video_id, rel, frames, prompt)
    manifest = write_manifest(rows, f"s3://{s3_bucket}/manifest.parquet", so)
    return {"bucket": s3_bucket, "manifest": manifest, "root": f"s3://{s3_bucket}", "rows": rows,
            "output": f"s3://{s3_bucket}/out"}


def _listing(s3_server: dict, bucket: str, prefix: str) -> dict[str, tuple]:
    """key -> (LastModified, ETag) of every object under prefix (to prove a run wrote nothing)."""
    client = boto3.client("s3", endpoint_url=s3_server["endpoint_url"], aws_access_key_id=s3_server["key"],
                          aws_secret_access_key=s3_server["secret"], region_name=s3_server["region"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: (o["LastModified"], o["ETag"]) for page in pages for o in page.get("Contents", [])}


@pytest.mark.slow  # ~30 s; S3 jobs run end to end in the default suite in the credentials, outage, prefix-claim and image tests
def test_s3_end_to_end_resume_and_noop(s3_server, s3_dataset, ray_cluster, run_job):
    so = s3_server["storage_options"]
    bucket, out = s3_dataset["bucket"], s3_dataset["output"]
    so_override = (f"{{key:{so['key']},secret:{so['secret']},client_kwargs:{{endpoint_url:"
                   f"'{s3_server['endpoint_url']}',region_name:{s3_server['region']}}}}}")
    args = job_overrides(s3_dataset["manifest"], s3_dataset["root"], out, ray_cluster.address,
                         **{"data.storage_options": so_override, "output.storage_options": so_override})
    first_shard = {v for v in VIDEOS if shard_of(v, 2) == 0}
    assert 0 < len(first_shard) < len(VIDEOS)

    # run 1: only shard 0 of 2 (a job stopped half-way)
    proc = run_job(args + ["sharding.num_shards=2", "sharding.shard_id=0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    after_first = _listing(s3_server, bucket, "out/")
    assert {k.split("/")[-1] for k in after_first if k.startswith("out/_state/done/")} == {
        f"{v}.json" for v in first_shard}

    # run 2: the whole manifest; only the missing videos are processed
    proc = run_job(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after_full = _listing(s3_server, bucket, "out/")
    for v in first_shard:
        for key in (f"out/masklets/{v}.json", f"out/_state/done/{v}.json"):
            assert after_full[key] == after_first[key], f"{key} was rewritten"
    assert {f"out/masklets/{v}.json" for v in VIDEOS} <= set(after_full)
    assert "out/_SUCCESS" in after_full and "out/summary.json" in after_full
    recorded = [read_bytes(f"s3://{bucket}/{k}", so) for k in ("out/config.yaml", "out/masklets/clip-a.json")]
    assert not any(so["secret"].encode() in blob for blob in recorded), "credentials leaked into the output"

    # run 3: nothing left to do, nothing written
    proc = run_job(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _listing(s3_server, bucket, "out/") == after_full

    # the masklets decode to what sam2core gives when used directly
    for video_id, (kind, _) in VIDEOS.items():
        m = read_masklets(f"{out}/masklets/{video_id}.json", so)
        assert m.frame_count == 12 and m.obj_ids == [0, 1] and m.frame_indices == list(range(12))
        assert m.provenance["checkpoint"] == "random"
        uri = f"s3://{bucket}/videos/{video_id}" + (".mp4" if kind == "mp4" else "")
        expected = direct_masks(uri, [r for r in s3_dataset["rows"] if r["video_id"] == video_id], so)
        got = decoded(m)
        assert got.keys() == expected.keys()
        for f in expected:
            np.testing.assert_array_equal(got[f], expected[f], err_msg=f"{video_id} frame {f}")
