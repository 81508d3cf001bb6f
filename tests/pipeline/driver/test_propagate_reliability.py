"""Storage outages, stale resume records, prompt geometry, refusals and full disks, on real parts: a SeaweedFS
server stopped and restarted by the test, a size-limited tmpfs, real Ray workers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.driver.job import EXIT_REFUSED, EXIT_FAILED, EXIT_OK, run
from pipeline.plan.manifest import MANIFEST_SCHEMA
from pipeline.io.storage import list_names
from testkit.seaweedfs import local_s3
from tests.helpers import make_video, synthetic_frames
from tests.pipeline.driver.propagate_support import job_spec, point_videos, prompt_row, write_manifest

FAULTS = "tests.pipeline.driver.fault_workers.FaultWorker"


def _run_with_outage(spec, tmp_path: Path, s3, restart_after_s: float | None) -> int:
    """Run the job; when the first video is under way (its worker waits for us), stop the S3 server, let the worker
    go on, and restart the server after ``restart_after_s`` (None: leave it down)."""
    status: list[int] = []
    job = threading.Thread(target=lambda: status.append(run(spec)))
    job.start()
    while not (tmp_path / "busy.v0").exists() and job.is_alive():  # that state, or the job's end: not a time
        time.sleep(0.05)
    assert (tmp_path / "busy.v0").exists(), f"the first video never started (job status {status})"
    s3.stop()
    (tmp_path / "go").write_text("")
    if restart_after_s is not None:
        time.sleep(restart_after_s)
        s3.restart()
    job.join(timeout=600)  # a net against a hang only: the job takes seconds
    return status[0]


def test_a_storage_outage_shorter_than_the_retry_window_loses_nothing(tmp_path, ray_cluster):
    manifest, _ = point_videos(tmp_path)
    (tmp_path / "faults.json").write_text(json.dumps({"v0": ["wait"]}))
    with local_s3() as s3:
        out = f"s3://{s3.make_bucket('outage')}/run"
        spec = job_spec(manifest, str(tmp_path), out, ray_cluster.address, worker_class=FAULTS,
                        output_options={"retry_s": 600, "storage_options": s3.storage_options})  # > any outage
        assert _run_with_outage(spec, tmp_path, s3, restart_after_s=5) == EXIT_OK
        assert list_names(f"{out}/_state/done", s3.storage_options) == {"v0.json", "v1.json", "v2.json"}


@pytest.mark.slow  # ~70 s: the outage test above covers the retry path; this one the give-up path
def test_storage_down_for_good_ends_the_job_cleanly_and_a_rerun_completes_it(tmp_path, ray_cluster):
    manifest, _ = point_videos(tmp_path)
    (tmp_path / "faults.json").write_text(json.dumps({"v0": ["wait"]}))
    fallback = tmp_path / "fallback"
    with local_s3() as s3:
        out = f"s3://{s3.make_bucket('down')}/run"
        once = {**s3.storage_options, "config_kwargs": {"retries": {"max_attempts": 1}}}  # no botocore retries
        spec = job_spec(manifest, str(tmp_path), out, ray_cluster.address, worker_class=FAULTS,
                        output_options={"retry_s": 2, "storage_options": once, "fallback_dir": str(fallback)},
                        max_attempts=2, retry_backoff_s=0.1)
        assert _run_with_outage(spec, tmp_path, s3, restart_after_s=None) == EXIT_FAILED
        (summary_file,) = fallback.glob("*/summary.json")
        summary = json.loads(summary_file.read_text())
        assert summary["status"] == "failed" and summary["unwritten_prefix"] == out
        assert sorted(summary["failures"]) == ["v0", "v1", "v2"]  # every unfinished video accounted for
        assert sorted(summary["unrecorded_failures"]) == ["v0", "v1", "v2"]
        s3.restart()
        assert run(spec) == EXIT_OK
        assert list_names(f"{out}/_state/done", s3.storage_options) == {"v0.json", "v1.json", "v2.json"}


def test_resume_recomputes_changed_and_unreadable_videos_and_refuses_other_options(tmp_path, ray_cluster, caplog):
    manifest, rows = point_videos(tmp_path, n=2)
    out = tmp_path / "out"
    spec = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address)
    assert run(spec) == EXIT_OK
    done = out / "_state" / "done"
    first = {p.name: json.loads(p.read_text()) for p in done.iterdir()}

    rows[3]["points"] = [[10.0, 10.0]]  # v1's second object is clicked elsewhere now
    write_manifest(rows, manifest)
    (done / "v0.json").write_text('{"video_id": "v0", "sta')  # a truncated marker
    with caplog.at_level(logging.WARNING):
        assert run(spec) == EXIT_OK
    assert "video v1 changed since it was done" in caplog.text
    assert "video v0: its done marker does not parse" in caplog.text
    again = {p.name: json.loads(p.read_text()) for p in done.iterdir()}
    assert again["v1.json"]["digest"] != first["v1.json"]["digest"]
    assert again["v0.json"]["digest"] == first["v0.json"]["digest"]

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run(spec) == EXIT_OK
    assert "nothing to do" in caplog.text

    other = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address, session={"fill_hole_area": 8})
    with caplog.at_level(logging.ERROR):
        assert run(other) == EXIT_REFUSED
    assert "session" in caplog.text and "overwrite" in caplog.text


def test_a_rerun_reads_the_done_markers_of_the_previous_release(tmp_path, ray_cluster, caplog):
    """Resume across the upgrade: done markers in the format the previous release wrote (the whole worker record:
    status, error, retryable, identity, seconds, digest, plus masklets and time) count as done with their digest."""
    manifest, _ = point_videos(tmp_path, n=2, frames=4)
    out = tmp_path / "out"
    spec = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address)
    assert run(spec) == EXIT_OK
    for path in (out / "_state" / "done").iterdir():
        new = json.loads(path.read_text())
        old = {k: new[k] for k in ("video_id", "status", "frames", "objects", "node_id", "pid", "device", "dtype",
                                   "seconds", "digest", "masklets", "time")}
        path.write_text(json.dumps({**old, "error": None, "retryable": False}, separators=(",", ":"), sort_keys=True))
    (out / "_SUCCESS").unlink()  # so that the re-run plans instead of stopping at "nothing to do"
    record = out / "_state" / "provenance.json"  # the previous release's record: no format, decoder or claim
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items()
                                  if k not in ("format", "decoder", "claim")}))
    masklets = {p.name: p.read_bytes() for p in (out / "masklets").iterdir()}
    with caplog.at_level(logging.INFO):
        assert run(spec) == EXIT_OK
    assert "2 already done, 0 to run" in caplog.text and "changed since" not in caplog.text
    assert {p.name: p.read_bytes() for p in (out / "masklets").iterdir()} == masklets


def test_prompt_geometry_is_checked_against_the_video(tmp_path, ray_cluster):
    frames = synthetic_frames(6, 64, 96, seed=3)
    make_video(tmp_path / "videos" / "v.mp4", frames)
    rows = [
        prompt_row("small_mask", "videos/v.mp4", 0, 0, mask=np.ones((32, 48), bool)),
        prompt_row("far_point", "videos/v.mp4", 0, 0, points=[[120.0, 10.0]], labels=[1]),
        prompt_row("wide_box", "videos/v.mp4", 0, 0, box=[-20.0, 5.0, 60.0, 300.0]),
        prompt_row("off_box", "videos/v.mp4", 0, 0, box=[100.0, 70.0, 140.0, 90.0]),
        prompt_row("flat_box", "videos/v.mp4", 0, 0, box=[10.0, 10.0, 10.0, 40.0]),
    ]
    manifest = write_manifest(rows, str(tmp_path / "manifest.parquet"))
    out = tmp_path / "out"
    assert run(job_spec(manifest, str(tmp_path), str(out), ray_cluster.address)) == EXIT_FAILED
    failures = json.loads((out / "summary.json").read_text())["failures"]
    assert sorted(failures) == ["far_point", "flat_box", "off_box", "small_mask"]
    assert "manifest row 0" in failures["small_mask"] and "mask is 32x48 (HxW) but the video is 64x96" in \
        failures["small_mask"]
    assert "manifest row 1" in failures["far_point"] and "(120, 10) is outside the 96x64 frame" in failures["far_point"]
    assert "manifest row 3" in failures["off_box"] and "lies outside" in failures["off_box"]
    assert "manifest row 4" in failures["flat_box"] and "has zero area" in failures["flat_box"]
    assert (out / "_state" / "done" / "wide_box.json").exists()  # clipped to the frame


def _write_raw_manifest(path: Path, rows: list[dict]) -> str:
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), path)
    return str(path)


@pytest.mark.parametrize("case", ["not_parquet", "empty", "missing"])
def test_unreadable_manifests_are_refused_in_one_line(tmp_path, run_job, ray_cluster, case):
    manifest = tmp_path / "m.parquet"
    if case == "not_parquet":
        manifest.write_text("video_id,video_uri\n")
    elif case == "empty":
        _write_raw_manifest(manifest, [])
    proc = run_job([f"data.manifest={manifest}", f"data.root={tmp_path}", f"output.uri={tmp_path / 'out'}",
                    "model.checkpoint=random", "model.image_size=128", f"cluster.address={ray_cluster.address}"])
    text = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_REFUSED, text
    assert "Traceback" not in text
    expected = {"not_parquet": "is not a Parquet file", "empty": "it has no rows", "missing": "not found"}[case]
    assert expected in text and str(manifest) in text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["unreachable", "credentials"])
def test_unusable_output_storage_is_refused_before_any_work(tmp_path, run_job, s3_server, s3_bucket, case):
    manifest, _ = point_videos(tmp_path, n=1)
    endpoint = "http://127.0.0.1:9" if case == "unreachable" else s3_server["endpoint_url"]
    secret = "wrong-secret" if case == "credentials" else s3_server["secret"]
    options = (f"output.storage_options={{key: {s3_server['key']}, secret: {secret}, "
               f"client_kwargs: {{endpoint_url: '{endpoint}', region_name: us-east-1}}}}")
    proc = run_job([f"data.manifest={manifest}", f"data.root={tmp_path}", f"output.uri=s3://{s3_bucket}/out",
                    options, "output.retry_s=1", "model.checkpoint=random", "model.image_size=128"])
    text = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_REFUSED, text
    assert "Traceback" not in text and f"output prefix s3://{s3_bucket}/out is not usable" in text
    assert secret not in text


def test_credentials_never_reach_the_files_the_job_writes(tmp_path, s3_server, s3_bucket):
    """A sweep with credentials on the command line: neither Hydra's files, the job's outputs nor its logs hold
    them (the config the job records has them redacted)."""
    manifest, _ = point_videos(tmp_path, n=2, frames=4)
    out = f"s3://{s3_bucket}/swept"
    options = (f"{{key: {s3_server['key']}, secret: {s3_server['secret']}, "
               f"client_kwargs: {{endpoint_url: '{s3_server['endpoint_url']}', region_name: us-east-1}}}}")
    cmd = [sys.executable, "-m", "jobs.propagate", "-m", "sharding.num_shards=2", "sharding.shard_id=0,1",
           f"data.manifest={manifest}", f"data.root={tmp_path}", f"output.uri={out}",
           f"output.storage_options={options}", "model.checkpoint=random", "model.image_size=128",
           "cluster.num_workers=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    secret = s3_server["secret"]
    assert secret not in proc.stdout + proc.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "videos" not in p.parts]
    assert any(p.name == "multirun.yaml" for p in written) and any(p.name == "overrides.yaml" for p in written)
    assert not [p for p in written if secret.encode() in p.read_bytes()]
    import fsspec
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server["storage_options"])
    objects = fs.find(f"{s3_bucket}/swept")
    assert any(o.endswith("config-0-of-2.yaml") for o in objects)
    assert not [o for o in objects if secret.encode() in fs.cat(o)]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_leaves_no_partial_files_and_a_rerun_completes(tmp_path, ray_cluster):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        manifest, _ = point_videos(tmp_path, n=1)
        out = disk / "out"
        out.mkdir()
        stat = os.statvfs(disk)
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 4096))  # one page left: provenance only
        spec = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address, max_attempts=1,
                        output_options={"retry_s": 1, "fallback_dir": str(tmp_path / "fallback")})
        assert run(spec) == EXIT_FAILED
        leftovers = [p for p in out.rglob("*") if p.is_file()]
        assert not [p for p in leftovers if p.name.endswith(".tmp")], leftovers
        assert not [p for p in leftovers if p.parent.name in ("masklets", "done")], leftovers
        filler.unlink()
        assert run(spec) == EXIT_OK
        assert (out / "_state" / "done" / "v0.json").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)
