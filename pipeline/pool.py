"""The dispatcher: keeps a pool of worker actors busy with tasks and turns every task into one final record.

Work goes out in queue order (the driver queues largest first), ``depth`` tasks in flight per actor so a worker
never idles between videos. A video whose actor died goes back to the front of the queue; that actor gets no more
work until a ``ready`` probe shows Ray restarted it, and is dropped when the probe fails (restarts used up).
A video that failed on its own comes back as a failed record and is recorded through the sink at once.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import ray

from pipeline.progress import Progress
from pipeline.sinks import Sink
from pipeline.tasks import VideoTask

log = logging.getLogger(__name__)


class WorkerStartError(RuntimeError):
    """Not one worker replica came up (bad device, checkpoint or environment on the nodes)."""


class WorkerPool:
    """Streams tasks to actors and retries videos whose actor died, up to ``max_attempts`` per video."""

    def __init__(self, actors: list, sink: Sink, depth: int, max_attempts: int, log_every_s: float) -> None:
        self.sink = sink  # where failed videos are recorded (done markers are the workers' own)
        self.depth = depth  # tasks in flight per actor
        self.max_attempts = max_attempts  # tries per video, over all actors
        self.log_every_s = log_every_s  # progress line period, also the longest wait for a result
        self.busy: dict[Any, int] = {}  # actor -> tasks in flight; only actors that can take work
        self.probes: dict[ray.ObjectRef, Any] = {_probe(a): a for a in actors}  # ready probe -> actor
        self.running: dict[ray.ObjectRef, tuple[Any, VideoTask]] = {}  # result -> (actor, task)
        self.attempts: dict[str, int] = {}  # video_id -> tries so far
        self.workers: list[dict] = []  # identity of every replica that came up
        self.init_error: str | None = None  # first start failure, reported if none came up

    def run(self, todo: list[VideoTask]) -> list[dict]:
        """Process every task; returns one record per task (done or failed)."""
        queue: deque[VideoTask] = deque(todo)
        records: list[dict] = []
        progress = Progress(todo, self.log_every_s)
        while queue or self.running:
            self._dispatch(queue)
            if not self.running and not self.probes:
                if not self.workers:
                    raise WorkerStartError(f"no worker could start: {self.init_error}")
                for task in queue:
                    records.append(self._final(failed_record(task, "all workers died")))
                break
            progress.maybe_log()
            ready, _ = ray.wait([*self.running, *self.probes], num_returns=1, timeout=self.log_every_s)
            for ref in ready:
                if ref in self.probes:
                    self._probed(ref)
                    continue
                record = self._finished(ref, queue)
                if record is not None:
                    records.append(self._final(record))
                    progress.add(record)
        progress.log()
        return records

    def _dispatch(self, queue: deque[VideoTask]) -> None:
        for actor, n in self.busy.items():
            while queue and n < self.depth:
                task = queue.popleft()
                self.attempts[task.video_id] = self.attempts.get(task.video_id, 0) + 1
                self.running[actor.process.remote(task)] = (actor, task)
                n += 1
            self.busy[actor] = n

    def _probed(self, ref: ray.ObjectRef) -> None:
        actor = self.probes.pop(ref)
        try:
            identity = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self.init_error = self.init_error or _cause(exc)
            log.error("worker dropped: %s", _cause(exc))
            return
        if identity not in self.workers:
            self.workers.append(identity)
            log.info("worker up on node %s (pid %d, %s, %s)", identity["node_id"][:12], identity["pid"],
                     identity["device"], identity["dtype"])
        self.busy[actor] = sum(1 for a, _ in self.running.values() if a is actor)

    def _finished(self, ref: ray.ObjectRef, queue: deque[VideoTask]) -> dict | None:
        """The record of a finished task, or None when it went back to the queue."""
        actor, task = self.running.pop(ref)
        try:
            record = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if actor in self.busy:  # stop feeding it until it answers a probe
                del self.busy[actor]
                self.probes[_probe(actor)] = actor
            record = failed_record(task, f"worker died: {_cause(exc)}", retryable=True)
        else:
            if actor in self.busy:
                self.busy[actor] -= 1
        if record["status"] != "done" and record["retryable"] and self.attempts[task.video_id] < self.max_attempts:
            log.warning("video %s attempt %d failed (%s); retrying", task.video_id, self.attempts[task.video_id],
                        record["error"])
            queue.appendleft(task)
            return None
        record["attempts"] = self.attempts[task.video_id]
        return record

    def _final(self, record: dict) -> dict:
        """Record a video's outcome as soon as it is final."""
        if record["status"] != "done":
            self.sink.mark_failed(record["video_id"], record["error"], record)
        return record


def failed_record(task: VideoTask, reason: str, retryable: bool = False) -> dict:
    """The record of a video that failed without a worker's own record (its actor died, or none was left)."""
    return {"video_id": task.video_id, "status": "failed", "frames": 0, "objects": task.num_objects,
            "seconds": 0.0, "error": reason, "retryable": retryable}


def _probe(actor: Any) -> ray.ObjectRef:
    """Ask ``actor`` whether it is up; waits through a restart, fails only once Ray gave the actor up."""
    return actor.ready.options(max_task_retries=-1).remote()


def _cause(exc: ray.exceptions.RayActorError) -> str:
    """One line for a Ray actor error: the exception raised in ``__init__``, else Ray's first line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if exc.actor_init_failed else lines[0]
