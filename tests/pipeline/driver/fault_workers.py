"""Worker classes for fault tests, through the documented testing entry point ``cluster.worker_class``.

``FaultWorker`` reads a script in the test's data root, the folder above the videos (``faults.json``: video_id →
the fault of each attempt, ``null`` for none) and records every attempt (pid, object batch) under ``attempts/``.
Faults are raised from ``PropagationWorker.run_video``, the worker's documented hook, inside a real actor:

* ``device``: a CUDA-style error (the process must be replaced), ``oom``: ``torch.OutOfMemoryError``;
* ``exit``: the process dies mid-video; ``wait``: it announces itself and waits for a ``go`` file (so a test can act
  on a known, live, busy process without racing for the moment); ``stall``: it blocks for good before the video is
  open (a hung read: only its time budget ends it, whatever the machine's speed); ``crawl``: its first tracked frame
  waits until the driver drops the video (a straggler that ends only when another copy is used).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import torch

from pipeline.io.masklets import Masklets
from pipeline.plan.tasks import VideoTask
from pipeline.actor.worker import PropagationWorker


class FaultWorker(PropagationWorker):
    """PropagationWorker that raises the faults its script names."""

    def run_video(self, task: VideoTask) -> Masklets:
        root = Path(task.video_uri).parents[1]
        script = json.loads((root / "faults.json").read_text()).get(task.video_id, [])
        attempts = root / "attempts"
        attempts.mkdir(exist_ok=True)
        n = len(list(attempts.glob(f"{task.video_id}.*")))
        (attempts / f"{task.video_id}.{n}").write_text(json.dumps({"pid": os.getpid(),
                                                                    "object_batch": task.object_batch}))
        fault = script[n] if n < len(script) else None
        self._crawling = task.video_id if fault == "crawl" else None
        if fault == "device":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if fault == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if fault == "exit":
            os._exit(1)
        if fault == "stall":
            threading.Event().wait()
        if fault == "wait":
            (root / f"busy.{task.video_id}").write_text(str(os.getpid()))
            while not (root / "go").exists():
                time.sleep(0.05)
        return super().run_video(task)

    def _unless_dropped(self, video_id: str, writing: bool = False) -> None:
        """``crawl``: the per-frame check (frames known: the session is set up) waits for the driver's drop."""
        if video_id == getattr(self, "_crawling", None) and self._status.frames > 0:
            while video_id not in self._dropped:
                time.sleep(0.05)
        super()._unless_dropped(video_id, writing)


class SlowStartWorker(PropagationWorker):
    """A replica that never finishes starting (a hung driver or filesystem at model build)."""

    def __init__(self, spec) -> None:  # noqa: ANN001 - same signature as the parent
        time.sleep(3600)
