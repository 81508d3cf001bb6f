"""Background stages: bounded (a fast side waits), errors reach the driving thread, abort never hangs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from sam2core.video.stage import ConsumerStage, ProducerStage, StageAborted


def _wait_until(condition, what: str) -> None:
    """Wait for another thread to reach a state (a generous bound against a deadlock, not a timing check)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def test_producer_yields_in_order_and_stays_at_most_depth_ahead() -> None:
    made = []

    def produce() -> Iterator[int]:
        for i in range(20):
            made.append(i)
            yield i

    stage = ProducerStage(produce, depth=3, name="test-producer")
    _wait_until(stage.full, "the queue filled")
    assert stage.alive and len(made) <= 3 + 1  # the queue, plus the item waiting to enter it
    assert list(stage) == list(range(20))
    _wait_until(lambda: not stage.alive, "the producer ended")


def test_producer_error_arrives_after_the_items_made_before_it() -> None:
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise KeyError("frame 3 is missing")

    seen = []
    with pytest.raises(KeyError, match="frame 3 is missing"):
        for item in ProducerStage(produce, depth=1, name="test-producer"):
            seen.append(item)
    assert seen == [1, 2]


def test_abort_frees_a_producer_blocked_on_a_full_queue_and_its_readers() -> None:
    stage = ProducerStage(lambda: iter(range(10**6)), depth=2, name="test-producer")
    _wait_until(stage.full, "the queue filled")
    assert stage.abort() and not stage.alive
    with pytest.raises(StageAborted):
        next(iter(stage))

    # a stage reading from an aborted stage ends with StageAborted instead of waiting for an item
    source = ProducerStage(lambda: iter(range(10**6)), depth=1, name="test-source")
    relay = ProducerStage(lambda: iter(source), depth=1, name="test-relay")
    _wait_until(lambda: source.full() and relay.full(), "both queues filled")
    assert source.abort()
    with pytest.raises(StageAborted):
        list(relay)
    _wait_until(lambda: not relay.alive, "the relay ended")


def test_abort_returns_while_the_worker_is_stuck_in_its_own_work() -> None:
    stall = threading.Event()
    stage = ProducerStage(lambda: iter(stall.wait, True), depth=1, name="test-stalled")
    assert stage.abort() is False and stage.alive  # left behind as a daemon, the caller goes on
    stall.set()
    _wait_until(lambda: not stage.alive, "the stalled worker ended")


def test_consumer_gets_every_item_and_holds_the_driver_back() -> None:
    release, used = threading.Event(), []

    def consume(items: Iterator[int]) -> None:
        release.wait()
        used.extend(items)

    stage: ConsumerStage[int] = ConsumerStage(consume, depth=2, name="test-consumer")
    handed = []

    def drive() -> None:
        for i in range(10):
            stage.put(i)
            handed.append(i)

    driver = threading.Thread(target=drive)
    driver.start()
    _wait_until(stage.full, "the queue filled")
    assert driver.is_alive() and len(handed) <= 2  # the third put waits for room
    release.set()
    driver.join()
    stage.finish()
    assert used == list(range(10)) and not stage.alive


def test_consumer_error_is_raised_by_put_and_finish() -> None:
    def consume(items: Iterator[int]) -> None:
        for i in items:
            if i == 3:
                raise ValueError(f"item {i} is bad")

    stage: ConsumerStage[int] = ConsumerStage(consume, depth=1, name="test-consumer")
    with pytest.raises(ValueError, match="item 3 is bad"):
        for i in range(1000):
            stage.put(i)
    with pytest.raises(ValueError, match="item 3 is bad"):
        stage.finish()
    assert isinstance(stage.error, ValueError) and not stage.alive


def test_consumer_abort_drops_queued_items() -> None:
    holding, release, used = threading.Event(), threading.Event(), []

    def consume(items: Iterator[int]) -> None:
        for i in items:
            holding.set()
            release.wait()
            used.append(i)

    stage: ConsumerStage[int] = ConsumerStage(consume, depth=4, name="test-consumer")
    for i in range(4):
        stage.put(i)
    holding.wait()
    aborting = threading.Thread(target=stage.abort)
    aborting.start()
    _wait_until(lambda: stage.aborted, "abort was called")
    release.set()
    aborting.join()
    assert used == [0] and not stage.alive  # the item it held is finished, the queued ones are dropped
    with pytest.raises(StageAborted):
        stage.put(99)
