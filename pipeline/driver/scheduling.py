"""The pool's retry and scheduling policy, without Ray: which task goes to which actor, what a failure costs, which
straggler gets a backup copy.

``Scheduler`` holds the queue, the retries waiting out their backoff and one ``ActorState`` per actor (keyed by a
stable ``ActorKey``, the actor's index in the pool). It never reads a clock: every event carries ``now``, seconds on
the clock the workers stamp their statuses with (``time.time()`` in ``pipeline.driver.pool``; a simulated clock in
a simulation). It never calls Ray either: it answers with decisions, and its driver makes the calls.

Driving it (what ``WorkerPool`` does, and what a discrete-event simulation does on its own clock)::

    s = Scheduler(PoolPolicy.of(cluster_spec), tasks, actors=range(n), now=t0, rng=random.Random(seed))
    while not s.finished:
        for actor, task in s.speculate(now):       # backup copies of stragglers for free actors: send them so that
            ...                                    # they write their masklets but no done marker
        for actor, task in s.assign(now):          # send them (depth tasks in flight per actor, in queue order)
            ...
        # then, as things happen:
        s.on_actor_up(actor, now)                  # its ready probe answered (at start, or after a restart)
        v = s.on_result(actor, task, result, now)  # a WorkerResult; Fault.DIED when the actor died with it
        #   v.final: the video's last result (record it; v.mark_done: write its done marker, a backup copy won);
        #   v.retry_in: it comes back after that many seconds; v.superseded: another copy's result was used
        #   v.restart: PROBE: the actor died, wait for its probe; REPLACE: kill it (Ray restarts it), then probe
        #   v.cancel: backup copies to cancel; v.stop: actors to ask to drop the video (then on_dropped)
        for actor, reason in s.expired(now, {actor: status}):   # WorkerStatus of busy actors: over time budget?
            ...                                    # kill it (Ray restarts it) and probe it; its video fails as timeout
        for actor in s.start_expired(now):         # not up within start_timeout_s: dropped, kill it for good
            ...
        s.on_actor_gone(actor, now)                # its probe failed: Ray gave it up
        if s.in_flight == 0 and s.starting == 0 and s.up == 0:
            for result in s.abandon("all workers died"): ...   # final results of every task left
        wake = s.next_wakeup(now)                  # the next retry or start deadline (None: only results wake)

Every re-run is the policy's: the driver has Ray run each task once (``max_task_retries=0``), and an actor's tasks
fail with it when it dies or is killed. The first task in an actor's queue is the one running (an actor runs its
tasks one after the other, in the order sent): when the actor is lost it is the one that pays (an attempt counted,
the actor avoided, or a timeout for a video killed for time); the others were only queued there and come back at
once with their attempt given back. An actor that comes back up gets ``depth`` minus the tasks it still holds. A
simulation that kills an actor does what Ray does: ``on_actor_lost``, then ``on_result(..., Fault.DIED)`` for each
task the actor held (the running one first), then ``on_actor_up`` once the restarted process is ready (or
``on_actor_gone``).

Throughput: the pool fits seconds per frame and per byte of a video's file as an encoder's share plus a tracker's
share per object (``_Fit``), from the videos done, before ``_FIT_MIN`` are from the pace of the running ones (frames
done in their statuses). ``expected`` (a running video) and ``seconds`` (a queued one) read these fits; once
``_RESORT_FROM`` videos are done, and each time that count doubles, the queue is put in the order of the seconds
they predict (largest first: the driver's ``video_cost`` is a prior). Each actor's ``speed`` is its seconds over
the expected, over its videos done (a replica 3× slower is seen after its first video).

Stragglers (what MapReduce and Spark call speculative execution): every ``_PICK_EVERY_S`` the running videos are
projected to their ends from the frames done in their statuses; a video projected to take ``speculate_after``
times its expected time on its actor (at that actor's speed), or to end ``_MARGIN`` expected times after the rest
of the work would (queued and in flight, over the up actors), gets a backup copy on the actor with a free slot
whose copy would end first, queue or not (hence ``speculate`` before ``assign``), when that copy is projected to end
``_MARGIN`` expected times sooner; at most one copy per ``_BACKUP_SHARE`` up actors at once. Videos queued behind an
overdue one are taken back (``stealable``). The first copy done wins. A backup copy writes the masklets (the same
bytes to the same key) but never a done marker: when the original wins, the backup is cancelled (a running one
stops at its next frame); when the backup wins, the original's actor is asked to drop the video (``on_dropped``: it
answers whether its writes had begun; a running original stops at its next frame, its actor keeps its process) and
the done marker is the driver's to write only when they had not, so it is written once. A backup that runs no
faster than its original (the video is slow wherever it runs, not the attempt) is stopped, and the video gets no
other. Near the end (no more waiting tasks than up actors) no task is queued behind a busy actor.

Cost per event: O(log n) in the actors and tasks (heaps and deques). ``assign`` costs that per task it hands out,
plus a scan of the released retries an actor must avoid (a few: a retry avoids at most ``max_attempts`` actors);
``speculate`` scans the actors every ``_PICK_EVERY_S``; a re-sort of the queue is O(n log n), log n times a job.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Iterable, Mapping, Protocol

from pipeline.records import Fault, WorkerResult, WorkerStatus
from pipeline.specs import ClusterSpec


class Task(Protocol):
    """What the pool reads of a task: a video's (``pipeline.plan.tasks.VideoTask``) or a run of images'
    (``pipeline.plan.image_tasks.ImageTask``)."""

    @property
    def video_id(self) -> str:
        """Its key (a video's id; an image run's key)."""

    @property
    def num_objects(self) -> int:
        """Objects prompted (0: found by discovery)."""

    @property
    def file_size(self) -> float:
        """What the throughput fit counts seconds per: a video file's bytes."""

    @property
    def cost(self) -> float:
        """The driver's estimate, for its progress line."""

    def with_smaller_batches(self, used: int | None = None) -> Task:
        """The same task with half the batch after an out-of-memory failure."""


ActorKey = int  # an actor's stable key: its index in the pool (the same across Ray restarts of its process)
_FIT_MIN = 3  # videos (done, else running with frames done) before the throughput fits judge a video
_RESORT_FROM = 16  # videos done before the queue is first put in the order of their fitted seconds (then at 32, ...)
_PICK_EVERY_S = 2.0  # how often ``speculate`` looks for stragglers
_MARGIN = 0.25  # a straggler that would end the job: its projected end this many expected times past the rest
#                of the work; and a backup copy is projected to end at least that much sooner than its original
_BACKUP_SHARE = 16  # backup copies at once: at most one per this many up actors (at least one)


def _fitted_seconds(task: Task, a: float, b: float) -> float:
    """Seconds of ``task`` by the per-byte fit ``a + b × objects`` (a video without prompts: one object)."""
    return task.file_size * (a + b * max(task.num_objects, 1))


class _Fit:
    """Weighted least squares of y = a + b·x from running sums, x a video's objects: its seconds per frame (or per
    byte of its file) are an image encoder's share plus a tracker's share per object."""

    def __init__(self) -> None:
        self.sums = [0.0] * 5  # weighted sums of (1, x, y, x², xy)
        self.count = 0  # samples added

    def add(self, weight: float, objects: int, y: float) -> None:
        """One sample ``y`` of a video of ``objects`` objects, weighted by ``weight`` (its frames or bytes)."""
        x = float(max(objects, 1))
        for i, term in enumerate((weight, weight * x, weight * y, weight * x * x, weight * x * y)):
            self.sums[i] += term
        self.count += 1

    def coefficients(self) -> tuple[float, float]:
        """(a, b); with too few or too alike videos for a slope, a constant or a slope through the origin."""
        w, wx, wy, wxx, wxy = self.sums
        spread = w * wxx - wx * wx
        b = (w * wxy - wx * wy) / spread if spread > 1e-9 * w * wxx else 0.0
        a = (wy - b * wx) / w
        if b < 0 or a < 0:
            return (wy / w, 0.0) if b < 0 else (0.0, wxy / wxx)
        return a, b


@dataclass(frozen=True)
class PoolPolicy:
    """How hard the pool tries: values of ``ClusterSpec`` (conf/cluster), which holds their defaults."""

    depth: int  # tasks in flight per actor
    max_attempts: int  # tries per video, over all actors
    retry_backoff_s: float  # delay before the first retry; doubles per attempt, jitter ±50%
    video_timeout_s: float  # a video's budget: this ...
    timeout_s_per_object_frame: float  # ... plus this per object-frame
    start_timeout_s: float  # an actor that has not built its model by then is dropped
    speculate_after: float  # a video past this many times its expected time gets a backup copy (0: never)

    @classmethod
    def of(cls, cluster: ClusterSpec) -> PoolPolicy:
        """The policy of a job's ``cluster`` spec."""
        return cls(cluster.tasks_per_worker, cluster.max_attempts, cluster.retry_backoff_s, cluster.video_timeout_s,
                   cluster.timeout_s_per_object_frame, cluster.start_timeout_s, cluster.speculate_after)


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
    sent: list[str] = field(default_factory=list)  # videos sent, not answered, in the order it runs them
    lost_with: dict[str, bool] = field(default_factory=dict)  # those it held when lost -> only queued there
    status: WorkerStatus | None = None  # the last status of the video it runs
    listed: bool = False  # in the heap of actors with a free slot
    paces: list[float] = field(default_factory=lambda: [1.0, 1.0])  # its seconds and their expected, summed over
    #                    its videos done (a prior of one video at the usual pace): ``speed``

    @property
    def speed(self) -> float:
        """Its seconds per second of a usual actor (> 1: slower), from the videos it did."""
        return self.paces[0] / self.paces[1]

    @property
    def in_flight(self) -> int:
        """Tasks sent and not answered, those waiting in its mailbox included."""
        return len(self.sent)


@dataclass(frozen=True)
class Verdict:
    """What ``on_result`` (or ``on_dropped``) decided."""

    result: WorkerResult  # as recorded: a death of a video killed for time reads as a timeout; final ones
    #                       carry their attempts
    final: bool  # the video's last result: record it
    attempt: int  # attempts at the video so far
    retry_in: float | None = None  # not final: retried after this many seconds; None: another copy decides
    restart: Restart = Restart.NONE
    superseded: bool = False  # a copy of a video whose result is another copy's: record nothing
    mark_done: bool = False  # final, done by a backup copy, which writes no done marker: the driver writes it
    cancel: tuple[ActorKey, ...] = ()  # actors running a backup copy this result made useless: cancel it there
    stop: tuple[ActorKey, ...] = ()  # actors holding the original its backup outran: ask them to drop it


class Scheduler:
    """The queue, the retries and the actors' states; every method is an event or a question (see the module)."""

    def __init__(self, policy: PoolPolicy, tasks: Iterable[Task], actors: Iterable[ActorKey], now: float,
                 rng: random.Random) -> None:
        """``tasks`` in the order they should go out; every actor in ``actors`` starts as STARTING at ``now``."""
        self.policy, self.rng = policy, rng
        self.fresh: deque[Task] = deque(tasks)  # never tried, in the driver's order (largest first)
        self.retries: deque[Task] = deque()  # due retries, served before fresh tasks
        self.delayed: list[tuple[float, int, Task]] = []  # heap: (due, tiebreak, task) waiting out backoff
        self.actors: dict[ActorKey, ActorState] = {}
        self.attempts: dict[str, int] = {}  # video_id -> attempts so far (until its result is final)
        self.failed_on: dict[str, set[ActorKey]] = {}  # video_id -> actors it failed on
        self.timed_out: dict[tuple[ActorKey, str], str] = {}  # (actor, video_id) -> reason: killed there for time
        self.holders: dict[str, list[ActorKey]] = {}  # video_id -> actors holding a copy of it (sent, unanswered)
        self.backup_on: dict[str, ActorKey] = {}  # video_id -> the actor holding its backup copy
        self.won: dict[str, WorkerResult] = {}  # video_id -> its backup's result, until the original dropped it
        self.settled: set[str] = set()  # final videos with a copy still out
        self.asked: set[tuple[ActorKey, str]] = set()  # copies an actor was asked to drop (no answer yet)
        self.dropped: set[tuple[ActorKey, str]] = set()  # copies dropped: their result is nobody's
        self._overdue: list[tuple[float, ActorKey, str, float]] = []  # heap: (when, actor, video, started)
        self.tasks: dict[str, Task] = {}  # video_id -> its task, while a copy is out
        self.unfinished = len(self.fresh)  # videos without a final result
        self.in_flight = 0  # tasks sent and not answered, over all actors
        self.up = 0  # actors that take work
        self.starting = 0  # actors starting or restarting
        self.backups = 0  # backup copies sent
        self.stolen = 0  # queued videos taken back from behind a straggler
        self._done = (_Fit(), _Fit())  # seconds per frame and per byte against objects, of the videos done
        self._live: tuple[_Fit, _Fit] | None = None  # the same of the running videos (frames done so far)
        self._resort_at = _RESORT_FROM  # videos done when the queue is next put in the order of their seconds
        self._fresh_bytes = [0.0, 0.0]  # the fresh tasks' bytes and bytes × objects, for the work left
        for task in self.fresh:
            self._count_fresh(task, 1)
        self._pick_at = 0.0  # when ``speculate`` picks the stragglers next
        self._slow_anywhere: set[str] = set()  # videos whose backup ran no faster: no other backup
        self._useless: list[tuple[ActorKey, str]] = []  # such backups, for ``stealable`` to stop
        self._stragglers: list[tuple[float, str, float]] = []  # (projected end, video, expected): want a backup
        self._free: list[tuple[int, ActorKey]] = []  # heap: (order, actor) of up actors with a free slot
        self._deadlines: list[tuple[float, ActorKey, float]] = []  # heap: (start deadline, actor, since)
        self._seq = itertools.count()
        for key in actors:
            self.actors[key] = ActorState(key)
            self._start(self.actors[key], now)

    # -- questions

    @property
    def finished(self) -> bool:
        """Every task has its final result (backup copies made useless may still be out)."""
        return self.unfinished == 0

    def budget(self, status: WorkerStatus) -> float:
        """Seconds a video may run: ``video_timeout_s`` + ``timeout_s_per_object_frame`` × frames × objects."""
        return self.policy.video_timeout_s + self.policy.timeout_s_per_object_frame * status.frames * status.objects

    def expected(self, status: WorkerStatus) -> float | None:
        """Seconds the video of ``status`` should take on a usual actor at the throughput seen so far: frames ×
        (a + b × objects), fitted (weighted by frames) over the videos done, before ``_FIT_MIN`` are over the
        running ones (their pace so far); None before either has ``_FIT_MIN`` videos."""
        fits = self._fits()
        if fits is None or status.frames <= 0:
            return None
        a, b = fits[0].coefficients()
        return status.frames * (a + b * max(status.objects, 1))

    def seconds(self, task: Task) -> float | None:
        """Seconds ``task`` should take on a usual actor, from its file's size and its objects (fitted as
        ``expected``, per byte); None before there is a fit."""
        fits = self._fits()
        return None if fits is None else _fitted_seconds(task, *fits[1].coefficients())

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

    def assign(self, now: float) -> list[tuple[ActorKey, Task]]:
        """Due retries back in the queue (ahead of fresh tasks), then every up actor filled to ``depth`` in the
        order the actors came up; a retry avoids the actors it failed on while another one is up. Near the end
        (no more tasks waiting than actors up) only idle actors get one: none waits behind a straggler."""
        while self.delayed and self.delayed[0][0] <= now:
            self.retries.appendleft(heapq.heappop(self.delayed)[2])
        sent: list[tuple[ActorKey, Task]] = []
        blocked: list[ActorState] = []
        while (self.fresh or self.retries) and self._free:
            order, key = heapq.heappop(self._free)
            actor = self.actors[key]
            if actor.phase is not Phase.UP or actor.order != order:
                continue  # came down (or back up, listed anew) since it was listed
            actor.listed = False
            while actor.in_flight < self.policy.depth:
                if actor.in_flight and len(self.fresh) + len(self.retries) <= self.up:
                    break  # near the end: listed again once idle
                task = self._take(key)
                if task is None:
                    blocked.append(actor)
                    break
                self.attempts[task.video_id] = self.attempts.get(task.video_id, 0) + 1
                self._send(actor, task)
                sent.append((key, task))
        for actor in blocked:
            self._list(actor)
        return sent

    def speculate(self, now: float) -> list[tuple[ActorKey, Task]]:
        """Backup copies of stragglers (``_pick_stragglers``) for actors with a free slot, queue or not (hence
        before ``assign``): latest projected end first, each to the actor whose copy would end first, when that
        copy is projected to end ``_MARGIN`` expected times sooner than the straggler; one per video, never on an
        actor it failed on, at most one per ``_BACKUP_SHARE`` up actors at once. A backup is no attempt; it must
        write no done marker (see the module). The stragglers are picked every ``_PICK_EVERY_S``; a slot that
        frees between two looks takes one."""
        if self.policy.speculate_after <= 0:
            return []
        if now >= self._pick_at:
            self._pick_at = now + _PICK_EVERY_S
            if self._done[0].count < _FIT_MIN:
                self._fit_running(now)
            if self._fits() is not None and self.up:
                self._pick_stragglers(now)
        room = max(1, self.up // _BACKUP_SHARE) - len(self.backup_on)
        if not self._stragglers or room <= 0 or self._fits() is None:
            return []
        free = {key: self._busy(self.actors[key], now)[0] for _, key in self._free
                if self.actors[key].phase is Phase.UP and self.actors[key].in_flight < self.policy.depth}
        sent: list[tuple[ActorKey, Task]] = []
        waiting: list[tuple[float, str, float]] = []  # no actor for them yet
        for end, vid, expected in self._stragglers:
            if vid not in self.tasks or vid in self.backup_on or vid in self.won or vid in self.settled:
                continue
            avoid = self.failed_on.get(vid, set()) | set(self.holders.get(vid, ()))
            fit = [(max(busy, now) + expected * self.actors[key].speed, busy, key) for key, busy in free.items()
                   if key not in avoid] if room > 0 else []
            if not fit:
                waiting.append((end, vid, expected))
                continue
            copy_end, busy, key = min(fit)
            if copy_end + _MARGIN * expected >= end:
                if busy <= now:  # not even an idle actor would outrun it: looked at again with the next pick
                    continue
                waiting.append((end, vid, expected))
                continue
            del free[key]
            task = self.tasks[vid]
            self.backup_on[vid] = key
            self.backups += 1
            room -= 1
            self._send(self.actors[key], task)
            sent.append((key, task))
        self._stragglers = waiting
        return sent

    def _pick_stragglers(self, now: float) -> None:
        """The running videos that want a backup copy, latest projected end first (``_stragglers``): those
        projected (from the frames done in their status) to take ``speculate_after`` times their expected time,
        and those that would end the job, ``_MARGIN`` expected times after the rest of the work would (queued
        and in flight, fitted from the videos done, over the up actors)."""
        a, b = self._fits()[1].coefficients()
        left = a * self._fresh_bytes[0] + b * self._fresh_bytes[1]  # seconds of work queued, in flight below
        left += sum(_fitted_seconds(t, a, b) for t in (*self.retries, *(t for _, _, t in self.delayed)))
        running: list[tuple[float, str, float, float, float]] = []  # (projected end, video, expected, started,
        #                                                               its actor's speed)
        copies: dict[str, dict[ActorKey, float]] = {}  # video with a backup copy -> actor -> projected end
        for actor in self.actors.values():
            if actor.phase is not Phase.UP or not actor.sent:
                continue
            busy, end, expected = self._busy(actor, now)
            left += busy - now
            vid = actor.sent[0]
            if end is None or vid in self.won or vid in self.settled:
                continue
            if vid in self.backup_on:
                copies.setdefault(vid, {})[actor.key] = end
            elif vid not in self._slow_anywhere:
                status = actor.status
                if status.frames_done == 0 and now - status.started > self.policy.speculate_after * expected \
                        * actor.speed:
                    end = math.inf  # not a frame in that time: it may never end
                running.append((end, vid, expected, status.started, actor.speed))
        job_end = now + left / self.up
        after = self.policy.speculate_after
        self._stragglers = sorted(((end, vid, expected) for end, vid, expected, started, speed in running
                                   if end > job_end + _MARGIN * expected or end - started > after * expected * speed),
                                  reverse=True)
        for vid, ends in copies.items():  # a backup that runs no faster than its original: the video is slow
            backup = self.backup_on[vid]
            original = min((end for key, end in ends.items() if key != backup), default=None)
            if original is None or backup not in ends or (backup, vid) in self.asked:
                continue
            status = self.actors[backup].status
            if status.frames_done > 0 and ends[backup] >= original - _MARGIN * (self.expected(status) or 0.0):
                self._slow_anywhere.add(vid)
                self.asked.add((backup, vid))
                self._useless.append((backup, vid))

    def _busy(self, actor: ActorState, now: float) -> tuple[float, float | None, float]:
        """When ``actor`` should be done with what it holds (at its own ``speed``); when its running video should
        end and its expected time on a usual actor (None, 0 before its status tells)."""
        status = actor.status
        if not actor.sent:
            return now, None, 0.0
        expected = self.expected(status) if status is not None and status.video_id == actor.sent[0] else None
        if expected is None:
            return now + actor.speed * sum(self.seconds(self.tasks[v]) for v in actor.sent), None, 0.0
        elapsed = now - status.started
        if status.frames_done > 0:
            end = status.started + elapsed * status.frames / status.frames_done
        else:
            end = status.started + max(expected * actor.speed, elapsed)
        return end + actor.speed * sum(self.seconds(self.tasks[v]) for v in actor.sent[1:]), end, expected

    def stealable(self, now: float) -> list[tuple[ActorKey, str]]:
        """Videos queued behind one that has run ``speculate_after`` times longer than expected: ask their actor to
        drop them (``on_dropped``), and they go back first in the queue, for another actor. Also backup copies
        that run no faster than their original (the video is slow wherever it runs): ask them to stop."""
        found, self._useless = self._useless, []
        while self.policy.speculate_after > 0 and self._overdue and self._overdue[0][0] <= now:
            _, key, vid, started = heapq.heappop(self._overdue)
            actor = self.actors[key]
            status = actor.status
            if actor.phase is not Phase.UP or status is None or (status.video_id, status.started) != (vid, started) \
                    or not actor.sent or actor.sent[0] != vid:
                continue
            for queued in actor.sent[1:]:
                if queued not in self.backup_on and queued not in self.won and queued not in self.settled \
                        and (key, queued) not in self.asked and (key, queued) not in self.dropped:
                    self.asked.add((key, queued))
                    found.append((key, queued))
        return found

    def on_actor_up(self, actor: ActorKey, now: float) -> None:
        """``actor`` answered its ready probe: it takes work (``depth`` less the tasks it still holds)."""
        state = self.actors[actor]
        if state.phase is not Phase.STARTING:
            return
        self.starting -= 1
        self.up += 1
        state.phase, state.order, state.listed = Phase.UP, next(self._seq), False  # an old listing is stale now
        self._list(state)

    def on_actor_lost(self, actor: ActorKey, now: float, running: str | None = None) -> bool:
        """``actor`` died or was killed with ``running`` under way (None: the first task of its queue): no work
        until it is up again, and its other tasks were only queued there. True when it was up (probe it now)."""
        state = self.actors[actor]
        if state.phase is not Phase.UP:
            return False
        running = running if running is not None else (state.sent[0] if state.sent else None)
        state.lost_with.update((v, v != running) for v in state.sent)
        state.status = None
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
        taken out of service (kill it so Ray replaces it, then probe it). The statuses are also what
        ``speculate`` judges the running videos by."""
        killed = []
        for actor, status in statuses.items():
            state = self.actors[actor]
            if status is None or state.phase is not Phase.UP or status.video_id not in state.sent:
                continue
            if state.status is None or (state.status.video_id, state.status.started) != (status.video_id,
                                                                                          status.started):
                self._judge(state, status)
            state.status = status
            budget = self.budget(status)
            if now - status.started > budget:
                reason = f"timed out after {budget:.0f} s"
                self.timed_out[(actor, status.video_id)] = reason
                self.on_actor_lost(actor, now, running=status.video_id)
                killed.append((actor, reason))
        return killed

    def on_result(self, actor: ActorKey, task: Task, result: WorkerResult, now: float) -> Verdict:
        """``actor`` answered ``task`` with ``result`` (``Fault.DIED``: it died with the task). Decides whether
        the video is final or retried (a retryable fault, attempts left: after a backoff, avoiding ``actor``,
        with half the object batch after out of memory; at once and with its attempt back when it was only
        queued on an actor that was lost), what becomes of the actor, and of the video's other copy if any."""
        vid = task.video_id
        state = self.actors[actor]
        restart = Restart.NONE
        if result.fault is Fault.DIED:
            # the first news of its death (not of one already known): the first of its queue was running
            if vid not in state.lost_with and self.on_actor_lost(actor, now):
                restart = Restart.PROBE
            reason = self.timed_out.pop((actor, vid), None)
            if reason is not None:
                result = replace(result, fault=Fault.TIMEOUT, error=reason)
        state.sent.remove(vid)
        self.in_flight -= 1
        if state.status is not None and state.status.video_id == vid:
            state.status = None
        queued = state.lost_with.pop(vid, False) and result.fault is Fault.DIED
        if result.fault is not Fault.DIED and state.phase is Phase.UP:
            if result.fault is Fault.GPU_FAULT:  # a CUDA error poisons the process
                self.on_actor_lost(actor, now, running=vid)
                restart = Restart.REPLACE
            else:
                self._list(state)
        holders = self.holders[vid]
        holders.remove(actor)
        backup = self.backup_on.get(vid) == actor
        if backup:
            del self.backup_on[vid]
        self.asked.discard((actor, vid))
        if (actor, vid) in self.dropped or vid in self.settled:  # the video's result is another copy's
            self.dropped.discard((actor, vid))
            self._forget(vid)
            return Verdict(result, False, 0, None, restart, superseded=True)
        holders = [a for a in holders if (a, vid) not in self.dropped]  # the copies that may still count
        if vid in self.won:  # the original its backup outran ended before it could drop the video
            won = self.won.pop(vid)
            if result.fault is None:  # it wrote its own done marker
                return self._final(vid, result, restart)
            return self._final(vid, won, restart, mark_done=True)
        if result.fault is None:
            if result.frames > 0 and result.seconds > 0:
                self._learn(state, task, result)
            if backup and holders:  # the backup outran its original, which must now write nothing
                self.won[vid] = result
                self.asked.update((a, vid) for a in holders)
                return Verdict(result, False, self.attempts[vid], None, restart, stop=tuple(holders))
            return self._final(vid, result, restart, mark_done=backup, cancel=tuple(holders))
        if holders:  # its other copy goes on
            if not queued:
                self.failed_on.setdefault(vid, set()).add(actor)
            return Verdict(result, False, self.attempts[vid], None, restart)
        self._forget(vid)
        if queued:  # never ran: back first in the queue, its attempt given back
            self.attempts[vid] -= not backup
            self.retries.appendleft(task)
            return Verdict(result, False, self.attempts[vid], 0.0, restart)
        attempt = self.attempts[vid]
        if result.retryable and attempt < self.policy.max_attempts:
            self.failed_on.setdefault(vid, set()).add(actor)
            delay = self.backoff(attempt)
            retry = task.with_smaller_batches(result.object_batch) if result.fault is Fault.OUT_OF_MEMORY else task
            heapq.heappush(self.delayed, (now + delay, next(self._seq), retry))
            return Verdict(result, False, attempt, delay, restart)
        return self._final(vid, result, restart)

    def on_dropped(self, actor: ActorKey, video_id: str, dropped: bool, now: float) -> Verdict | None:
        """``actor``, asked to drop ``video_id`` (``stealable``, or a ``Verdict.stop``), answered. ``dropped``: its
        writes had not begun and never will; a stolen video goes back first in the queue (its attempt given
        back, avoiding ``actor``); a video whose backup won is final with the backup's result, its done marker
        the driver's to write (a running copy stops at its next frame). Otherwise (its writes
        had begun, or its result came first) that copy's own result decides: None."""
        if (actor, video_id) not in self.asked:
            return None  # its result came first
        self.asked.discard((actor, video_id))
        if not dropped:
            return None
        self.dropped.add((actor, video_id))
        if self.backup_on.get(video_id) == actor:  # a useless backup: its result (stopped) is nobody's
            return None
        if video_id not in self.won:
            if video_id not in self.settled:
                self.attempts[video_id] -= 1
                self.failed_on.setdefault(video_id, set()).add(actor)
                self.retries.appendleft(self.tasks[video_id])
                self.stolen += 1
            return None
        return self._final(video_id, self.won.pop(video_id), Restart.NONE, mark_done=True)

    def abandon(self, reason: str) -> list[WorkerResult]:
        """Final results (``Fault.NO_WORKERS``) of every task not yet sent, retries included; the queue empties."""
        left = [*self.retries, *self.fresh, *(task for _, _, task in sorted(self.delayed))]
        self.retries.clear()
        self.fresh.clear()
        self._fresh_bytes = [0.0, 0.0]
        self.delayed.clear()
        self.unfinished -= len(left)
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

    def _send(self, state: ActorState, task: Task) -> None:
        state.sent.append(task.video_id)
        self.holders.setdefault(task.video_id, []).append(state.key)
        self.tasks[task.video_id] = task
        self.in_flight += 1

    def _forget(self, vid: str) -> None:
        """Drop what is kept of ``vid`` while a copy is out, once none is."""
        if not self.holders.get(vid, True):
            del self.holders[vid]
            self.tasks.pop(vid, None)
            self.settled.discard(vid)

    def _final(self, vid: str, result: WorkerResult, restart: Restart, mark_done: bool = False,
               cancel: tuple[ActorKey, ...] = ()) -> Verdict:
        attempt = self.attempts.pop(vid)
        self.failed_on.pop(vid, None)
        self._slow_anywhere.discard(vid)
        self.unfinished -= 1
        if self.holders.get(vid):
            self.settled.add(vid)
        self._forget(vid)
        return Verdict(replace(result, attempts=attempt), True, attempt, None, restart, mark_done=mark_done,
                       cancel=cancel)

    def _fits(self) -> tuple[_Fit, _Fit] | None:
        """The throughput fits of the videos done, before ``_FIT_MIN`` are those of the running ones (None before
        either has ``_FIT_MIN`` videos)."""
        if self._done[0].count >= _FIT_MIN:
            return self._done
        if self._live is not None and self._live[0].count >= _FIT_MIN:
            return self._live
        return None

    def _fit_running(self, now: float) -> None:
        """Fit the running videos' pace so far (their frames done in their statuses), while too few are done: a
        video far slower than the others stands out from the first statuses on."""
        had = self._fits() is not None
        per_frame, per_byte = _Fit(), _Fit()
        for actor in self.actors.values():
            status = actor.status
            if actor.phase is not Phase.UP or status is None or status.frames_done <= 0 or not actor.sent \
                    or actor.sent[0] != status.video_id or now <= status.started:
                continue
            projected = (now - status.started) * status.frames / status.frames_done
            per_frame.add(status.frames, status.objects, projected / status.frames)
            size = self.tasks[status.video_id].file_size
            per_byte.add(size, self.tasks[status.video_id].num_objects, projected / size)
        self._live = per_frame, per_byte
        if not had and self._fits() is not None:
            self._judge_running()

    def _learn(self, actor: ActorState, task: Task, result: WorkerResult) -> None:
        """Add a done video to the throughput fits and to its actor's pace; once enough are done, put the queue
        in the order of the seconds the fits predict (largest first), again each time the videos done double."""
        expected = self.expected(WorkerStatus(task.video_id, 0.0, result.objects, result.frames, 0))
        if expected is not None and expected > 0:
            actor.paces[0] += result.seconds / expected
            actor.paces[1] += 1.0
        was = self._fits() is self._done
        self._done[0].add(result.frames, result.objects, result.seconds / result.frames)
        self._done[1].add(task.file_size, task.num_objects, result.seconds / task.file_size)
        if not was and self._fits() is self._done:  # the videos already under way can be judged now
            self._judge_running()
        if self._done[0].count >= self._resort_at:
            self._resort_at *= 2
            a, b = self._done[1].coefficients()
            self.fresh = deque(sorted(self.fresh, key=lambda t: -_fitted_seconds(t, a, b)))  # stable: ties kept

    def _judge_running(self) -> None:
        for state in self.actors.values():
            if state.status is not None:
                self._judge(state, state.status)

    def _count_fresh(self, task: Task, sign: int) -> None:
        self._fresh_bytes[0] += sign * task.file_size
        self._fresh_bytes[1] += sign * task.file_size * max(task.num_objects, 1)

    def _judge(self, state: ActorState, status: WorkerStatus) -> None:
        """Note when the video of ``status`` becomes overdue (``stealable`` looks then)."""
        expected = self.expected(status)
        if self.policy.speculate_after > 0 and expected is not None:
            when = status.started + self.policy.speculate_after * expected
            heapq.heappush(self._overdue, (when, state.key, status.video_id, status.started))

    def _take(self, actor: ActorKey) -> Task | None:
        """The next task for ``actor``: the first due retry it may take, else the next fresh task."""
        for i, task in enumerate(self.retries):
            avoid = self.failed_on.get(task.video_id, ())
            if actor not in avoid or sum(self.actors[a].phase is Phase.UP for a in avoid) == self.up:
                del self.retries[i]
                return task
        if not self.fresh:
            return None
        self._count_fresh(self.fresh[0], -1)
        return self.fresh.popleft()
