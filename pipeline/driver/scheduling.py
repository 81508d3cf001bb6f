"""The pool's retry and scheduling policy, without Ray: which task goes to which actor, what a failure costs.

``Scheduler`` holds the queue, the retries waiting out their backoff and one ``ActorState`` per actor (keyed by a
stable ``ActorKey``, the actor's index in the pool). It never reads a clock: every event carries ``now``, seconds on
the clock the workers stamp their statuses with (``time.time()`` in ``pipeline.driver.pool``; a simulated clock in
a simulation). It never calls Ray either: it answers with decisions, and its driver makes the calls.

Driving it (what ``WorkerPool`` does, and what a discrete-event simulation does on its own clock)::

    s = Scheduler(PoolPolicy(...), tasks, actors=range(n), now=t0, rng=random.Random(seed))
    while not s.finished:
        for actor, task in s.assign(now):          # send them (depth tasks in flight per actor, in queue order)
            ...
        # then, as things happen:
        s.on_actor_up(actor, now)                  # its ready probe answered (at start, or after a restart)
        v = s.on_result(actor, task, result, now)  # a WorkerResult; Fault.DIED when the actor died with it
        #   v.final: the video's last result (record it); else it comes back after v.retry_in seconds
        #   v.restart: PROBE: the actor died, wait for its probe; REPLACE: kill it (Ray restarts it), then probe
        for actor, reason in s.expired(now, {actor: status}):   # WorkerStatus of busy actors: over time budget?
            ...                                    # kill it (Ray restarts it) and probe it; its video fails as timeout
        for actor in s.start_expired(now):         # not up within start_timeout_s: dropped, kill it for good
            ...
        s.on_actor_gone(actor, now)                # its probe failed: Ray gave it up
        if s.in_flight == 0 and s.starting == 0 and s.up == 0:
            for result in s.abandon("all workers died"): ...   # final results of every task left
        wake = s.next_wakeup(now)                  # the next retry or start deadline (None: only results wake)

The tasks of an actor that died or was replaced stay counted against it (``ActorState.in_flight``) until their
results arrive: Ray either re-runs them on the restarted process (``max_task_retries``) or fails them, and a failed
one is retried like any other death (an attempt counted, the actor avoided). An actor that comes back up gets
``depth`` minus those tasks. A simulation that kills an actor does what Ray does with ``max_task_retries=0``:
``on_actor_lost``, then ``on_result(..., Fault.DIED)`` for each task the actor held, then ``on_actor_up`` once the
restarted process is ready (or ``on_actor_gone``).

Cost per event: O(log n) in the actors and tasks (heaps and deques). ``assign`` costs that per task it hands out,
plus a scan of the released retries an actor must avoid (a few: a retry avoids at most ``max_attempts`` actors).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, replace
from enum import Enum
from typing import Iterable, Mapping

from pipeline.plan.tasks import VideoTask
from pipeline.records import Fault, WorkerResult, WorkerStatus

ActorKey = int  # an actor's stable key: its index in the pool (the same across Ray restarts of its process)


@dataclass(frozen=True)
class PoolPolicy:
    """How hard the pool tries (conf/cluster)."""

    depth: int = 2  # tasks in flight per actor
    max_attempts: int = 3  # tries per video, over all actors
    retry_backoff_s: float = 2.0  # delay before the first retry; doubles per attempt, jitter ±50%
    video_timeout_s: float = 600.0  # a video's budget: this ...
    timeout_s_per_object_frame: float = 2.0  # ... plus this per object-frame
    start_timeout_s: float = 600.0  # an actor that has not built its model by then is dropped


class Phase(Enum):
    """Where an actor is in its life."""

    STARTING = "starting"  # building its model, or restarting after a death; gets no work
    UP = "up"  # takes work
    GONE = "gone"  # dropped for good (could not start, restarts used up)


class Restart(Enum):
    """What the driver must do with an actor after a result."""

    NONE = "none"
    PROBE = "probe"  # it died: send a ready probe, which answers once Ray restarted it (or fails)
    REPLACE = "replace"  # kill its process so that Ray starts a fresh one, then probe it


@dataclass
class ActorState:
    """One actor as the policy sees it."""

    key: ActorKey
    phase: Phase = Phase.STARTING
    since: float = 0.0  # when it was (re)started: the start timeout counts from here
    order: int = 0  # when it last came up: actors with free slots are filled in this order
    in_flight: int = 0  # tasks sent and not answered, those waiting in its mailbox included
    listed: bool = False  # in the heap of actors with a free slot


@dataclass(frozen=True)
class Verdict:
    """What ``on_result`` decided."""

    result: WorkerResult  # as recorded: a death of a video killed for time reads as a timeout; final ones
    #                       carry their attempts
    final: bool  # the video's last result; else it is retried after ``retry_in`` seconds
    attempt: int  # attempts at the video so far
    retry_in: float = 0.0
    restart: Restart = Restart.NONE


class Scheduler:
    """The queue, the retries and the actors' states; every method is an event or a question (see the module)."""

    def __init__(self, policy: PoolPolicy, tasks: Iterable[VideoTask], actors: Iterable[ActorKey], now: float,
                 rng: random.Random) -> None:
        """``tasks`` in the order they should go out; every actor in ``actors`` starts as STARTING at ``now``."""
        self.policy, self.rng = policy, rng
        self.fresh: deque[VideoTask] = deque(tasks)  # never tried, in the driver's order (largest first)
        self.retries: deque[VideoTask] = deque()  # due retries, served before fresh tasks
        self.delayed: list[tuple[float, int, VideoTask]] = []  # heap: (due, tiebreak, task) waiting out backoff
        self.actors: dict[ActorKey, ActorState] = {}
        self.attempts: dict[str, int] = {}  # video_id -> attempts so far (until its result is final)
        self.failed_on: dict[str, set[ActorKey]] = {}  # video_id -> actors it failed on
        self.timed_out: dict[str, str] = {}  # video_id -> reason, for a video whose actor was killed for time
        self.in_flight = 0  # tasks sent and not answered, over all actors
        self.up = 0  # actors that take work
        self.starting = 0  # actors starting or restarting
        self._free: list[tuple[int, ActorKey]] = []  # heap: (order, actor) of up actors with a free slot
        self._deadlines: list[tuple[float, ActorKey, float]] = []  # heap: (start deadline, actor, since)
        self._seq = itertools.count()
        for key in actors:
            self.actors[key] = ActorState(key)
            self._start(self.actors[key], now)

    # -- questions

    @property
    def finished(self) -> bool:
        """Every task has its final result."""
        return not (self.fresh or self.retries or self.delayed or self.in_flight)

    def budget(self, status: WorkerStatus) -> float:
        """Seconds a video may run: ``video_timeout_s`` + ``timeout_s_per_object_frame`` × frames × objects."""
        return self.policy.video_timeout_s + self.policy.timeout_s_per_object_frame * status.frames * status.objects

    def backoff(self, attempt: int) -> float:
        """Delay before retrying after ``attempt`` failed: ``retry_backoff_s`` × 2^(attempt−1), jitter ±50%."""
        return self.policy.retry_backoff_s * 2 ** (attempt - 1) * self.rng.uniform(0.5, 1.5)

    def next_wakeup(self, now: float) -> float | None:
        """When the next retry is due or the next start deadline passes (None: nothing is timed)."""
        while self._deadlines and not self._deadline_valid(self._deadlines[0]):
            heapq.heappop(self._deadlines)
        times = [t for t in (self.delayed[0][0] if self.delayed else None,
                             self._deadlines[0][0] if self._deadlines else None) if t is not None]
        return min(times) if times else None

    # -- events

    def assign(self, now: float) -> list[tuple[ActorKey, VideoTask]]:
        """Due retries back in the queue (ahead of fresh tasks), then every up actor filled to ``depth`` in the
        order the actors came up; a retry avoids the actors it failed on while another one is up."""
        while self.delayed and self.delayed[0][0] <= now:
            self.retries.appendleft(heapq.heappop(self.delayed)[2])
        sent: list[tuple[ActorKey, VideoTask]] = []
        blocked: list[ActorState] = []
        while (self.fresh or self.retries) and self._free:
            order, key = heapq.heappop(self._free)
            actor = self.actors[key]
            if actor.phase is not Phase.UP or actor.order != order:
                continue  # came down (or back up, listed anew) since it was listed
            actor.listed = False
            while actor.in_flight < self.policy.depth:
                task = self._take(key)
                if task is None:
                    blocked.append(actor)
                    break
                self.attempts[task.video_id] = self.attempts.get(task.video_id, 0) + 1
                actor.in_flight += 1
                self.in_flight += 1
                sent.append((key, task))
        for actor in blocked:
            self._list(actor)
        return sent

    def on_actor_up(self, actor: ActorKey, now: float) -> None:
        """``actor`` answered its ready probe: it takes work (``depth`` less the tasks it still holds)."""
        state = self.actors[actor]
        if state.phase is not Phase.STARTING:
            return
        self.starting -= 1
        self.up += 1
        state.phase, state.order, state.listed = Phase.UP, next(self._seq), False  # an old listing is stale now
        self._list(state)

    def on_actor_lost(self, actor: ActorKey, now: float) -> bool:
        """``actor`` died or was killed: no work until it is up again. True when it was up (probe it now)."""
        state = self.actors[actor]
        if state.phase is not Phase.UP:
            return False
        self.up -= 1
        self._start(state, now)
        return True

    def on_actor_gone(self, actor: ActorKey, now: float) -> None:
        """``actor`` is gone for good (its probe failed: Ray used up its restarts)."""
        state = self.actors[actor]
        if state.phase is Phase.GONE:
            return
        self.up -= state.phase is Phase.UP
        self.starting -= state.phase is Phase.STARTING
        state.phase = Phase.GONE

    def start_expired(self, now: float) -> list[ActorKey]:
        """Actors that have not come up within ``start_timeout_s`` of their (re)start; they are gone now."""
        dropped = []
        while self._deadlines and self._deadlines[0][0] < now:
            entry = heapq.heappop(self._deadlines)
            if self._deadline_valid(entry):
                self.on_actor_gone(entry[1], now)
                dropped.append(entry[1])
        return dropped

    def expired(self, now: float, statuses: Mapping[ActorKey, WorkerStatus | None]) -> list[tuple[ActorKey, str]]:
        """The up actors whose current video ran past its budget, with the reason its video fails with; each is
        taken out of service (kill it so Ray replaces it, then probe it)."""
        killed = []
        for actor, status in statuses.items():
            if status is None or self.actors[actor].phase is not Phase.UP:
                continue
            budget = self.budget(status)
            if now - status.started > budget:
                reason = f"timed out after {budget:.0f} s"
                self.timed_out[status.video_id] = reason
                self.on_actor_lost(actor, now)
                killed.append((actor, reason))
        return killed

    def on_result(self, actor: ActorKey, task: VideoTask, result: WorkerResult, now: float) -> Verdict:
        """``actor`` answered ``task`` with ``result`` (``Fault.DIED``: it died with the task). Decides whether
        the video is final or retried (a retryable fault, attempts left: after a backoff, avoiding ``actor``,
        with half the object batch after out of memory) and what becomes of the actor."""
        state = self.actors[actor]
        state.in_flight -= 1
        self.in_flight -= 1
        restart = Restart.NONE
        vid = task.video_id
        if result.fault is Fault.DIED:
            if self.on_actor_lost(actor, now):
                restart = Restart.PROBE
            reason = self.timed_out.pop(vid, None)
            if reason is not None:
                result = replace(result, fault=Fault.TIMEOUT, error=reason)
        elif state.phase is Phase.UP:
            if result.fault is Fault.GPU_FAULT:  # a CUDA error poisons the process
                self.on_actor_lost(actor, now)
                restart = Restart.REPLACE
            else:
                self._list(state)
        attempt = self.attempts[vid]
        if result.retryable and attempt < self.policy.max_attempts:
            self.failed_on.setdefault(vid, set()).add(actor)
            delay = self.backoff(attempt)
            retry = task.with_smaller_batches(result.object_batch) if result.fault is Fault.OUT_OF_MEMORY else task
            heapq.heappush(self.delayed, (now + delay, next(self._seq), retry))
            return Verdict(result, False, attempt, delay, restart)
        del self.attempts[vid]
        self.failed_on.pop(vid, None)
        return Verdict(replace(result, attempts=attempt), True, attempt, 0.0, restart)

    def abandon(self, reason: str) -> list[WorkerResult]:
        """Final results (``Fault.NO_WORKERS``) of every task not yet sent, retries included; the queue empties."""
        left = [*self.retries, *self.fresh, *(task for _, _, task in sorted(self.delayed))]
        self.retries.clear()
        self.fresh.clear()
        self.delayed.clear()
        return [WorkerResult(t.video_id, Fault.NO_WORKERS, reason, objects=t.num_objects,
                             attempts=self.attempts.pop(t.video_id, 0)) for t in left]

    # -- internals

    def _start(self, state: ActorState, now: float) -> None:
        state.phase, state.since = Phase.STARTING, now
        self.starting += 1
        heapq.heappush(self._deadlines, (now + self.policy.start_timeout_s, state.key, now))

    def _deadline_valid(self, entry: tuple[float, ActorKey, float]) -> bool:
        state = self.actors[entry[1]]
        return state.phase is Phase.STARTING and state.since == entry[2]

    def _list(self, state: ActorState) -> None:
        """Put ``state`` among the actors with a free slot (once)."""
        if not state.listed and state.phase is Phase.UP and state.in_flight < self.policy.depth:
            state.listed = True
            heapq.heappush(self._free, (state.order, state.key))

    def _take(self, actor: ActorKey) -> VideoTask | None:
        """The next task for ``actor``: the first due retry it may take, else the next fresh task."""
        for i, task in enumerate(self.retries):
            avoid = self.failed_on.get(task.video_id, ())
            if actor not in avoid or sum(self.actors[a].phase is Phase.UP for a in avoid) == self.up:
                del self.retries[i]
                return task
        return self.fresh.popleft() if self.fresh else None
