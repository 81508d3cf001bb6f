"""Tar shards the way SA-V ships them (``sav_000/{video_id}.mp4`` beside ``{video_id}_manual.json``): the manifest
maker lists a shard and its rows point at the members (``tar://{member}::{shard}``), which the video sources open,
locally and on a real S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest

from pipeline.dataset.manifest_maker import PromptSpec, manifest_from_shard, shard_videos
from pipeline.plan.manifest import load_manifest
from pipeline.actor.decoding import open_video
from tests.helpers import make_video, synthetic_frames
from tests.jobs.jobdata import REPO, SAV_EXAMPLE

H, W, T = 48, 64, 12


def _shard(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """sav_000.tar: sav_000001 (video + manual + auto), sav_000002 (video only), sav_000003 (annotation only)."""
    frames = synthetic_frames(T, H, W)
    make_video(tmp_path / "v.mp4", frames, fps=24)
    shard = tmp_path / "sav_000.tar"
    manual = json.loads((SAV_EXAMPLE / "sav_000001_manual.json").read_text())
    orphan = tmp_path / "sav_000003_manual.json"
    orphan.write_text(json.dumps({**manual, "video_id": "sav_000003"}))
    with tarfile.open(shard, "w") as tar:
        tar.add(tmp_path / "v.mp4", "sav_000/sav_000001.mp4")
        tar.add(SAV_EXAMPLE / "sav_000001_manual.json", "sav_000/sav_000001_manual.json")
        tar.add(SAV_EXAMPLE / "sav_000001_auto.json", "sav_000/sav_000001_auto.json")
        tar.add(tmp_path / "v.mp4", "sav_000/sav_000002.mp4")
        tar.add(orphan, "sav_000/sav_000003_manual.json")
    return shard, frames


def test_shard_listing() -> None:
    names = ["d/a.mp4", "d/a_manual.json", "d/a_auto.json", "d/b.mp4", "d/c_auto.json", "README"]
    found, skipped = shard_videos(names, ["manual", "auto"])
    assert found == {"a": ("d/a.mp4", ["d/a_manual.json", "d/a_auto.json"])}
    assert skipped == {"b": "no manual/auto annotation beside d/b.mp4",
                       "c": "annotations ['d/c_auto.json'] but no video member"}
    assert shard_videos(names, ["auto"])[0]["a"] == ("d/a.mp4", ["d/a_auto.json"])


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_member_uri_opens_like_the_file(tmp_path: Path, decoder: str) -> None:
    shard, _ = _shard(tmp_path)
    with open_video(str(tmp_path / "v.mp4"), decoder=decoder) as plain:
        want = list(plain.iter_frames([0, 5, 11]))
    for uri in (f"tar://sav_000/sav_000001.mp4::{shard}", f"tar://sav_000/sav_000001.mp4::file://{shard}"):
        with open_video(uri, decoder=decoder) as video:
            assert (video.num_frames, video.height, video.width) == (T, H, W)
            assert all((a == b).all() for a, b in zip(video.iter_frames([0, 5, 11]), want))
    with pytest.raises(Exception, match="nope.mp4"):
        open_video(f"tar://sav_000/nope.mp4::{shard}", decoder=decoder)


@pytest.mark.slow  # ~10 s; make_manifest's reading of shards is tested without the job
def test_make_manifest_job_from_a_shard(tmp_path: Path, run_job) -> None:
    shard, _ = _shard(tmp_path)
    manifest = tmp_path / "m.parquet"
    proc = run_job("make_manifest", f"shard={shard}", f"manifest={manifest}", "kinds=[manual,auto]")
    assert "1 videos, 2 skipped" in proc.stdout
    assert "skipped video sav_000002: no manual/auto annotation beside sav_000/sav_000002.mp4" in proc.stdout
    tasks = load_manifest(str(manifest)).tasks
    assert [t.video_id for t in tasks] == ["sav_000001"]
    assert tasks[0].video_uri == f"tar://sav_000/sav_000001.mp4::{shard}"
    assert {p.obj_id for p in tasks[0].prompts} >= {0, 1, 2, 3, 4}       # manual ids, auto ones shifted after
    proc = run_job("make_manifest", f"shard={tmp_path / 'none.tar'}", f"manifest={manifest}", check=False)
    assert proc.returncode == 2 and f"shard: {tmp_path / 'none.tar'}: no such tar shard" in proc.stdout
    proc = run_job("make_manifest", f"manifest={manifest}", check=False)
    assert proc.returncode == 2 and "give exactly one of annotations=URI" in proc.stdout


def test_shard_on_s3(tmp_path: Path, s3_server: dict, s3_bucket: str) -> None:
    shard, frames = _shard(tmp_path)
    so = s3_server["storage_options"]
    fsspec.filesystem("s3", skip_instance_cache=True, **so).put_file(str(shard), f"{s3_bucket}/sav_000.tar")
    remote = f"s3://{s3_bucket}/sav_000.tar"
    rows, skipped = manifest_from_shard(remote, PromptSpec(), ["manual"], 4, so)
    assert {r["video_uri"] for r in rows} == {f"tar://sav_000/sav_000001.mp4::{remote}"}
    assert sorted(skipped) == ["sav_000002", "sav_000003"]
    # the workers' way: credentials and endpoint from the AWS_* environment (a fresh process, no cached clients)
    code = (f"from pipeline.actor.decoding import open_video\n"
            f"with open_video({rows[0]['video_uri']!r}, None, 'pyav') as v:\n"
            f"    print(v.num_frames, v.height, v.width, int(next(iter(v.iter_frames([3]))).sum() > 0))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **s3_server["env"], "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(T), str(H), str(W), "1"]


def test_shard_member_on_s3_with_storage_options(tmp_path: Path, s3_server: dict, s3_bucket: str) -> None:
    shard, _ = _shard(tmp_path)
    so = s3_server["storage_options"]
    fsspec.filesystem("s3", skip_instance_cache=True, **so).put_file(str(shard), f"{s3_bucket}/sav_000.tar")
    with open_video(f"tar://sav_000/sav_000001.mp4::s3://{s3_bucket}/sav_000.tar", so, "pyav") as video:
        assert video.num_frames == T
