"""Faults inside real worker actors (through ``cluster.worker_class``): dead processes, GPU faults, out of memory,
stalled reads, replicas that cannot start. Every test asserts on the outcome; the only processes touched are the
test's own actors, which report their pids themselves."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.driver.job import EXIT_REFUSED, EXIT_FAILED, EXIT_OK, run
from pipeline.plan.tasks import VideoTask
from pipeline.actor.worker import batched_objects
from tests.helpers import make_video, synthetic_frames
from tests.pipeline.driver.propagate_support import job_spec, point_videos, prompts_for, write_manifest

FAULTS = "tests.pipeline.driver.fault_workers.FaultWorker"


def _script(tmp_path: Path, faults: dict[str, list]) -> None:
    (tmp_path / "faults.json").write_text(json.dumps(faults))


def _attempts(tmp_path: Path, video_id: str) -> list[dict]:
    files = sorted((tmp_path / "attempts").glob(f"{video_id}.*"), key=lambda p: int(p.suffix[1:]))
    return [json.loads(p.read_text()) for p in files]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_worker_process_dies_mid_video(tmp_path, ray_cluster):
    manifest, _ = point_videos(tmp_path)
    _script(tmp_path, {"v1": ["exit"]})
    out = tmp_path / "out"
    # Ray restarts the actor but runs nothing again: the pool retries the video
    spec = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address, max_restarts=1, retry_backoff_s=0.1,
                    worker_class=FAULTS)
    assert run(spec) == EXIT_OK
    assert (_summary(out)["done"], _summary(out)["failed"]) == (3, 0)
    assert sorted(p.name for p in (out / "_state" / "done").iterdir()) == ["v0.json", "v1.json", "v2.json"]
    first, second = _attempts(tmp_path, "v1")
    assert first["pid"] != second["pid"]  # the replica was restarted in a new process
    assert json.loads((out / "_state" / "done" / "v1.json").read_text())["pid"] == second["pid"]


def test_gpu_fault_replaces_the_process_and_retries_on_another_worker(tmp_path, ray_cluster):
    manifest, _ = point_videos(tmp_path, n=2)
    _script(tmp_path, {"v0": ["device"]})
    out = tmp_path / "out"
    spec = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address, num_workers=2, cpus_per_worker=1,
                    max_restarts=1, retry_backoff_s=0.1, worker_class=FAULTS)
    assert run(spec) == EXIT_OK
    first, second = _attempts(tmp_path, "v0")
    assert first["pid"] != second["pid"]
    workers = {(w["pid"]) for w in _summary(out)["workers"]}
    assert first["pid"] in workers  # the faulty process was a worker ...
    assert _summary(out)["done"] == 2


def test_out_of_memory_is_retried_with_smaller_object_batches(tmp_path, ray_cluster):
    manifest, _ = point_videos(tmp_path, n=1)
    _script(tmp_path, {"v0": ["oom"]})
    out = tmp_path / "out"
    spec = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address, max_restarts=0,
                    retry_backoff_s=0.1, worker_class=FAULTS)
    assert run(spec) == EXIT_OK
    assert [a["object_batch"] for a in _attempts(tmp_path, "v0")] == [None, 1]  # two objects, then one per batch


def test_a_stalled_read_times_out_and_the_video_queued_behind_it_is_not_charged(tmp_path, ray_cluster):
    """One worker, two videos in its queue: the first hangs for good before its video is open (budget: 10 s, the
    base alone), the second waits behind it (its budget, once open, is minutes per object-frame: no machine is that
    slow). Killing the worker for time fails the hung video as a timeout and gives the queued one its attempt back,
    with Ray's own re-runs out of the way (the restarted worker's probe does not wait behind the hung read)."""
    rows = []
    for video_id, frames in (("stalled", 16), ("ok", 8)):  # the larger file goes first
        f = synthetic_frames(frames, 64, 96, seed=1)
        make_video(tmp_path / "videos" / f"{video_id}.mp4", f)
        rows += prompts_for(video_id, f"videos/{video_id}.mp4", f, "points")
    manifest = write_manifest(rows, str(tmp_path / "manifest.parquet"))
    _script(tmp_path, {"stalled": ["stall"]})
    out = tmp_path / "out"
    spec = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address, max_restarts=2, max_attempts=1,
                    video_timeout_s=10, timeout_s_per_object_frame=60, worker_class=FAULTS)
    assert run(spec) == EXIT_FAILED
    summary = _summary(out)
    assert summary["done"] == 1 and summary["failures"] == {"stalled": "timed out after 10 s"}
    failed = json.loads((out / "_state" / "failed" / "stalled.json").read_text())
    assert failed["reason"] == "timed out after 10 s"
    (stalled,) = _attempts(tmp_path, "stalled")
    (ok,) = _attempts(tmp_path, "ok")  # it never ran on the killed process: its one attempt is on the new one
    assert ok["pid"] != stalled["pid"]
    assert json.loads((out / "_state" / "done" / "ok.json").read_text())["pid"] == ok["pid"]


def test_a_straggler_outrun_by_its_backup_stops_at_its_next_frame_and_its_worker_goes_on(tmp_path, ray_cluster):
    """Two workers; the largest video crawls on its first attempt (its first frame waits for the driver to drop
    it). The other worker does three videos, which teaches the pool the usual pace; the crawling video is then far
    overdue: the video queued behind it is taken back, and it gets a backup copy, which is done first and used (its
    done marker written by the driver).
    The crawling copy is dropped, stops at its next frame without writing, and its worker keeps its process."""
    manifest, _ = point_videos(tmp_path, n=5)  # v0 and v1 on one worker, v2, v3 (then v4) on the other
    big = tmp_path / "videos" / "v0.mp4"
    f = synthetic_frames(16, 64, 96, seed=3)
    make_video(big, f)  # the largest file: it goes first
    _script(tmp_path, {"v0": ["crawl"]})
    out = tmp_path / "out"
    spec = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address, num_workers=2, cpus_per_worker=1,
                    worker_class=FAULTS)
    assert run(spec) == EXIT_OK
    summary = _summary(out)
    assert (summary["done"], summary["failed"]) == (5, 0)
    crawled, backup = _attempts(tmp_path, "v0")
    assert crawled["pid"] != backup["pid"]
    assert json.loads((out / "_state" / "done" / "v0.json").read_text())["pid"] == backup["pid"]
    assert sorted(w["pid"] for w in summary["workers"]) == sorted({crawled["pid"], backup["pid"]})  # none replaced


def test_a_gpu_worker_without_usable_cuda_refuses_to_start(tmp_path, ray_cluster, caplog):
    manifest, _ = point_videos(tmp_path, n=1)
    out = tmp_path / "out"
    spec = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address, device="cuda", max_restarts=0)
    with caplog.at_level(logging.ERROR):
        assert run(spec) == EXIT_REFUSED
    assert "cannot use CUDA" in caplog.text
    assert not (out / "_state" / "done").exists()


def test_a_worker_that_never_starts_is_dropped(tmp_path, ray_cluster, caplog):
    manifest, _ = point_videos(tmp_path, n=1)
    spec = job_spec(manifest, str(tmp_path), str(tmp_path / "out"), ray_cluster.address, max_restarts=0,
                    start_timeout_s=3, worker_class="tests.pipeline.driver.fault_workers.SlowStartWorker")
    with caplog.at_level(logging.ERROR):
        assert run(spec) == EXIT_REFUSED
    assert "worker did not start within 3 s" in caplog.text


def test_out_of_memory_halves_what_the_attempt_batched() -> None:
    prompted = VideoTask("v", "v.mp4", (), 40, 1.0)
    assert prompted.with_smaller_batches(16).object_batch == 8  # 40 objects in batches of 16: next 8, not 20
    assert prompted.with_smaller_batches().object_batch == 20  # no report: half the manifest objects
    discovered = VideoTask("v", "v.mp4", (), 0, 1.0, auto=True)  # objects unknown until discovery
    assert discovered.with_smaller_batches(12).object_batch == 6
    assert discovered.with_smaller_batches().object_batch == 1
    # what the worker reports: its cap, at most the objects its session held (discovered ones included)
    assert batched_objects(discovered, 16, held=12) == 12 and batched_objects(discovered, 16, held=30) == 16
    assert batched_objects(prompted, 16, held=0) == 16  # failed before its session had objects
    assert batched_objects(replace(prompted, object_batch=4), 16, held=30) == 4
