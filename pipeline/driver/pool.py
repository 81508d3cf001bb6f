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
* a video fails on its own (corrupt file, bad prompt): recorded as failed at once, the job goes on;
* a straggler (its frames done project it to take far longer than expected, or to end long after the rest of
  the job): the videos queued behind it are taken back (``drop``) and go to other actors, and a free slot runs a
  backup copy of it; the first copy done is used, and the other is dropped (a running copy stops at its next
  frame, its process kept).

Ray runs each task once (``max_task_retries=0``): every re-run is the pool's decision. The decisions (which task
next for which actor, retry or not, backoff, time budgets, which actor to avoid, backups) are
``pipeline.driver.scheduling.Scheduler``'s, which knows no Ray; this loop makes the Ray calls (``process``, ready
probes, status polls, ``drop``, ``ray.wait``, ``ray.kill``, ``ray.cancel``) and feeds what they return to it as
events.

Results of videos that end failed are written through the sink; when even that fails (storage down for good) the
video stays with the pool, in ``unrecorded``, and reaches the summary.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace

import ray

from pipeline.driver.progress import Progress, Units
from pipeline.driver.scheduling import ActorKey, Phase, PoolPolicy, Restart, Scheduler, Task, Verdict
from pipeline.io.prefix import Sink
from pipeline.records import Fault, Status, WorkerIdentity, WorkerResult, WorkerStartError

log = logging.getLogger(__name__)

_STATUS_EVERY_S = 2.0  # how often busy workers are asked for their per-frame status
_WAIT_S = 1.0  # longest wait for a result before the loop looks at timeouts, retries and progress again


class WorkerPool:
    """Streams tasks to actors and retries what can be retried; ``run`` returns one final result per task."""

    def __init__(self, actors: list[ray.actor.ActorHandle], sink: Sink, policy: PoolPolicy,
                 log_every_s: float, units: Units = Units()) -> None:
        self.sink = sink  # where failed videos are recorded (done markers are the workers' own)
        self.units = units  # what the progress line calls a task and what a status counts
        self.policy = policy
        self.log_every_s = log_every_s  # progress line period (non-interactive)
        self.actors = list(actors)  # the scheduler's ActorKey is the index here
        self.probes: dict[ray.ObjectRef, ActorKey] = {}  # ready probe -> actor
        self.running: dict[ray.ObjectRef, tuple[ActorKey, Task]] = {}  # result -> (actor, task)
        self.statuses: dict[ray.ObjectRef, ActorKey] = {}  # status request -> actor
        self.drops: dict[ray.ObjectRef, tuple[ActorKey, str]] = {}  # drop request -> (actor, video_id)
        self.last_status = 0.0
        self.records: list[WorkerResult] = []  # final results so far (also what an interrupted job reports)
        self.unrecorded: list[str] = []  # failed videos whose failed marker could not be written
        self.workers: list[WorkerIdentity] = []  # every replica that came up
        self.init_error: str | None = None  # first start failure, reported if none came up

    def run(self, todo: list[Task]) -> list[WorkerResult]:
        """Process every task; returns one final result per task (done or failed)."""
        s = Scheduler(self.policy, todo, range(len(self.actors)), time.time(), random.Random())
        for actor in range(len(self.actors)):
            self._probe(actor)
        progress = Progress(todo, self.log_every_s, units=self.units)
        while not s.finished:
            now = time.time()
            for actor, video_id in s.stealable(now):
                log.warning("video %s: dropping its copy on worker %d (queued behind a straggler, or a backup no "
                            "faster than the original)", video_id, actor)
                self._drop(actor, video_id)
            for actor, task in s.speculate(now):  # first: a backup of the job's tail may take a slot just freed
                log.warning("video %s runs far past its expected time; a backup copy starts", task.video_id)
                self._send(actor, task, mark_done=False)
            for actor, task in s.assign(now):
                self._send(actor, task)
            if not s.in_flight and not s.starting:
                if not self.workers:
                    raise WorkerStartError(f"no worker could start: {self.init_error}")
                if not s.up:
                    for result in s.abandon("all workers died"):
                        self._final(result, progress)
                    break
            self._poll_status(s)
            waiting = [*self.running, *self.probes, *self.statuses, *self.drops]
            wait_s = self._wait_s(s)
            ready, _ = ray.wait(waiting, num_returns=1, timeout=wait_s) if waiting else ([], [])
            if not waiting:
                time.sleep(wait_s)
            for ref in ready:
                if ref in self.probes:
                    self._probed(s, ref)
                elif ref in self.statuses:
                    self._status(s, ref, progress)
                elif ref in self.drops:
                    self._dropped(s, ref, progress)
                else:
                    self._finished(s, ref, progress)
            for actor in s.start_expired(time.time()):
                self._give_up(actor)
            progress.maybe_log()
        progress.close()
        return self.records

    @staticmethod
    def _wait_s(s: Scheduler) -> float:
        now = time.time()
        wake = s.next_wakeup(now)
        return _WAIT_S if wake is None else max(0.05, min(_WAIT_S, wake - now))

    def _send(self, actor: ActorKey, task: Task, mark_done: bool = True) -> None:
        """``process`` on ``actor``, run once by Ray whatever happens to it (the scheduler decides any re-run); a
        backup copy writes no done marker."""
        call = self.actors[actor].process.options(max_task_retries=0)
        self.running[call.remote(task) if mark_done else call.remote(task, False)] = (actor, task)

    def _drop(self, actor: ActorKey, video_id: str) -> None:
        """Ask ``actor`` to give ``video_id`` up (it answers whether its writes had begun)."""
        self.drops[self.actors[actor].drop.options(max_task_retries=0).remote(video_id)] = (actor, video_id)

    def _dropped(self, s: Scheduler, ref: ray.ObjectRef, progress: Progress) -> None:
        actor, video_id = self.drops.pop(ref)
        try:
            dropped = ray.get(ref)
        except ray.exceptions.RayError:
            dropped = False  # the actor is dying: its result decides
        verdict = s.on_dropped(actor, video_id, dropped, time.time())
        if verdict is not None:
            self._act(s, actor, video_id, verdict, progress)

    def _probe(self, actor: ActorKey) -> None:
        """Ask ``actor`` whether it is up; waits through a restart, fails once Ray gave the actor up."""
        self.probes[self.actors[actor].ready.options(max_task_retries=-1).remote()] = actor

    def _probed(self, s: Scheduler, ref: ray.ObjectRef) -> None:
        actor = self.probes.pop(ref)
        try:
            identity = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self.init_error = self.init_error or _cause(exc)
            log.error("worker dropped: %s", _cause(exc))
            s.on_actor_gone(actor, time.time())
            return
        if identity not in self.workers:
            self.workers.append(identity)
            log.info("worker up on node %s (pid %d, %s, %s)", identity.node_id[:12], identity.pid, identity.device,
                     identity.dtype)
        s.on_actor_up(actor, time.time())

    def _give_up(self, actor: ActorKey) -> None:
        """``actor`` did not come up in time: stop waiting for it and kill it for good."""
        for ref in [r for r, a in self.probes.items() if a == actor]:
            del self.probes[ref]
        reason = f"worker did not start within {self.policy.start_timeout_s:.0f} s"
        self.init_error = self.init_error or reason
        log.error("worker dropped: %s", reason)
        ray.kill(self.actors[actor], no_restart=True)

    def _poll_status(self, s: Scheduler) -> None:
        """Every few seconds, ask each busy actor what it is doing (frames done of its current video)."""
        now = time.monotonic()
        if now - self.last_status < _STATUS_EVERY_S or self.statuses:
            return
        self.last_status = now
        for actor in sorted({a for a, _ in self.running.values() if s.actors[a].phase is Phase.UP}):
            self.statuses[self.actors[actor].status.remote()] = actor

    def _status(self, s: Scheduler, ref: ray.ObjectRef, progress: Progress) -> None:
        actor = self.statuses.pop(ref)
        try:
            status = ray.get(ref)
        except ray.exceptions.RayError:
            return  # the actor is dying; its tasks will say so
        progress.update(actor, status)
        for killed, reason in s.expired(time.time(), {actor: status}):
            log.error("video %s %s (%d of %d frames); replacing its worker", status.video_id, reason,
                      status.frames_done, status.frames)
            self._replace(killed)

    def _replace(self, actor: ActorKey) -> None:
        """Kill ``actor`` so Ray starts a fresh process; its tasks fail over (Ray's task retries, then ours)."""
        ray.kill(self.actors[actor], no_restart=False)
        self._probe(actor)

    def _finished(self, s: Scheduler, ref: ray.ObjectRef, progress: Progress) -> None:
        """Feed a finished task's result to the scheduler and act on its verdict."""
        actor, task = self.running.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            result = WorkerResult(task.video_id, Fault.DIED, f"worker died: {_cause(exc)}", objects=task.num_objects)
        except ray.exceptions.TaskCancelledError:  # a backup copy made useless before it ran
            result = WorkerResult(task.video_id, Fault.ERROR, "cancelled", objects=task.num_objects)
        self._act(s, actor, task.video_id, s.on_result(actor, task, result, time.time()), progress)

    def _act(self, s: Scheduler, actor: ActorKey, video_id: str, verdict: Verdict, progress: Progress) -> None:
        """Make the Ray calls a verdict asks for, and record the video when it is final."""
        if verdict.restart is Restart.PROBE:  # it died: no work until it answers a probe
            self._probe(actor)
        elif verdict.restart is Restart.REPLACE:  # a CUDA error poisons the process
            log.error("worker of video %s replaced (%s)", video_id, verdict.result.error or "its copy dropped")
            self._replace(actor)
        for other in verdict.cancel:  # a backup copy that lost: it writes no done marker
            for ref in [r for r, (a, t) in self.running.items() if a == other and t.video_id == video_id]:
                ray.cancel(ref)  # out of the actor's queue
            self._drop(other, video_id)  # and a running copy stops at its next frame
        for other in verdict.stop:  # the original its backup outran: it must write nothing now
            self._drop(other, video_id)
        if verdict.final:
            result = verdict.result
            if verdict.mark_done:  # the backup copy used wrote the masklets; the marker is the driver's
                try:
                    self.sink.mark_done(result)
                except Exception as exc:  # noqa: BLE001 - storage down for good: not done, a re-run recomputes it
                    result = replace(result, fault=Fault.ERROR, error=f"done marker not written: {exc}")
            self._final(result, progress)
        elif verdict.retry_in is not None:
            log.warning("video %s attempt %d failed (%s); retrying in %.1f s", video_id, verdict.attempt,
                        verdict.result.error, verdict.retry_in)

    def _final(self, result: WorkerResult, progress: Progress) -> None:
        """Record a video's outcome; a failure is written through the sink (kept here when even that fails)."""
        if result.status is not Status.DONE:
            try:
                self.sink.mark_failed(result)
            except Exception as exc:  # noqa: BLE001 - storage down for good: the summary still names the video
                log.error("video %s: could not record its failure under %s: %s: %s", result.video_id,
                          self.sink.uri, type(exc).__name__, exc)
                self.unrecorded.append(result.video_id)
        self.records.append(result)
        progress.add(result)


def _cause(exc: ray.exceptions.RayActorError) -> str:
    """One line for a Ray actor error: the exception raised in ``__init__``, else Ray's first line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if exc.actor_init_failed else lines[0]
