"""A worker process killed in the middle of a video: the job still ends with every video done exactly once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pipeline.driver import EXIT_OK, run
from tests.helpers import make_video, synthetic_frames
from tests.pipeline.propagate_support import job_spec, prompts_for, write_manifest

BUSY_TITLE = b"ray::PropagationWorker.process"


def _busy_worker_pid() -> int | None:
    """PID of a Ray worker process whose title says it is inside PropagationWorker.process (mid-video)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(BUSY_TITLE):
                    return int(entry.name)
            except OSError:
                continue
    return None


def _kill_once_mid_video(killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        pid = _busy_worker_pid()
        if pid is not None:
            time.sleep(0.5)  # well inside the video (a 16-frame video takes seconds)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


@pytest.mark.parametrize("retry_by", ["ray", "driver"])
def test_worker_killed_mid_video(tmp_path, ray_cluster, retry_by):
    rows = []
    for i in range(3):
        frames = synthetic_frames(16, 64, 96, seed=10 + i)
        make_video(tmp_path / "videos" / f"v{i}.mp4", frames)
        rows += prompts_for(f"v{i}", f"videos/v{i}.mp4", frames, "points")
    manifest = write_manifest(rows, str(tmp_path / "manifest.parquet"))
    out = tmp_path / "out"
    # "ray": Ray restarts the actor and re-runs the task on it; "driver": the task fails, the driver re-queues it
    retries = {"max_task_retries": 1} if retry_by == "ray" else {"max_task_retries": 0}
    spec = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address, max_restarts=1, **retries)

    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_once_mid_video, args=(killed, stop), daemon=True)
    killer.start()
    try:
        status = run(spec)
    finally:
        stop.set()
        killer.join()

    assert killed, "no worker was caught mid-video"
    assert status == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (3, 0)
    assert sorted(p.name for p in (out / "_state" / "done").iterdir()) == ["v0.json", "v1.json", "v2.json"]
    assert sorted(p.name for p in (out / "masklets").iterdir()) == ["v0.json", "v1.json", "v2.json"]
    done_pids = {json.loads(p.read_text())["pid"] for p in (out / "_state" / "done").iterdir()}
    assert len(done_pids | set(killed)) >= 2  # the replica was restarted in a new process
