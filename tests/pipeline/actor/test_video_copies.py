"""Temporary local copies of remote videos: every exit path of a source removes its copy, and a copy left by a
process killed outright is swept when a worker starts (real S3 server, real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.actor.decoding import VideoError, open_video, sweep_stale_copies
from pipeline.actor.decoding.local_copy import copies_root, process_folder
from pipeline.io.storage import write_bytes
from tests.helpers import make_video, synthetic_frames


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return Path(copies_root())


def _copies(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture
def remote_videos(s3_server, s3_bucket, tmp_path_factory) -> tuple[str, str, dict]:
    """A good and a corrupt mp4 on S3."""
    so = s3_server["storage_options"]
    good = make_video(tmp_path_factory.mktemp("copies") / "good.mp4", synthetic_frames(12, 32, 64, seed=2))
    write_bytes(f"s3://{s3_bucket}/copies/good.mp4", good.read_bytes(), so)
    write_bytes(f"s3://{s3_bucket}/copies/bad.mp4", b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100, so)
    return f"s3://{s3_bucket}/copies/good.mp4", f"s3://{s3_bucket}/copies/bad.mp4", so


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_every_exit_path_of_a_source_removes_its_copy(remote_videos, temp_root, decoder):
    good, bad, so = remote_videos
    with open_video(good, so, decoder=decoder) as src:  # closed
        assert len(_copies(temp_root)) == 1
        list(src.iter_frames(range(3)))
    assert _copies(temp_root) == []
    with pytest.raises(RuntimeError, match="stop"):  # an error while reading
        with open_video(good, so, decoder=decoder) as src:
            next(src.iter_frames([0]))
            raise RuntimeError("stop")
    assert _copies(temp_root) == []
    with pytest.raises(VideoError, match="bad.mp4"):  # the decoder refuses the file
        open_video(bad, so, decoder=decoder)
    assert _copies(temp_root) == []
    src = open_video(good, so, decoder=decoder)  # never closed: collected
    del src
    assert _copies(temp_root) == []


def test_copies_of_a_killed_process_are_swept_at_worker_start(remote_videos, temp_root, tmp_path):
    good, _, so = remote_videos
    code = ("import sys, tempfile; tempfile.tempdir = sys.argv[1]\n"
            "from pipeline.actor.decoding import open_video\n"
            f"src = open_video({good!r}, {so!r})\n"
            "print('open', flush=True)\n"
            "sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[3])
    try:
        assert child.stdout.readline().strip() == "open"
        left = _copies(temp_root)
        assert len(left) == 1 and left[0].parent.name.startswith(f"{child.pid}-")
        mine = process_folder()  # a live process's folder (this one's) is kept
        assert sweep_stale_copies() == []  # the child still runs: its copy stays
    finally:
        child.kill()  # as Ray kills a worker past its time budget: no clean-up runs
        child.wait()
    assert _copies(temp_root) == left
    assert sweep_stale_copies() == [left[0].parent.name]
    assert _copies(temp_root) == [] and sorted(os.listdir(temp_root)) == [os.path.basename(mine)]
