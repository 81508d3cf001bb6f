"""Job progress a person can read: frames done/total, frames/s, objects/s and an ETA, live from the workers.

Workers report the frame they are on (``PropagationWorker.status``), so a long video moves the counters while it
runs. On an interactive terminal one status line is redrawn in place (a progress bar); otherwise a plain log line
every ``every_s`` seconds, as Ray's own tools do. The ETA weighs each video by its task cost, so one long video
left does not read as "almost done".
"""

from __future__ import annotations

import logging
import sys
import time
from typing import NamedTuple, TextIO

from pipeline.driver.scheduling import Task
from pipeline.records import Status, WorkerResult, WorkerStatus

log = logging.getLogger(__name__)

_REDRAW_S = 0.5
_BAR = 24


class Units(NamedTuple):
    """What a task and what a worker's status counts are called in the progress line."""

    tasks: str = "videos"
    items: str = "frames"


IMAGE_UNITS = Units("image tasks", "images")  # the image job: a task is a run of images, its status counts images


class Progress:
    """Counts finished videos and the in-flight frames of each worker; shows them as a bar or periodic lines."""

    def __init__(self, todo: list[Task], every_s: float, stream: TextIO | None = None,
                 units: Units = Units()) -> None:
        self.units = units
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.total, self.total_cost = len(todo), sum(t.cost for t in todo) or 1.0
        self.cost = {t.video_id: t.cost for t in todo}
        self.every_s = every_s
        self.start = self.last = time.perf_counter()
        self.finished = self.failed = 0
        self.frames = self.object_frames = 0  # of finished videos
        self.done_cost = 0.0
        self.current: dict[int, WorkerStatus] = {}  # worker -> its status (video, frames done of frames)

    def add(self, result: WorkerResult) -> None:
        """Count one video's final result."""
        self.finished += 1
        self.failed += result.status is not Status.DONE
        self.frames += result.frames
        self.object_frames += result.frames * result.objects
        self.done_cost += self.cost.get(result.video_id, 0.0)
        for worker, status in list(self.current.items()):
            if status.video_id == result.video_id:
                del self.current[worker]

    def update(self, worker: int, status: WorkerStatus | None) -> None:
        """The latest status of one worker (None when it is between videos)."""
        if status is not None:
            self.current[worker] = status
        else:
            self.current.pop(worker, None)

    def counters(self) -> dict[str, float]:
        """frames, object-frames, their rates per second, and the ETA in seconds (None until known)."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        frames = self.frames + sum(s.frames_done for s in self.current.values())
        object_frames = self.object_frames + sum(s.frames_done * s.objects for s in self.current.values())
        partial = sum(self.cost.get(s.video_id, 0.0) * s.frames_done / max(s.frames, 1)
                      for s in self.current.values())
        done = self.done_cost + partial
        eta = elapsed * (self.total_cost - done) / done if done > 0 else None
        return {"frames": frames, "object_frames": object_frames, "frames_per_s": frames / elapsed,
                "objects_per_s": object_frames / elapsed, "elapsed": elapsed, "eta": eta,
                "fraction": min(done / self.total_cost, 1.0)}

    def line(self) -> str:
        """One line: videos (tasks), frames (items), rates and the ETA."""
        c = self.counters()
        eta = f"{c['eta']:.0f}s" if c["eta"] is not None else "?"
        running = "".join(f", {s.video_id} {s.frames_done}/{s.frames}" for s in
                          list(self.current.values())[:3])
        tasks, items = self.units
        return (f"{tasks} {self.finished}/{self.total} ({self.failed} failed), {c['frames']} {items}, "
                f"{c['frames_per_s']:.1f} {items}/s, {c['objects_per_s']:.1f} objects/s, elapsed {c['elapsed']:.0f}s, "
                f"ETA {eta}{running}")

    def maybe_log(self) -> None:
        """Redraw the bar (interactive) or log a line if ``every_s`` passed since the last one."""
        now = time.perf_counter()
        if self.interactive and now - self.last >= _REDRAW_S:
            self.last = now
            filled = int(self.counters()["fraction"] * _BAR)
            self.stream.write(f"\r[{'#' * filled}{'.' * (_BAR - filled)}] {self.line()}\033[K")
            self.stream.flush()
        elif not self.interactive and now - self.last >= self.every_s:
            self.last = now
            log.info("%s", self.line())

    def close(self) -> None:
        """The final line."""
        if self.interactive:
            self.stream.write("\n")
        self.current.clear()
        log.info("%s", self.line())
