"""The pool's policy without Ray: queue order, retries and backoff, attempts, avoidance, time budgets, out of memory,
a replaced worker's queued tasks, start timeouts, stragglers (videos taken back from behind them, backup copies).
Time is a number the test passes in."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from pipeline.driver.scheduling import Phase, PoolPolicy, Restart, Scheduler
from pipeline.plan.tasks import VideoTask
from pipeline.records import Fault, Status, WorkerResult, WorkerStatus
from pipeline.specs import ClusterSpec


class _Middle(random.Random):
    """Jitter fixed at its middle, so that backoff delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def _policy(**changes: float) -> PoolPolicy:
    """The job's default policy (``ClusterSpec()``) with ``changes`` (PoolPolicy field names)."""
    return replace(PoolPolicy.of(ClusterSpec()), **changes)


def _tasks(n: int, objects: int = 2) -> list[VideoTask]:
    return [VideoTask(f"v{i}", f"v{i}.mp4", (), objects, float(n - i)) for i in range(n)]


def _scheduler(tasks: list[VideoTask], actors: int = 2, **policy: float) -> Scheduler:
    s = Scheduler(_policy(**{"retry_backoff_s": 2.0, **policy}), tasks, range(actors), now=0.0, rng=_Middle())
    for a in range(actors):
        s.on_actor_up(a, 0.0)
    return s


def _done(task: VideoTask) -> WorkerResult:
    return WorkerResult(task.video_id, frames=10, objects=task.num_objects)


def _failed(task: VideoTask, fault: Fault, **extra: object) -> WorkerResult:
    return WorkerResult(task.video_id, fault, f"{fault.value}: boom", objects=task.num_objects, **extra)


def test_tasks_go_out_in_queue_order_depth_per_actor_in_the_order_actors_came_up() -> None:
    tasks = _tasks(8)
    s = Scheduler(_policy(depth=2), tasks, range(2), now=0.0, rng=_Middle())
    assert s.assign(0.0) == []  # nobody is up yet
    s.on_actor_up(1, 1.0)
    s.on_actor_up(0, 2.0)
    assert s.assign(2.0) == [(1, tasks[0]), (1, tasks[1]), (0, tasks[2]), (0, tasks[3])]
    assert s.in_flight == 4 and s.assign(3.0) == []
    verdict = s.on_result(0, tasks[2], _done(tasks[2]), 4.0)
    assert verdict.final and verdict.result.attempts == 1 and verdict.result.status is Status.DONE
    assert s.assign(4.0) == [(0, tasks[4])]
    s.on_result(1, tasks[0], _done(tasks[0]), 5.0)
    assert s.assign(5.0) == [(1, tasks[5])]
    # near the end (no more tasks waiting than actors up) none waits behind a busy actor
    s.on_result(0, tasks[3], _done(tasks[3]), 6.0)
    assert s.assign(6.0) == [] and list(s.fresh) == tasks[6:]  # actor 0 still runs tasks[4]
    s.on_result(0, tasks[4], _done(tasks[4]), 7.0)
    assert s.assign(7.0) == [(0, tasks[6])]  # idle now
    for actor, task in ((1, tasks[1]), (1, tasks[5]), (0, tasks[6])):
        s.on_result(actor, task, _done(task), 8.0)
    assert s.assign(8.0) == [(1, tasks[7])] and not s.finished
    s.on_result(1, tasks[7], _done(tasks[7]), 9.0)
    assert s.finished


def test_a_retryable_failure_comes_back_after_its_backoff_and_a_permanent_one_is_final() -> None:
    tasks = _tasks(2)
    s = _scheduler(tasks, actors=1)
    assert s.assign(0.0) == [(0, tasks[0])]  # the last task waits for an idle actor
    verdict = s.on_result(0, tasks[0], _failed(tasks[0], Fault.ERROR), 10.0)
    assert not verdict.final and verdict.retry_in == 2.0 and verdict.attempt == 1
    assert s.next_wakeup(10.0) == 12.0 and not s.finished
    assert s.assign(10.0) == [(0, tasks[1])]
    bad = s.on_result(0, tasks[1], _failed(tasks[1], Fault.BAD_INPUT), 10.0)
    assert bad.final and bad.result.attempts == 1 and not bad.result.retryable
    assert s.assign(11.9) == []  # not due yet
    assert s.assign(12.0) == [(0, tasks[0])]
    verdict = s.on_result(0, tasks[0], _done(tasks[0]), 13.0)
    assert verdict.final and verdict.result.attempts == 2 and s.finished


def test_backoff_doubles_per_attempt_and_max_attempts_ends_it() -> None:
    (task,) = _tasks(1)
    s = _scheduler([task], actors=1, max_attempts=4)
    now, delays = 0.0, []
    while True:
        assert s.assign(now) == [(0, task)]
        verdict = s.on_result(0, task, _failed(task, Fault.INPUT_UNAVAILABLE), now)
        if verdict.final:
            break
        delays.append(verdict.retry_in)
        now = s.next_wakeup(now)
    assert delays == [2.0, 4.0, 8.0]
    assert verdict.result.attempts == 4 and verdict.result.fault is Fault.INPUT_UNAVAILABLE and s.finished
    jittered = Scheduler(_policy(retry_backoff_s=2.0), [], [], now=0.0, rng=random.Random(7))
    assert all(0.5 * 2 ** k * 2.0 <= jittered.backoff(k + 1) <= 1.5 * 2 ** k * 2.0 for k in range(5))


def test_a_retry_avoids_the_actor_it_failed_on_unless_no_other_is_up() -> None:
    tasks = _tasks(1)
    s = _scheduler(tasks, actors=2, depth=1)
    assert s.assign(0.0) == [(0, tasks[0])]
    s.on_result(0, tasks[0], _failed(tasks[0], Fault.ERROR), 0.0)
    assert s.assign(100.0) == [(1, tasks[0])]  # actor 0 came first and is free, but the video failed there
    s.on_result(1, tasks[0], _failed(tasks[0], Fault.ERROR), 100.0)
    assert s.assign(1000.0) == [(0, tasks[0])]  # it failed on both: either will do

    task = _tasks(1)[0]
    s = _scheduler([task], actors=2, depth=1)
    s.assign(0.0)
    s.on_result(0, task, _failed(task, Fault.ERROR), 0.0)
    s.on_actor_lost(1, 1.0)  # the only other actor is down
    assert s.assign(100.0) == [(0, task)]


def test_out_of_memory_is_retried_with_half_of_what_the_attempt_batched() -> None:
    (task,) = _tasks(1, objects=40)
    s = _scheduler([task], actors=1)
    s.assign(0.0)
    verdict = s.on_result(0, task, _failed(task, Fault.OUT_OF_MEMORY, object_batch=16), 0.0)
    assert not verdict.final and verdict.restart is Restart.NONE
    ((_, retry),) = s.assign(10.0)
    assert retry.object_batch == 8
    s.on_result(0, retry, _failed(retry, Fault.OUT_OF_MEMORY, object_batch=8), 10.0)
    ((_, again),) = s.assign(100.0)
    assert again.object_batch == 4


def test_a_video_past_its_budget_kills_its_actor_and_fails_as_timed_out() -> None:
    tasks = _tasks(3)
    s = _scheduler(tasks, actors=1, max_attempts=1, video_timeout_s=60, timeout_s_per_object_frame=0.5)
    assert s.assign(0.0) == [(0, tasks[0]), (0, tasks[1])]
    status = WorkerStatus("v0", started=1000.0, objects=2, frames=100, frames_done=30)
    assert s.budget(status) == 160.0
    assert s.expired(1160.0, {0: status}) == []  # at its budget, not past it
    assert s.expired(1161.0, {0: None}) == []  # idle
    assert s.expired(1161.0, {0: status}) == [(0, "timed out after 160 s")]
    assert s.actors[0].phase is Phase.STARTING and s.up == 0
    assert s.expired(1162.0, {0: status}) == []  # already being replaced
    # Ray fails the actor's tasks: the running one as timed out, the queued one as a death that costs it nothing
    died = s.on_result(0, tasks[0], _failed(tasks[0], Fault.DIED), 1162.0)
    assert died.final and died.result.fault is Fault.TIMEOUT and died.result.error == "timed out after 160 s"
    assert died.restart is Restart.NONE  # already restarting: its probe is out
    queued = s.on_result(0, tasks[1], _failed(tasks[1], Fault.DIED), 1162.0)
    assert not queued.final and queued.retry_in == 0.0 and queued.restart is Restart.NONE
    assert s.attempts["v1"] == 0 and "v1" not in s.failed_on and list(s.retries) == [tasks[1]]
    s.on_actor_up(0, 1200.0)
    assert s.assign(1200.0) == [(0, tasks[1])]  # its one attempt (max_attempts=1) is still to come
    assert s.on_result(0, tasks[1], _done(tasks[1]), 1210.0).result.attempts == 1


def test_a_replaced_workers_queued_tasks_get_their_attempt_back_and_go_out_again() -> None:
    tasks = _tasks(6)
    s = _scheduler(tasks, actors=2, depth=2)
    assert s.assign(0.0) == [(0, tasks[0]), (0, tasks[1]), (1, tasks[2]), (1, tasks[3])]
    gpu = s.on_result(0, tasks[0], _failed(tasks[0], Fault.GPU_FAULT), 1.0)
    assert gpu.restart is Restart.REPLACE and not gpu.final
    assert s.actors[0].phase is Phase.STARTING and s.actors[0].in_flight == 1  # tasks[1] still in its mailbox
    died = s.on_result(0, tasks[1], _failed(tasks[1], Fault.DIED), 1.5)  # it dies with the old process
    assert not died.final and died.retry_in == 0.0 and died.restart is Restart.NONE  # a death already known
    assert s.attempts["v1"] == 0 and "v1" not in s.failed_on and s.up == 1
    s.on_actor_up(0, 2.0)
    s.on_result(1, tasks[2], _done(tasks[2]), 2.0)
    # the GPU fault's retry avoids actor 0; the queued one may go anywhere, and ahead of fresh tasks
    assert s.assign(5.0) == [(1, tasks[0]), (0, tasks[1])]
    died = s.on_result(0, tasks[1], _failed(tasks[1], Fault.DIED), 6.0)  # now it ran there: an attempt
    assert not died.final and died.restart is Restart.PROBE and s.attempts["v1"] == 1 and s.failed_on["v1"] == {0}


def test_a_worker_that_does_not_start_in_time_is_dropped_and_the_rest_fails_without_workers() -> None:
    tasks = _tasks(3)
    s = Scheduler(_policy(start_timeout_s=30.0), tasks, range(2), now=0.0, rng=_Middle())
    assert s.next_wakeup(0.0) == 30.0 and s.start_expired(30.0) == []
    s.on_actor_up(0, 10.0)
    assert s.start_expired(30.5) == [1] and s.starting == 0 and s.actors[1].phase is Phase.GONE
    s.assign(31.0)
    s.on_result(0, tasks[0], _failed(tasks[0], Fault.DIED), 40.0)
    s.on_actor_gone(0, 41.0)  # its probe failed: restarts used up
    assert (s.up, s.starting, s.in_flight) == (0, 0, 1)
    s.on_result(0, tasks[1], _failed(tasks[1], Fault.DIED), 42.0)
    left = s.abandon("all workers died")
    assert [(r.video_id, r.fault, r.error, r.attempts) for r in left] == [
        ("v1", Fault.NO_WORKERS, "all workers died", 0), ("v2", Fault.NO_WORKERS, "all workers died", 0),
        ("v0", Fault.NO_WORKERS, "all workers died", 1)]  # v1 was only queued: due at once, no attempt spent;
    #                                                     then the queue, then the retries waiting out their backoff
    assert s.finished


def test_a_restart_resets_the_start_deadline() -> None:
    s = _scheduler(_tasks(1), actors=1, start_timeout_s=30.0)
    assert s.next_wakeup(0.0) is None
    assert s.on_actor_lost(0, 100.0) and not s.on_actor_lost(0, 101.0)
    assert s.next_wakeup(100.0) == 130.0 and s.start_expired(120.0) == []
    s.on_actor_up(0, 125.0)
    assert s.start_expired(200.0) == [] and s.next_wakeup(200.0) is None


def _timed(task: VideoTask, seconds: float = 10.0) -> WorkerResult:
    """Done in ``seconds``: 100 frames of 2 objects (what the throughput fit learns from)."""
    return WorkerResult(task.video_id, frames=100, objects=2, seconds=seconds)


def _v0_behind(tasks: list[VideoTask]) -> Scheduler:
    """Three actors, one video each from t=0; actors 1 and 2 finish theirs at t=10 and take the next two, actor 0
    is still on v0 (100 frames, 2 objects)."""
    s = _scheduler(tasks, actors=3, depth=1)
    assert s.assign(0.0) == [(0, tasks[0]), (1, tasks[1]), (2, tasks[2])]
    s.expired(0.0, {0: WorkerStatus("v0", started=0.0, objects=2, frames=100)})
    for actor, task in ((1, tasks[1]), (2, tasks[2])):
        s.on_result(actor, task, _timed(task), 10.0)
    assert s.assign(10.0) == [(1, tasks[3]), (2, tasks[4])]
    return s


def _straggling() -> tuple[Scheduler, list[VideoTask]]:
    """Three actors one video each; actor 0 stays on v0 (100 frames, 2 objects, from t=0) while the others do the
    rest in 10 s a video: v0 is expected to take 10 s, so it is overdue (speculate_after 2) from t=20."""
    tasks = _tasks(5)
    s = _v0_behind(tasks)
    assert s.speculate(10.0) == []  # tasks waited until now, and no actor is idle
    for actor, task in ((1, tasks[3]), (2, tasks[4])):
        s.on_result(actor, task, _timed(task), 12.0)
    assert s.expected(s.actors[0].status) == 10.0
    return s, tasks


def test_a_straggler_gets_one_backup_copy_once_nothing_waits_and_a_backup_that_wins_is_marked_by_the_driver() -> None:
    s, tasks = _straggling()
    assert s.speculate(19.0) == []  # 19 s: not yet twice its expected time
    assert s.speculate(21.0) == [(1, tasks[0])] and s.backups == 1 and s.attempts["v0"] == 1  # no attempt
    assert s.speculate(30.0) == []  # one backup per video
    won = s.on_result(1, tasks[0], _timed(tasks[0]), 31.0)
    assert not won.final and won.retry_in is None and won.stop == (0,)  # the original must write nothing
    final = s.on_dropped(0, "v0", True, 31.5)  # it had not begun writing: the driver writes the done marker
    assert final.final and final.mark_done and final.result.attempts == 1 and final.restart is Restart.NONE
    assert s.finished  # the original stops at its next frame (the worker checks between frames): no restart
    late = s.on_result(0, tasks[0], _failed(tasks[0], Fault.ERROR), 32.0)  # the stopped copy
    assert late.superseded and not late.final


def test_an_original_that_wins_has_its_backup_cancelled_and_one_already_writing_keeps_its_own_marker() -> None:
    s, tasks = _straggling()
    assert s.speculate(21.0) == [(1, tasks[0])]
    first = s.on_result(0, tasks[0], _timed(tasks[0], 25.0), 25.0)
    assert first.final and not first.mark_done and first.cancel == (1,)
    assert s.on_result(1, tasks[0], _failed(tasks[0], Fault.ERROR), 25.5).superseded  # cancelled

    s, tasks = _straggling()
    s.speculate(21.0)
    assert s.on_result(1, tasks[0], _timed(tasks[0]), 31.0).stop == (0,)
    assert s.on_dropped(0, "v0", False, 31.5) is None  # its writes had begun: its own result decides
    own = s.on_result(0, tasks[0], _timed(tasks[0], 32.0), 32.0)
    assert own.final and not own.mark_done and own.result.seconds == 32.0


def test_a_video_queued_behind_a_straggler_is_taken_back_and_runs_elsewhere_with_its_attempt() -> None:
    tasks = _tasks(8)
    s = _scheduler(tasks, actors=2, depth=2)
    assert s.assign(0.0) == [(0, tasks[0]), (0, tasks[1]), (1, tasks[2]), (1, tasks[3])]
    s.expired(0.0, {0: WorkerStatus("v0", started=0.0, objects=2, frames=100)})
    for t, (task, nxt) in enumerate(((tasks[2], tasks[4]), (tasks[3], tasks[5]))):
        s.on_result(1, task, _timed(task), 10.0 * (t + 1))
        assert s.assign(10.0 * (t + 1)) == [(1, nxt)]
    assert s.stealable(25.0) == []  # two videos in the fit: nothing is judged yet
    s.on_result(1, tasks[4], _timed(tasks[4]), 30.0)  # the third: v0 (expected 10 s) is overdue since t=20
    assert s.stealable(30.0) == [(0, "v1")] and s.stealable(31.0) == []  # asked once
    assert s.on_dropped(0, "v1", True, 31.0) is None  # dropped: back first in the queue, attempt given back
    assert list(s.retries) == [tasks[1]] and s.attempts["v1"] == 0 and s.stolen == 1
    assert s.assign(31.0) == [(1, tasks[1])]  # not to actor 0 (it has a free slot now)
    assert s.on_result(0, tasks[1], _failed(tasks[1], Fault.ERROR), 40.0).superseded  # the dropped copy
    assert s.on_result(1, tasks[1], _timed(tasks[1]), 41.0).result.attempts == 1


def test_the_policy_is_the_cluster_specs() -> None:
    cluster = ClusterSpec(tasks_per_worker=3, max_attempts=5, speculate_after=0.0)
    assert PoolPolicy.of(cluster) == PoolPolicy(3, 5, cluster.retry_backoff_s, cluster.video_timeout_s,
                                                cluster.timeout_s_per_object_frame, cluster.start_timeout_s, 0.0)
    s, tasks = _straggling()
    s.policy = replace(s.policy, speculate_after=0.0)
    assert s.speculate(1000.0) == [] and s.stealable(1000.0) == []  # 0: never


def test_a_video_that_would_end_the_job_gets_a_backup_while_tasks_still_wait() -> None:
    """Tail backups: a running video projected (from its frames done) to end long after the rest of the work gets
    a backup copy on a free actor though tasks still wait; one that keeps pace with the rest does not."""
    tasks = _tasks(8)
    s = _v0_behind(tasks)
    s.on_result(1, tasks[3], _timed(tasks[3]), 15.0)  # the third video done: v0 is expected to take 10 s
    s.expired(15.0, {0: WorkerStatus("v0", started=0.0, objects=2, frames=100, frames_done=90)})
    assert s.speculate(15.0) == []  # projected to end at ~17 s, with the rest of the work
    assert s.assign(15.0) == [(1, tasks[5])]
    s.on_result(2, tasks[4], _timed(tasks[4]), 100.0)
    s.expired(100.0, {0: WorkerStatus("v0", started=0.0, objects=2, frames=100, frames_done=62)})  # ends at ~161 s
    assert s.speculate(100.0) == [(2, tasks[0])]  # before v6 and v7, which still wait
    assert list(s.fresh) == tasks[6:] and s.backups == 1 and s.attempts["v0"] == 1  # a backup is no attempt
    assert s.assign(100.0) == [] and s.speculate(110.0) == []  # one backup per video


def test_the_queue_takes_the_order_of_the_fitted_seconds_once_enough_videos_are_done() -> None:
    """The driver's cost is a prior: once 16 videos are done the queue is put in the order of the seconds fitted
    per byte of file (an encoder's share plus a tracker's per object), largest first; ties keep their order."""
    big_few = [VideoTask(f"a{i}", "a.mp4", (), 1, 50.0, file_size=100.0) for i in range(20)]  # 1 object
    small_many = [VideoTask(f"b{i}", "b.mp4", (), 20, 50.0, file_size=10.0) for i in range(20)]  # 20 objects
    s = _scheduler([t for pair in zip(big_few, small_many) for t in pair], actors=1, depth=1)  # a0 b0 a1 b1 ...
    for k in range(16):  # 100 bytes of 1 object: 10 s; 10 bytes of 20 objects: 20 s (a tracker-heavy model)
        (_, task), = s.assign(float(k))
        seconds = 10.0 if task.video_id.startswith("a") else 20.0
        s.on_result(0, task, WorkerResult(task.video_id, frames=100, objects=task.num_objects, seconds=seconds),
                    float(k))
    assert [t.video_id for t in s.fresh] == [f"b{i}" for i in range(8, 20)] + [f"a{i}" for i in range(8, 20)]
    assert s.seconds(small_many[0]) == pytest.approx(20.0) and s.seconds(big_few[0]) == pytest.approx(10.0)


def test_a_straggler_is_seen_from_the_running_videos_pace_before_any_video_is_done() -> None:
    """First wave, nothing done: four videos run, one at a quarter of the others' pace; a free actor gets a
    backup copy of it at the first look."""
    tasks = _tasks(5)
    s = _scheduler(tasks, actors=5, depth=1)
    assert len(s.assign(0.0)) == 5
    s.on_result(4, tasks[4], _failed(tasks[4], Fault.BAD_INPUT), 1.0)  # actor 4 is free, nothing is done
    statuses = {a: WorkerStatus(f"v{a}", started=0.0, objects=2, frames=100, frames_done=40) for a in range(3)}
    statuses[3] = WorkerStatus("v3", started=0.0, objects=2, frames=100, frames_done=10)  # 4x slower
    s.expired(4.0, statuses)
    assert s.expected(statuses[3]) is None  # nothing done, nor fitted yet
    assert s.speculate(4.0) == [(4, tasks[3])]  # 40 s projected, more than twice the expected:
    assert s.expected(statuses[3]) == pytest.approx((10.0 * 3 + 40.0) / 4)  # the four's pace, averaged


def test_a_backup_no_faster_than_its_original_is_stopped_and_the_video_gets_no_other() -> None:
    s, tasks = _straggling()
    assert s.speculate(21.0) == [(1, tasks[0])]  # v0 is overdue: a backup on actor 1
    s.expired(30.0, {0: WorkerStatus("v0", started=0.0, objects=2, frames=100, frames_done=40),  # ends at 75 s
                     1: WorkerStatus("v0", started=21.0, objects=2, frames=100, frames_done=15)})  # at 81 s
    assert s.speculate(30.0) == [] and s.stealable(30.0) == [(1, "v0")]  # slow wherever it runs: stop the copy
    assert s.on_dropped(1, "v0", True, 30.5) is None  # it stops at its next frame, writing nothing
    assert s.on_result(1, tasks[0], _failed(tasks[0], Fault.ERROR), 31.0).superseded
    assert s.speculate(40.0) == [] and s.backups == 1 and s.stolen == 0  # no other backup, nothing requeued
    assert s.on_result(0, tasks[0], _timed(tasks[0], 75.0), 75.0).final


def test_a_slow_actor_is_judged_at_its_own_speed() -> None:
    """A replica three times slower than the others is not a straggler on every video it runs: its videos are
    overdue only past speculate_after times its own pace."""
    tasks = _tasks(20)
    s = _scheduler(tasks, actors=3, depth=1)
    assert len(s.assign(0.0)) == 3  # v0 on actor 0, v1 on 1, v2 on 2
    for actor, task, now in ((1, tasks[1], 10.0), (2, tasks[2], 10.0)):
        s.on_result(actor, task, _timed(task), now)
    assert s.assign(10.0) == [(1, tasks[3]), (2, tasks[4])]
    s.on_result(1, tasks[3], _timed(tasks[3]), 20.0)  # three done in 10 s each: the fit
    s.on_result(0, tasks[0], _timed(tasks[0], 30.0), 30.0)  # actor 0 took 30 s
    assert s.actors[0].speed == pytest.approx(2.0) and s.actors[1].speed == pytest.approx(1.0)  # (3 + 1) / 2
    assert s.assign(30.0) == [(0, tasks[5]), (1, tasks[6])]
    s.on_result(1, tasks[6], _failed(tasks[6], Fault.BAD_INPUT), 30.0)  # actor 1 is free for a backup
    assert s.expected(WorkerStatus("v5", 30.0, 2, 100)) == 15.0  # (10 + 10 + 10 + 30) / 4
    s.expired(40.0, {0: WorkerStatus("v5", started=30.0, objects=2, frames=100, frames_done=40)})  # 25 s
    assert s.speculate(40.0) == []  # within twice the expected at its own pace (2 × 15 × 2 = 60 s)
    s.expired(50.0, {0: WorkerStatus("v5", started=30.0, objects=2, frames=100, frames_done=20)})  # 100 s
    assert s.speculate(50.0) == [(1, tasks[5])]
