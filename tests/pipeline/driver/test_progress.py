"""Progress counts the frames workers are on, not only finished videos; a terminal gets a bar, a log gets lines."""

from __future__ import annotations

import io
import logging

from pipeline.driver.progress import IMAGE_UNITS, Progress
from pipeline.plan.tasks import VideoTask
from pipeline.records import WorkerResult, WorkerStatus


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _tasks() -> list[VideoTask]:
    return [VideoTask("long", "a.mp4", (), 2, 3.0), VideoTask("short", "b.mp4", (), 1, 1.0)]


def test_counters_include_the_frames_in_flight() -> None:
    p = Progress(_tasks(), every_s=60, stream=io.StringIO())
    p.update(1, WorkerStatus("long", started=0.0, objects=2, frames=100, frames_done=50))
    c = p.counters()
    assert c["frames"] == 50 and c["object_frames"] == 100
    assert abs(c["fraction"] - 3.0 * 0.5 / 4.0) < 1e-9 and c["eta"] is not None
    p.add(WorkerResult("long", frames=100, objects=2))
    assert p.counters()["frames"] == 100 and p.current == {}
    assert "videos 1/2 (0 failed), 100 frames" in p.line()


def test_an_interactive_terminal_gets_one_redrawn_line(caplog) -> None:
    tty = _Tty()
    p = Progress(_tasks(), every_s=60, stream=tty)
    p.last -= 1.0
    p.update(1, WorkerStatus("short", started=0.0, objects=1, frames=10, frames_done=4))
    p.maybe_log()
    assert tty.getvalue().startswith("\r[") and "short 4/10" in tty.getvalue()
    with caplog.at_level(logging.INFO):
        p.close()
    assert "videos 0/2" in caplog.text


def test_a_log_gets_periodic_lines(caplog) -> None:
    p = Progress(_tasks(), every_s=0.0, stream=io.StringIO())
    with caplog.at_level(logging.INFO):
        p.maybe_log()
    assert "videos 0/2 (0 failed), 0 frames" in caplog.text and "ETA ?" in caplog.text


def test_the_image_job_counts_image_tasks_and_images() -> None:
    p = Progress(_tasks(), every_s=60, stream=io.StringIO(), units=IMAGE_UNITS)
    p.update(1, WorkerStatus("long", started=0.0, objects=1, frames=16, frames_done=4))
    assert p.line().startswith("image tasks 0/2 (0 failed), 4 images, ") and " images/s, " in p.line()
