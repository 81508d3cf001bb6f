"""The dispatcher: keeps a pool of worker actors busy with tasks and turns every task into one final record.

Work goes out in queue order (the driver queues largest first), ``depth`` tasks in flight per actor so a worker
never idles between videos. What can go wrong, and what the pool does:

* an actor dies (or is killed): its videos go back to the queue; the actor gets no more work until a ``ready``
  probe shows Ray restarted it, and is dropped when the probe fails (restarts used up) or does not answer within
  ``start_timeout_s``;
* a video fails in a way another attempt could fix (storage outage, worker death, GPU fault, out of memory): it is
  retried after an exponential backoff with jitter, on another actor when there is one, up to ``max_attempts``;
  a GPU fault also gets its actor killed so that Ray replaces the process (a CUDA context does not recover);
* a video runs past its time budget (``video_timeout_s`` + ``timeout_s_per_object_frame`` × frames × objects,
  read from the worker's status): its actor is killed and replaced and the video fails as "timed out after N s"
  (and is retried like the rest);
* a video fails on its own (corrupt file, bad prompt): recorded as failed at once, the job goes on.

Records of videos that end failed are written through the sink; when even that fails (storage down for good) the
record stays with the pool, marked ``unrecorded``, and reaches the summary.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import ray

from pipeline.driver.progress import Progress
from pipeline.io.prefix import Sink
from pipeline.plan.tasks import VideoTask

log = logging.getLogger(__name__)

_STATUS_EVERY_S = 2.0  # how often busy workers are asked for their per-frame status
_WAIT_S = 1.0  # longest wait for a result before the loop looks at timeouts, retries and progress again


class WorkerStartError(RuntimeError):
    """Not one worker replica came up (bad device, checkpoint or environment on the nodes)."""


@dataclass(frozen=True)
class PoolPolicy:
    """How hard the pool tries (conf/cluster)."""

    depth: int = 2  # tasks in flight per actor
    max_attempts: int = 3  # tries per video, over all actors
    retry_backoff_s: float = 2.0  # delay before the first retry; doubles per attempt, jitter ±50%
    video_timeout_s: float = 600.0  # a video's budget: this ...
    timeout_s_per_object_frame: float = 2.0  # ... plus this per object-frame
    start_timeout_s: float = 600.0  # an actor that has not built its model by then is dropped
    log_every_s: float = 10.0  # progress line period (non-interactive)


class WorkerPool:
    """Streams tasks to actors and retries what can be retried; ``run`` returns one record per task."""

    def __init__(self, actors: list, sink: Sink, policy: PoolPolicy) -> None:
        self.sink = sink  # where failed videos are recorded (done markers are the workers' own)
        self.policy = policy
        self.actors = list(actors)  # every actor handle, for status and identity
        self.busy: dict[Any, int] = {}  # actor -> tasks in flight; only actors that can take work
        self.probes: dict[ray.ObjectRef, tuple[Any, float]] = {}  # ready probe -> (actor, sent at)
        self.running: dict[ray.ObjectRef, tuple[Any, VideoTask]] = {}  # result -> (actor, task)
        self.attempts: dict[str, int] = {}  # video_id -> tries so far
        self.failed_on: dict[str, set[int]] = {}  # video_id -> id() of the actors it failed on
        self.delayed: list[tuple[float, int, VideoTask]] = []  # heap of (not before, tiebreak, task) retries
        self.timed_out: dict[str, str] = {}  # video_id -> reason, for videos whose actor was killed for time
        self.statuses: dict[ray.ObjectRef, Any] = {}  # status request -> actor
        self.last_status = 0.0
        self.records: list[dict] = []  # final records so far (also what an interrupted job reports)
        self.workers: list[dict] = []  # identity of every replica that came up
        self.init_error: str | None = None  # first start failure, reported if none came up
        self._tiebreak = itertools.count()
        for actor in actors:
            self._probe(actor)

    def run(self, todo: list[VideoTask]) -> list[dict]:
        """Process every task; returns one record per task (done or failed)."""
        queue: deque[VideoTask] = deque(todo)
        progress = Progress(todo, self.policy.log_every_s)
        while queue or self.running or self.delayed:
            self._release_delayed(queue)
            self._dispatch(queue)
            if not self.running and not self.probes:
                if not self.workers:
                    raise WorkerStartError(f"no worker could start: {self.init_error}")
                if not self.busy:
                    for task in [*queue, *(t for _, _, t in self.delayed)]:
                        self._final(failed_record(task, "all workers died"), progress)
                    break
            self._poll_status(progress)
            waiting = [*self.running, *self.probes, *self.statuses]
            ready, _ = ray.wait(waiting, num_returns=1, timeout=self._wait_s()) if waiting else ([], [])
            if not waiting:
                time.sleep(self._wait_s())
            for ref in ready:
                if ref in self.probes:
                    self._probed(ref)
                elif ref in self.statuses:
                    self._status(ref, progress)
                else:
                    record = self._finished(ref, queue)
                    if record is not None:
                        self._final(record, progress)
            self._check_probe_timeouts()
            progress.maybe_log()
        progress.close()
        return self.records

    def _wait_s(self) -> float:
        if self.delayed:
            return max(0.05, min(_WAIT_S, self.delayed[0][0] - time.monotonic()))
        return _WAIT_S

    def _release_delayed(self, queue: deque[VideoTask]) -> None:
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            queue.appendleft(heapq.heappop(self.delayed)[2])

    def _dispatch(self, queue: deque[VideoTask]) -> None:
        """Fill every actor up to ``depth``; a retried video avoids the actors it failed on while others exist."""
        live = list(self.busy)
        for actor in live:
            while self.busy[actor] < self.policy.depth and queue:
                task = self._take(queue, actor, live)
                if task is None:
                    break
                self.attempts[task.video_id] = self.attempts.get(task.video_id, 0) + 1
                self.running[actor.process.remote(task)] = (actor, task)
                self.busy[actor] += 1

    def _take(self, queue: deque[VideoTask], actor: Any, live: list) -> VideoTask | None:
        for i, task in enumerate(queue):
            avoid = self.failed_on.get(task.video_id, set())
            if id(actor) not in avoid or all(id(a) in avoid for a in live):
                del queue[i]
                return task
        return None

    def _probe(self, actor: Any) -> None:
        """Ask ``actor`` whether it is up; waits through a restart, fails once Ray gave the actor up."""
        self.probes[actor.ready.options(max_task_retries=-1).remote()] = (actor, time.monotonic())

    def _probed(self, ref: ray.ObjectRef) -> None:
        actor, _ = self.probes.pop(ref)
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

    def _check_probe_timeouts(self) -> None:
        now = time.monotonic()
        for ref, (actor, sent) in list(self.probes.items()):
            if now - sent > self.policy.start_timeout_s:
                del self.probes[ref]
                reason = f"worker did not start within {self.policy.start_timeout_s:.0f} s"
                self.init_error = self.init_error or reason
                log.error("worker dropped: %s", reason)
                ray.kill(actor, no_restart=True)

    def _poll_status(self, progress: Progress) -> None:
        """Every few seconds, ask each busy actor what it is doing (frames done of its current video)."""
        now = time.monotonic()
        if now - self.last_status < _STATUS_EVERY_S or self.statuses:
            return
        self.last_status = now
        for actor in {id(a): a for a, _ in self.running.values() if a in self.busy}.values():
            self.statuses[actor.status.remote()] = actor

    def _status(self, ref: ray.ObjectRef, progress: Progress) -> None:
        actor = self.statuses.pop(ref)
        try:
            status = ray.get(ref)
        except ray.exceptions.RayError:
            return  # the actor is dying; its tasks will say so
        progress.update(id(actor), status)
        if not status or actor not in self.busy:
            return
        budget = (self.policy.video_timeout_s
                  + self.policy.timeout_s_per_object_frame * status["frames"] * status["objects"])
        elapsed = time.time() - status["started"]
        if elapsed > budget:
            reason = f"timed out after {budget:.0f} s"
            log.error("video %s %s (%d of %d frames); replacing its worker", status["video_id"], reason,
                      status["frames_done"], status["frames"])
            self.timed_out[status["video_id"]] = reason
            self._replace(actor)

    def _replace(self, actor: Any) -> None:
        """Kill ``actor`` so Ray starts a fresh process; its tasks fail over (Ray's task retries, then ours)."""
        del self.busy[actor]
        ray.kill(actor, no_restart=False)
        self._probe(actor)

    def _finished(self, ref: ray.ObjectRef, queue: deque[VideoTask]) -> dict | None:
        """The record of a finished task, or None when it went back to the queue."""
        actor, task = self.running.pop(ref)
        try:
            record = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if actor in self.busy:  # stop feeding it until it answers a probe
                del self.busy[actor]
                self._probe(actor)
            reason = self.timed_out.pop(task.video_id, None) or f"worker died: {_cause(exc)}"
            record = failed_record(task, reason, retryable=True)
        else:
            if actor in self.busy:
                self.busy[actor] -= 1
                if record.get("fault") == "device":  # a CUDA error poisons the process: have Ray replace it
                    log.error("worker pid %s: GPU fault (%s); replacing it", record.get("pid"), record["error"])
                    self._replace(actor)
        vid = task.video_id
        if record["status"] != "done" and record["retryable"] and self.attempts[vid] < self.policy.max_attempts:
            self.failed_on.setdefault(vid, set()).add(id(actor))
            delay = self.policy.retry_backoff_s * 2 ** (self.attempts[vid] - 1) * random.uniform(0.5, 1.5)
            log.warning("video %s attempt %d failed (%s); retrying in %.1f s", vid, self.attempts[vid],
                        record["error"], delay)
            if record.get("fault") == "oom":
                task = task.with_smaller_batches(record.get("object_batch"))
            heapq.heappush(self.delayed, (time.monotonic() + delay, next(self._tiebreak), task))
            return None
        record["attempts"] = self.attempts[vid]
        return record

    def _final(self, record: dict, progress: Progress) -> None:
        """Record a video's outcome; a failure is written through the sink (kept here when even that fails)."""
        if record["status"] != "done":
            try:
                self.sink.mark_failed(record["video_id"], record["error"], record)
            except Exception as exc:  # noqa: BLE001 - storage down for good: the summary still names the video
                log.error("video %s: could not record its failure under %s: %s: %s", record["video_id"],
                          self.sink.uri, type(exc).__name__, exc)
                record["unrecorded"] = True
        self.records.append(record)
        progress.add(record)


def failed_record(task: VideoTask, reason: str, retryable: bool = False) -> dict:
    """The record of a video that failed without a worker's own record (its actor died, or none was left)."""
    return {"video_id": task.video_id, "status": "failed", "frames": 0, "objects": task.num_objects,
            "seconds": 0.0, "error": reason, "retryable": retryable}


def _cause(exc: ray.exceptions.RayActorError) -> str:
    """One line for a Ray actor error: the exception raised in ``__init__``, else Ray's first line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if exc.actor_init_failed else lines[0]
