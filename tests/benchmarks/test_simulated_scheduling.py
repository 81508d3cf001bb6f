"""benchmarks.scheduling: the pool's real policy on a simulated clock, small enough for CPU (outcomes, no timing)."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.scheduling import POLL_S, Faults, Workload, sav_workload, simulate
from pipeline.records import Fault, Status
from pipeline.specs import ClusterSpec

SMALL = Workload(videos=2000, masklets=25_200)
CALM = Faults(deaths_per_worker_hour=0.0, lost_fraction=0.0, slow_worker_fraction=0.0, slow_task_fraction=0.0,
              hard_video_fraction=0.0)


def test_workload_has_the_asked_size_largest_first() -> None:
    tasks, work, frames = sav_workload(SMALL, seed=3)
    assert len(tasks) == len(work) == len(frames) == 2000 and sum(t.num_objects for t in tasks) == 25_200
    assert min(t.num_objects for t in tasks) >= 1 and max(t.num_objects for t in tasks) > 40  # a long tail
    assert [t.cost for t in tasks] == sorted((t.cost for t in tasks), reverse=True)
    assert 15 < sum(work.values()) / len(work) < 35  # seconds per video on one replica, as assumed


@pytest.mark.parametrize("seed", [0, 1])
def test_every_video_ends_once_through_deaths_lost_replicas_and_stragglers(seed: int) -> None:
    tasks, work, frames = sav_workload(SMALL, seed)
    faults = Faults(deaths_per_worker_hour=1.0, lost_fraction=0.2, slow_worker_fraction=0.2, slow_task_fraction=0.05)
    out = simulate(tasks, work, frames, 16, faults, seed)
    assert Counter(r.video_id for r in out.results) == Counter(t.video_id for t in tasks)
    assert out.deaths > 0 and out.lost > 0 and out.restarts > 0
    assert any(r.attempts > 1 for r in out.results)  # videos of dead replicas were retried ...
    assert all(r.status is Status.DONE or r.attempts == ClusterSpec().max_attempts for r in out.results)
    assert sum(r.status is Status.DONE for r in out.results) > 0.99 * len(tasks)  # ... and almost all made it
    assert out.bound >= max(sum(work.values()) / 16, max(work.values()))  # hard videos count at what they cost
    assert out.bound <= out.makespan < float("inf")


def test_without_faults_every_video_is_done_once_near_the_bound() -> None:
    tasks, work, frames = sav_workload(SMALL, seed=0)
    out = simulate(tasks, work, frames, 16, CALM, 0)
    assert Counter(r.video_id for r in out.results) == Counter(t.video_id for t in tasks)
    assert all(r.status is Status.DONE and r.attempts == 1 for r in out.results)
    assert out.deaths == out.restarts == out.lost == 0
    assert out.bound <= out.makespan < 1.2 * out.bound


def test_videos_past_their_time_budget_fail_as_timeouts_the_others_are_done() -> None:
    """One video per replica at a time: a replica killed for time holds no other video."""
    tasks, work, frames = sav_workload(SMALL, seed=0)
    cluster = ClusterSpec(video_timeout_s=40.0, timeout_s_per_object_frame=0.0, tasks_per_worker=1)
    out = simulate(tasks, work, frames, 16, CALM, 0, cluster)
    ended = {r.video_id: r for r in out.results}
    assert len(ended) == len(out.results) == len(tasks)
    over = {v for v, s in work.items() if s > 40.0 + POLL_S}  # seen past its budget by a status poll
    assert over and all(ended[v].fault is Fault.TIMEOUT and ended[v].attempts == cluster.max_attempts for v in over)
    assert all(r.status is Status.DONE and r.attempts == 1 for v, r in ended.items() if work[v] <= 40.0)


def test_when_every_replica_is_lost_the_rest_fail_as_no_workers() -> None:
    tasks, work, frames = sav_workload(SMALL, seed=0)
    out = simulate(tasks, work, frames, 8, Faults(deaths_per_worker_hour=0.0, lost_fraction=1.0), 0)
    assert Counter(r.video_id for r in out.results) == Counter(t.video_id for t in tasks)
    assert out.lost == 8
    assert any(r.fault is Fault.NO_WORKERS for r in out.results)
    assert any(r.status is Status.DONE for r in out.results)


def test_replicas_that_restart_too_slowly_are_dropped_and_their_videos_run_elsewhere() -> None:
    tasks, work, frames = sav_workload(SMALL, seed=0)
    faults = Faults(deaths_per_worker_hour=2.0, restart_s=120.0, lost_fraction=0.0)
    out = simulate(tasks, work, frames, 16, faults, 0, ClusterSpec(start_timeout_s=60.0))
    assert Counter(r.video_id for r in out.results) == Counter(t.video_id for t in tasks)
    assert out.deaths > 0 and any(r.attempts > 1 for r in out.results)


def test_stragglers_get_backup_copies_and_lose_their_queues_each_video_ends_once() -> None:
    """Slow replicas and slow attempts, nothing else: the videos queued behind a straggler are taken back, the last
    stragglers get backup copies, and every video is done once, in one attempt, sooner than without any of it."""
    tasks, work, frames = sav_workload(SMALL, seed=0)
    slow = Faults(deaths_per_worker_hour=0.0, lost_fraction=0.0, slow_worker_fraction=0.2, slow_task_fraction=0.05,
                  hard_video_fraction=0.0)
    out = simulate(tasks, work, frames, 16, slow, 0)
    plain = simulate(tasks, work, frames, 16, slow, 0, ClusterSpec(speculate_after=0.0))
    assert out.backups > 0 and out.stolen > 0 and plain.backups == plain.stolen == 0
    assert Counter(r.video_id for r in out.results) == Counter(t.video_id for t in tasks)
    assert all(r.status is Status.DONE and r.attempts == 1 for r in out.results)
    assert out.makespan < plain.makespan
