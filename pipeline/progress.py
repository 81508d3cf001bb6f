"""Job progress for a person reading the driver's log: videos done/total, frames per second, ETA by task cost."""

from __future__ import annotations

import logging
import time

from pipeline.tasks import VideoTask

log = logging.getLogger(__name__)


class Progress:
    """Counts finished videos and logs a line at most every ``every_s`` seconds; the ETA weighs each video by its
    task cost, so one long video left does not read as "almost done"."""

    def __init__(self, todo: list[VideoTask], every_s: float) -> None:
        self.total, self.total_cost = len(todo), sum(t.cost for t in todo) or 1.0
        self.cost = {t.video_id: t.cost for t in todo}
        self.every_s = every_s
        self.start = self.last = time.perf_counter()
        self.finished = self.failed = self.frames = 0
        self.done_cost = 0.0

    def add(self, record: dict) -> None:
        """Count one video's final record."""
        self.finished += 1
        self.failed += record["status"] != "done"
        self.frames += record["frames"]
        self.done_cost += self.cost[record["video_id"]]

    def maybe_log(self) -> None:
        """Log a line if ``every_s`` passed since the last one."""
        if time.perf_counter() - self.last >= self.every_s:
            self.log()

    def log(self) -> None:
        """Log a line now."""
        self.last = time.perf_counter()
        elapsed = self.last - self.start
        eta = f"{elapsed * (self.total_cost - self.done_cost) / self.done_cost:.0f}s" if self.done_cost else "?"
        log.info("videos %d/%d (%d failed), %.1f frames/s, elapsed %.0fs, ETA %s", self.finished, self.total,
                 self.failed, self.frames / max(elapsed, 1e-9), elapsed, eta)
