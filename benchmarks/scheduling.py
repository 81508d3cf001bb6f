"""Scheduling section: the propagation job's own scheduling policy (``pipeline.driver.scheduling.Scheduler``) run
on a simulated clock over an SA-V-sized workload, on 64, 256 and 1,024 workers, with worker deaths and stragglers.

What it reports, per worker count: the makespan (first worker up to last final result) against the
longest-processing-time lower bound of the cluster the run had (``cluster_bound``: the work spread over the
replicas' time up, each at its speed, and no less than the longest video; work = what each video costs on a
replica of normal speed). A replica that is down (a death until Ray's restart is up, a node lost), still starting,
or 3× slower is capacity no scheduler has: that bound is what the policy is judged by. The note also gives the
makespan over the bound of a cluster without faults, ``max(total work / workers, longest video)``, and how many
deaths, Ray restarts, retries and backup copies the run saw. Rows: deaths, lost nodes and stragglers (the target);
the same with hard videos too; no fault. It also plans an SA-V-sized synthetic manifest as the driver section does
(``benchmarks.driver.measure_plan``: seconds and peak RSS).

The workload (assumed; SA-V's published figures where there are some):

* ``videos`` videos (SA-V: 50.9k) with ``masklets`` objects in all (SA-V: 642.6k, 12.6 per video). Durations are
  log-normal (SA-V averages ~14 s; ``duration_sigma`` 0.55 puts the 99th percentile near 45 s), clipped to
  [``min_s``, ``max_s``], at ``fps`` 24. Objects per video are 1 + negative binomial (``objects_dispersion`` 1.5:
  most videos have a few, a long tail has dozens), scaled so the total is exactly ``masklets``.
* A video costs ``per_video_s`` (open, reset, write) + frames × (``per_frame_s`` for the image encoder +
  ``per_object_frame_s`` × objects), times a log-normal content factor (``jitter_sigma``): ~23 s for an average
  video on one H100-class replica. Its file size is duration × a log-normal bitrate (``bitrate_sigma``), so the
  driver's order (``video_cost``, from objects and file size, largest first: ``plan_order``) and the pool's
  fitted seconds per byte are estimates, as they are for a real job.

Faults (per run, drawn from the seed): each replica dies at random (``deaths_per_worker_hour``); Ray restarts it
after ``restart_s`` (model rebuilt) and runs none of its videos again: they come back to the pool as deaths, as
when the pool kills a replica for a video past its time budget (the one it ran counts as an attempt, the queued
ones do not); a replica that dies more than ``max_restarts`` times is gone, and ``lost_fraction`` of the replicas
are lost for good at a random time (a node gone). ``slow_worker_fraction`` of the
replicas are ``slow_worker_factor`` times slower for the whole run; ``slow_task_fraction`` of the attempts take
``slow_task_factor`` times longer (slow storage, a congested node: another copy of the video runs at normal speed);
``hard_video_fraction`` of the videos take ``hard_video_factor`` times longer wherever they run (their content):
that is what they cost, so their work and the bound count it. The pool's policy is the job's
default (``ClusterSpec``: ``tasks_per_worker`` 2, 3 attempts, backoff 2 s, time budgets, backup copies of
stragglers past ``speculate_after`` times their expected time, and of the videos that would end the job).

The simulated driver reacts at once (the real loop waits at most 1 s for results; dispatch costs ~1 ms, see the
driver section); a video past its time budget is seen by the next status poll (``POLL_S``), and so is a straggler:
the scheduler gets a replica's status when its video starts and, every ``POLL_S``, that of every busy replica with
its frames done (a video goes at a steady pace), which is what it projects a running video's end from; it is asked
for backup copies at every event (first, so that a backup of the job's tail may take a slot just freed) and every
``POLL_S`` while a replica idles. A copy the pool drops (a backup that lost or runs no faster than its original,
an original outrun by its backup) is taken out of its mailbox when queued, and stops ``STOP_S`` later when
running (the worker checks between frames).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import tempfile
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.driver import measure_plan
from benchmarks.harness import run_isolated
from benchmarks.report import Figure, figure
from benchmarks.sav_manifest import ManifestShape, write_manifest
from pipeline.driver.scheduling import ActorKey, Phase, PoolPolicy, Restart, Scheduler, Verdict
from pipeline.plan.tasks import VideoTask, plan_order, video_cost
from pipeline.records import Fault, Status, WorkerIdentity, WorkerResult, WorkerStatus
from pipeline.specs import ClusterSpec

GB = 1024 ** 3
POLL_S = 2.0  # how often the pool asks busy workers for their status (pipeline.driver.pool)
STOP_S = 1.0  # a worker asked to drop the video it runs stops at its next frame


@dataclass(frozen=True)
class Workload:
    """The videos and what they cost (see the module)."""

    videos: int
    masklets: int
    fps: float = 24.0
    mean_s: float = 14.0
    duration_sigma: float = 0.55
    min_s: float = 3.0
    max_s: float = 180.0
    objects_dispersion: float = 1.5
    per_video_s: float = 2.0
    per_frame_s: float = 0.025
    per_object_frame_s: float = 0.003
    jitter_sigma: float = 0.1
    bitrate_sigma: float = 0.3


@dataclass(frozen=True)
class Faults:
    """What goes wrong (see the module); rates per replica."""

    start_s: float = 30.0  # replicas come up between start_s and twice that (model built)
    deaths_per_worker_hour: float = 0.02
    restart_s: float = 60.0
    lost_fraction: float = 0.01
    slow_worker_fraction: float = 0.02
    slow_worker_factor: float = 3.0
    slow_task_fraction: float = 0.01  # of the attempts
    slow_task_factor: float = 4.0
    hard_video_fraction: float = 0.01  # of the videos
    hard_video_factor: float = 4.0


@dataclass
class Outcome:
    """One simulated run."""

    makespan: float  # seconds from the first replica up to the last final result
    bound: float  # max(total work / workers, longest video)
    cluster_bound: float  # the same on the cluster the run had: replicas' time up and speed (``cluster_bound``)
    longest: float
    results: list[WorkerResult]  # the final result of every video, in the order they ended
    deaths: int
    restarts: int
    lost: int
    attempts: int  # over all videos
    backups: int  # backup copies sent
    stolen: int  # queued videos taken back from behind a straggler


def sav_workload(w: Workload, seed: int) -> tuple[list[VideoTask], dict[str, float], dict[str, int]]:
    """The videos as tasks in the driver's order, what each costs (seconds on a replica of normal speed) and its
    frames."""
    rng = np.random.default_rng(seed)
    mu = np.log(w.mean_s) - w.duration_sigma ** 2 / 2
    seconds = np.clip(rng.lognormal(mu, w.duration_sigma, w.videos), w.min_s, w.max_s)
    frames = np.maximum(1, np.round(seconds * w.fps)).astype(np.int64)
    extra = w.masklets / w.videos - 1
    drawn = rng.negative_binomial(w.objects_dispersion, w.objects_dispersion / (w.objects_dispersion + extra),
                                  w.videos).astype(np.float64)
    objects = 1 + np.floor(drawn * (w.masklets - w.videos) / max(drawn.sum(), 1)).astype(np.int64)
    short = w.masklets - int(objects.sum())  # the rounding: one more object for that many videos
    objects[rng.choice(w.videos, size=short, replace=False)] += 1
    work = (w.per_video_s + frames * (w.per_frame_s + w.per_object_frame_s * objects)) \
        * rng.lognormal(0.0, w.jitter_sigma, w.videos)
    size = seconds * rng.lognormal(0.0, w.bitrate_sigma, w.videos)
    ids = [f"sav_{i:06d}" for i in range(w.videos)]
    tasks = [VideoTask(v, f"s3://sa-v/{v}.mp4", (), int(o), video_cost(int(o), float(s)), file_size=float(s))
             for v, o, s in zip(ids, objects, size)]
    return plan_order(tasks), dict(zip(ids, work.tolist())), dict(zip(ids, frames.tolist()))


@dataclass
class _Replica:
    """A simulated worker replica: Ray's mailbox (tasks it runs one after the other) and its process's life."""

    key: ActorKey
    speed: float  # seconds of work per second of a normal replica (> 1: a straggler)
    mailbox: deque = field(default_factory=deque)  # tasks it runs in order (the first is running once alive)
    running: tuple | None = None  # (task, started, ends, stopped: it ends dropped)
    dropped: set = field(default_factory=set)  # videos in its mailbox the pool asked it to drop
    life: int = 0  # process generation: events of an earlier one are stale
    alive: bool = False
    deaths: int = 0
    up: list[list[float]] = field(default_factory=list)  # [from, to] it could work: up, and not down for a fault
    #                        of the cluster (death, node lost); the pool's own kills (time budgets) are its cost


class _Simulation:
    """The event loop: replicas, Ray's restarts, and the scheduler fed its events."""

    def __init__(self, tasks: list[VideoTask], work: dict[str, float], frames: dict[str, int], workers: int,
                 cluster: ClusterSpec, faults: Faults, seed: int) -> None:
        self.frames, self.cluster, self.faults = frames, cluster, faults
        self.rng = random.Random(seed)
        self.s = Scheduler(PoolPolicy.of(cluster), tasks, range(workers), 0.0, random.Random(seed + 1))
        hard = faults.hard_video_factor
        self.work = {t.video_id: work[t.video_id] * (hard if self.rng.random() < faults.hard_video_fraction else 1.0)
                     for t in tasks}  # what each video costs on a replica of normal speed, hard ones included
        self.events: list[tuple[float, int, str, ActorKey, int]] = []  # (time, seq, kind, replica, life)
        self.seq = itertools.count()
        self.results: list[WorkerResult] = []
        self.first_up: float | None = None
        self.restarts = 0
        self.lost = 0
        self.replicas: list[_Replica] = []
        span = sum(work.values()) / workers
        for key in range(workers):
            slow = self.rng.random() < faults.slow_worker_fraction
            r = _Replica(key, faults.slow_worker_factor if slow else 1.0)
            if self.rng.random() < faults.lost_fraction:  # some time during the run
                self._at(self.rng.uniform(0.0, span), "lost", r)
            self.replicas.append(r)
            self._at(self.rng.uniform(faults.start_s, 2 * faults.start_s), "up", r)
        self._at(faults.start_s, "poll", self.replicas[0])

    def _at(self, when: float, kind: str, r: _Replica) -> None:
        heapq.heappush(self.events, (when, next(self.seq), kind, r.key, r.life))

    def _identity(self, r: _Replica) -> WorkerIdentity:
        return WorkerIdentity(f"node{r.key}", 1000 * r.life + r.key, "cuda:0", "bfloat16")

    def run(self) -> float:
        """Runs every video to its final result; returns the time of the last one."""
        now = 0.0
        wake = None
        while not self.s.finished:
            if not self.events:
                raise RuntimeError("simulation stalled: no event pending and videos left")
            now, _, kind, key, life = heapq.heappop(self.events)
            r = self.replicas[key]
            if kind == "wake":
                wake = None if wake is not None and now >= wake else wake  # an earlier one is stale
            elif kind == "poll":
                self._poll(now)
            elif life == r.life or kind == "lost":  # a node is lost whatever its process went through
                getattr(self, f"_{kind}")(r, now)
            for dropped in self.s.start_expired(now):  # not up in time: the pool kills it for good
                self._kill(self.replicas[dropped], now, restart=False)
            if self.s.in_flight == 0 and self.s.starting == 0 and self.s.up == 0:
                self.results += self.s.abandon("all workers died")
                break
            for actor, vid in self.s.stealable(now):  # queued behind a straggler, or a useless backup: dropped
                self._drop(self.replicas[actor], vid, now)
                self.s.on_dropped(actor, vid, True, now)
            for actor, task in self.s.speculate(now):  # first: a backup may take a slot just freed
                self._send(self.replicas[actor], task, now)
            for actor, task in self.s.assign(now):
                self._send(self.replicas[actor], task, now)
            due = self.s.next_wakeup(now)
            if not self.s.fresh and not self.s.retries and self.s.in_flight < self.s.up * self.s.policy.depth:
                due = now + POLL_S if due is None else min(due, now + POLL_S)  # the pool's next status poll
            if due is not None and (wake is None or due < wake):
                wake = math.nextafter(max(due, now), math.inf)  # a start deadline has passed only after it
                heapq.heappush(self.events, (wake, next(self.seq), "wake", 0, 0))
        return now

    # -- a replica's life

    def _up(self, r: _Replica, now: float) -> None:
        """Its process is up (model built): Ray runs what waits in its mailbox; the pool's probe answers."""
        r.alive = True
        self.first_up = now if self.first_up is None else self.first_up
        if not r.up or r.up[-1][1] < math.inf:
            r.up.append([now, math.inf])
        if self.s.actors[r.key].phase is Phase.STARTING:
            self.s.on_actor_up(r.key, now)
        self._next_death(r, now)
        self._start_next(r, now)

    def _next_death(self, r: _Replica, now: float) -> None:
        rate = self.faults.deaths_per_worker_hour / 3600.0
        if rate > 0:
            self._at(now + self.rng.expovariate(rate), "death", r)

    def _send(self, r: _Replica, task: VideoTask, now: float) -> None:
        r.mailbox.append(task)
        if r.alive and r.running is None:
            self._start_next(r, now)

    def _start_next(self, r: _Replica, now: float) -> None:
        while r.mailbox and r.running is None and r.mailbox[0].video_id in r.dropped:  # ends at once, unwritten
            task = r.mailbox.popleft()
            r.dropped.discard(task.video_id)
            self._result(r, task, WorkerResult(task.video_id, Fault.ERROR, "dropped", objects=task.num_objects), now)
        if not r.mailbox or r.running is not None:
            return
        task = r.mailbox[0]
        slow = self.faults.slow_task_factor if self.rng.random() < self.faults.slow_task_fraction else 1.0
        ends = now + self.work[task.video_id] * r.speed * slow
        r.running = (task, now, ends, False)
        self._at(ends, "done", r)
        status = self._status(task, now)
        self.s.expired(now, {r.key: status})  # what the next status poll tells the pool (nothing expired yet)
        over = now + self.s.budget(status)
        if ends > over:  # the pool's status poll sees it past its budget
            self._at(over + POLL_S, "timeout", r)

    def _status(self, task: VideoTask, started: float, done: int = 0) -> WorkerStatus:
        """What the worker reports while on ``task`` with ``done`` frames done (the pool's budgets are read
        from it, its backups judged by it)."""
        return WorkerStatus(task.video_id, started, max(task.num_objects, 1), self.frames[task.video_id], done)

    def _poll(self, now: float) -> None:
        """The pool's status poll: every busy replica's frames done so far (its work goes at a steady pace)."""
        statuses = {}
        for r in self.replicas:
            if r.alive and r.running is not None:
                task, started, ends, _ = r.running
                frames = self.frames[task.video_id]
                statuses[r.key] = self._status(task, started, int(frames * (now - started) / (ends - started)))
        for actor, _reason in self.s.expired(now, statuses):
            self._kill(self.replicas[actor], now, restart=True)
        self._at(now + POLL_S, "poll", self.replicas[0])

    def _done(self, r: _Replica, now: float) -> None:
        if r.running is None or r.running[2] != now:
            return  # the end of a run stopped earlier
        task, started, _, stopped = r.running
        r.running = None
        r.mailbox.popleft()
        if stopped:
            r.dropped.discard(task.video_id)
            result = WorkerResult(task.video_id, Fault.ERROR, "dropped", objects=task.num_objects)
        else:
            result = WorkerResult(task.video_id, None, None, self.frames[task.video_id], task.num_objects,
                                  now - started, task.digest, worker=self._identity(r))
        self._result(r, task, result, now)
        self._start_next(r, now)

    def _result(self, r: _Replica, task: VideoTask, result: WorkerResult, now: float) -> None:
        verdict = self.s.on_result(r.key, task, result, now)
        self._verdict(r, verdict, now)

    def _verdict(self, r: _Replica, verdict: Verdict, now: float) -> None:
        if verdict.final:
            self.results.append(verdict.result)
        for key in verdict.cancel:  # a backup copy that lost: out of its mailbox if it waits there, else stopped
            other = self.replicas[key]
            vid = verdict.result.video_id
            if other.running is None or other.running[0].video_id != vid:
                task = next((t for t in other.mailbox if t.video_id == vid), None)
                if task is not None:
                    other.mailbox.remove(task)
                    self._result(other, task, WorkerResult(vid, Fault.ERROR, "cancelled", objects=task.num_objects),
                                 now)
            else:
                self._stop(other, now)
        for key in verdict.stop:  # an original outrun by its backup: dropped (it has written nothing)
            other = self.replicas[key]
            self._drop(other, verdict.result.video_id, now)
            dropped = self.s.on_dropped(key, verdict.result.video_id, True, now)
            if dropped is not None:
                self._verdict(other, dropped, now)
        if verdict.restart is Restart.REPLACE:
            self._kill(r, now, restart=True)

    def _drop(self, r: _Replica, vid: str, now: float) -> None:
        """The pool asked ``r`` to drop ``vid``: it fails as it starts when queued, stops when running."""
        r.dropped.add(vid)
        if r.running is not None and r.running[0].video_id == vid:
            self._stop(r, now)

    def _stop(self, r: _Replica, now: float) -> None:
        """The video ``r`` runs was dropped: it stops at its next frame, having written nothing."""
        task, started, ends, stopped = r.running
        if not stopped and now + STOP_S < ends:
            r.running = (task, started, now + STOP_S, True)
            self._at(now + STOP_S, "done", r)

    def _timeout(self, r: _Replica, now: float) -> None:
        if r.running is None:
            return
        task, started, _, _ = r.running
        for actor, _reason in self.s.expired(now, {r.key: self._status(task, started)}):
            self._kill(self.replicas[actor], now, restart=True)

    def _death(self, r: _Replica, now: float) -> None:
        self._down(r, now)
        self._kill(r, now, restart=r.deaths < self.cluster.max_restarts)

    def _lost(self, r: _Replica, now: float) -> None:
        if self.s.actors[r.key].phase is Phase.GONE:
            return
        self.lost += 1
        self._down(r, now)
        self._kill(r, now, restart=False)

    @staticmethod
    def _down(r: _Replica, now: float) -> None:
        """A fault of the cluster takes ``r`` down (until Ray's restart is up, if any)."""
        if r.up and r.up[-1][1] == math.inf:
            r.up[-1][1] = now

    def cluster_bound(self) -> float:
        """The least makespan any schedule could reach on the cluster this run had (from the first replica up):
        the work, hard videos included, spread over the replicas' time up at their speeds (a replica 3× slower
        does a third of the work in that time), and no less than the longest video."""
        rates = sorted((t, sign / r.speed) for r in self.replicas for span in r.up
                       for t, sign in ((span[0], 1), (span[1], -1)) if t < math.inf)
        left, rate, t = sum(self.work.values()), 0.0, rates[0][0] if rates else 0.0
        for when, change in rates:
            if rate > 0 and left <= rate * (when - t):
                break
            left -= rate * (when - t)
            t, rate = when, rate + change
        end = t + left / rate if rate > 0 else math.inf
        return max(end - (self.first_up or 0.0), max(self.work.values()))

    def _kill(self, r: _Replica, now: float, restart: bool) -> None:
        """The process dies: every video in its mailbox fails to the pool as a death, the running one first."""
        r.life += 1
        r.alive = False
        r.running = None
        r.deaths += 1
        failed, r.mailbox = list(r.mailbox), deque()
        r.dropped.clear()
        for task in failed:
            self._result(r, task, WorkerResult(task.video_id, Fault.DIED, "worker died", objects=task.num_objects),
                         now)
        if restart:
            self.restarts += 1
            self._at(now + self.faults.restart_s, "up", r)
        elif self.s.actors[r.key].phase is not Phase.GONE:
            self.s.on_actor_gone(r.key, now)  # its probe fails: Ray gave it up


def simulate(tasks: list[VideoTask], work: dict[str, float], frames: dict[str, int], workers: int, faults: Faults,
             seed: int, cluster: ClusterSpec | None = None) -> Outcome:
    """One run of the pool's policy on ``workers`` simulated replicas (``cluster``: the job's defaults); ``work`` and
    ``frames`` per video as ``sav_workload`` gives them (the bound counts hard videos at what they cost)."""
    sim = _Simulation(tasks, work, frames, workers, cluster or ClusterSpec(), faults, seed)
    end = sim.run()
    longest = max(sim.work.values())
    return Outcome(end - (sim.first_up or 0.0), max(sum(sim.work.values()) / workers, longest), sim.cluster_bound(),
                   longest, sim.results,
                   sum(r.deaths for r in sim.replicas), sim.restarts, sim.lost, sum(r.attempts for r in sim.results),
                   sim.s.backups, sim.s.stolen)


def run_section(cfg: dict[str, Any], seed: int, threads: int, target: str) -> list[Figure]:
    """Makespan against the bound for each worker count: with deaths, lost nodes and stragglers (the target), the
    same with hard videos too, and without any fault (the policy alone); then planning the same number of videos
    and masklets."""
    workload = Workload(**cfg["workload"])
    faults = Faults(**cfg["faults"])
    stragglers = replace(faults, hard_video_fraction=0.0)
    calm = replace(stragglers, deaths_per_worker_hour=0.0, lost_fraction=0.0, slow_worker_fraction=0.0,
                   slow_task_fraction=0.0)
    tasks, work, frames = sav_workload(workload, seed)
    figures = []
    for workers in cfg["workers"]:
        out = simulate(tasks, work, frames, workers, stragglers, seed)
        figures.append(figure("scheduling", f"makespan over the cluster's bound, {workers} workers",
                              _excess(out, out.cluster_bound), "%", target,
                              note=f"deaths, lost nodes, stragglers; {_note(out, len(tasks))}"))
        hard = simulate(tasks, work, frames, workers, faults, seed)
        figures.append(figure("scheduling", f"  with {faults.hard_video_fraction:.0%} hard videos too "
                                            f"({faults.hard_video_factor:g}x their size's cost)",
                              _excess(hard, hard.cluster_bound), "%", note=_note(hard, len(tasks))))
        alone = simulate(tasks, work, frames, workers, calm, seed)
        figures.append(figure("scheduling", "  without faults or stragglers", _excess(alone, alone.cluster_bound),
                              "%", note=f"{alone.makespan:.0f} s"))
    plan = cfg["plan"]
    shape = ManifestShape(workload.videos, workload.masklets, plan["mask_fraction"], plan["height"], plan["width"],
                          seed)
    with tempfile.TemporaryDirectory(prefix="bench-scheduling-") as tmp:
        manifest = str(write_manifest(Path(tmp) / "manifest.parquet", shape))
        measured = run_isolated(measure_plan, threads, manifest=manifest, data_root=str(Path(tmp) / "videos"))
    where = f"{measured['tasks']} videos, {measured['rows']} rows"
    figures += [
        figure("scheduling", f"driver planning ({where})", measured["seconds"], "s", plan["targets"]["seconds"],
               note=f"load_manifest {measured['load_seconds']:.1f} s + digests; CPU {measured['cpu_seconds']:.1f} s"),
        figure("scheduling", "driver peak RSS while planning", measured["peak_rss"] / GB, "GiB",
               plan["targets"]["peak_gib"], note=f"before planning {measured['rss_before'] / GB:.2f} GiB"),
    ]
    return figures


def _excess(out: Outcome, bound: float) -> float:
    """Percent by which the makespan exceeds ``bound``."""
    return 100.0 * (out.makespan / bound - 1.0)


def _note(out: Outcome, videos: int) -> str:
    """What a run went through, and its makespan against the bound of a cluster without faults."""
    done = sum(r.status is Status.DONE for r in out.results)
    return (f"{out.makespan:.0f} s vs {out.cluster_bound:.0f} s; {_excess(out, out.bound):.2f}% over "
            f"max(work / workers, longest video) = {out.bound:.0f} s; {done}/{videos} done; {out.deaths} deaths, "
            f"{out.restarts} restarts, {out.lost} lost, {out.attempts - videos} retries, {out.backups} backup "
            f"copies, {out.stolen} videos taken back from stragglers")
