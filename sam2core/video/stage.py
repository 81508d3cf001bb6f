"""Background stages: one worker thread joined to the thread that drives it by a bounded queue.

Work that can run beside the driving thread goes on a stage: the feature stream decodes and encodes frames ahead of
tracking (``ProducerStage``: the worker makes items, the driver takes them), the pipeline's output stage turns masks
into strings behind it (``ConsumerStage``: the driver hands items in, the worker uses them). Both share one contract:

- back-pressure: the queue holds at most ``depth`` items, so the side that adds waits for the other instead of
  growing memory;
- errors: an exception on the worker reaches the driver as that same exception (a producer's after the items it
  made before failing, a consumer's at the driver's next ``put`` or at ``finish``);
- abort: ``abort`` stops the worker without waiting for queued items; every wait polls the stop flag, and the worker
  gets a bounded time to return, so neither side waits forever.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_S = 0.1  # how often a waiting side looks at the stop flag
_ABORT_JOIN_S = 5.0  # how long ``abort`` waits for a worker busy inside its own work
_END = object()  # after a stage's last item in its queue
_ABORTED = object()  # what a wait for an item returns once the stage was aborted


class StageAborted(Exception):
    """Raised on the driving side of a stage that was aborted (e.g. a stage that reads from an aborted one)."""


class _Failed:
    """Carries a producer's exception through its queue, behind the items made before it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Stage(ABC):
    """The queue, the stop flag and the worker thread shared by both kinds of stage."""

    def __init__(self, depth: int, name: str) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    @abstractmethod
    def _work(self) -> None:
        """The worker thread's body."""

    @property
    def aborted(self) -> bool:
        """Whether ``abort`` was called (a worker checks this to skip work nobody will read)."""
        return self._stop.is_set()

    @property
    def alive(self) -> bool:
        """Whether the worker thread is still running."""
        return self._thread.is_alive()

    def full(self) -> bool:
        """Whether the queue holds ``depth`` items (the adding side is held back)."""
        return self._queue.full()

    def abort(self) -> bool:
        """Stop without waiting for queued items; returns whether the worker ended within its grace period (a
        worker blocked inside its own work, e.g. a stalled read, is left to end on its own as a daemon)."""
        self._stop.set()
        self._thread.join(timeout=_ABORT_JOIN_S)
        return not self._thread.is_alive()

    def _offer(self, item: object) -> bool:
        """Queue ``item``, waiting while the queue is full; False (item dropped) once the stage was aborted."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _take(self) -> object:
        """The next queued item, waiting while the queue is empty; ``_ABORTED`` once the stage was aborted."""
        while not self._stop.is_set():
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return _ABORTED


class ProducerStage(_Stage, Generic[T]):
    """Runs ``produce()`` on a worker thread, at most ``depth`` items ahead of the driver, which iterates the stage.

    Iterating yields the items in order, then re-raises the producer's exception if it failed; it raises
    StageAborted once the stage was aborted. A stage is iterated once.
    """

    def __init__(self, produce: Callable[[], Iterable[T]], depth: int, name: str) -> None:
        super().__init__(depth, name)
        self._produce = produce
        self._thread.start()

    def _work(self) -> None:
        try:
            for item in self._produce():
                if not self._offer(item):
                    return
            self._offer(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the driver, which re-raises it
            self._offer(_Failed(exc))

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._take()
            if item is _ABORTED:
                raise StageAborted(f"{self._thread.name} was aborted")
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]  # anything else in the queue came from ``produce``


class ConsumerStage(_Stage, Generic[T]):
    """Runs ``consume(items)`` on a worker thread over the items the driver hands in with ``put``.

    ``items`` ends after ``finish`` (or at once after ``abort``). ``put`` waits while ``depth`` items are queued; it
    and ``finish`` re-raise the consumer's exception once it failed (``error``).
    """

    def __init__(self, consume: Callable[[Iterator[T]], None], depth: int, name: str) -> None:
        super().__init__(depth, name)
        self._consume = consume
        self.error: BaseException | None = None  # the consumer's failure, re-raised on the driving side
        self._thread.start()

    def _work(self) -> None:
        try:
            self._consume(self._items())
        except BaseException as exc:  # noqa: BLE001 - handed to the driver by put/finish
            self.error = exc

    def _items(self) -> Iterator[T]:
        while True:
            item = self._take()
            if item is _ABORTED or item is _END:
                return
            yield item  # type: ignore[misc]  # anything else in the queue came from ``put``

    def put(self, item: T) -> None:
        """Hand ``item`` to the consumer; waits while the queue is full; re-raises the consumer's failure; raises
        StageAborted after ``abort``."""
        while True:
            self._raise()
            if self._stop.is_set():
                raise StageAborted(f"{self._thread.name} was aborted")
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """End the items and wait until the consumer has used every one; re-raises the consumer's failure."""
        try:
            self.put(_END)  # type: ignore[arg-type]  # the end marker shares the queue with the items
        finally:
            self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error
