"""How every benchmark figure is measured: in a fresh process, best of several timed runs, with its own memory peak.

A fresh (spawned) process matters three ways: ``ru_maxrss`` is a per-process high-water mark, so each figure gets
its own; the official ``sam2`` package initialises its own Hydra and cannot build inside a ``@hydra.main`` app; and
a measurement cannot inherit warm caches or allocator state from the one before.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, NamedTuple


def _init_child(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


class Isolated:
    """A new spawned process with ``threads`` torch/OpenMP threads that stays alive for several calls (what one call
    leaves in the process's module globals, the next finds); a context manager that ends the process."""

    def __init__(self, threads: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(1, mp_context=context, initializer=_init_child, initargs=(threads,))

    def call(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """``fn(**kwargs)`` in the process; ``fn`` must be a module-level function taking and returning plain
        (picklable) values."""
        return self._pool.submit(fn, **kwargs).result()

    def __enter__(self) -> "Isolated":
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown()


def run_isolated(fn: Callable[..., Any], threads: int, **kwargs: Any) -> Any:
    """``fn(**kwargs)`` in a new spawned process with ``threads`` torch/OpenMP threads; returns its result."""
    with Isolated(threads) as process:
        return process.call(fn, **kwargs)


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class Timed(NamedTuple):
    """A timed step of ``interleaved_best``: ``prepare()`` runs before each call, outside the timing."""

    step: Callable[[], Any]
    prepare: Callable[[], Any] | None = None

    def once(self, device: str) -> tuple[float, Any]:
        """Seconds of one call of ``step`` (prepared outside the timing, the device synchronised around it) and what
        it returned."""
        if self.prepare is not None:
            self.prepare()
        sync(device)
        start = time.perf_counter()
        result = self.step()
        sync(device)
        return time.perf_counter() - start, result


def interleaved_best(steps: dict[str, Timed], warmup: int, runs: int, device: str = "cpu",
                     on_last: Callable[[str, Any], None] | None = None) -> dict[str, float]:
    """Fastest of ``runs`` timed calls of each step, the steps taking turns in every round (``warmup`` untimed
    rounds first). On a shared machine the load drifts over minutes; taking turns exposes every step to the same
    drift, so their ratio is steadier than when each is timed in a block of its own. ``on_last(name, result)`` gets
    each step's result of the last round (e.g. to compare outputs), as soon as it is made."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    best = dict.fromkeys(steps, float("inf"))
    for i in range(warmup + runs):
        for name, timed in steps.items():
            seconds, result = timed.once(device)
            if i >= warmup:
                best[name] = min(best[name], seconds)
            if i == warmup + runs - 1 and on_last is not None:
                on_last(name, result)
            del result
    return best


def best_seconds(step: Callable[[], Any], warmup: int, runs: int, prepare: Callable[[], Any] | None = None,
                 device: str = "cpu") -> tuple[float, Any]:
    """Fastest of ``runs`` timed calls of ``step()`` after ``warmup`` untimed ones, and what the last call returned.

    ``prepare()`` runs before each call, outside the timing; the device is synchronised around each timed call.
    """
    last: list[Any] = []
    best = interleaved_best({"step": Timed(step, prepare)}, warmup, runs, device,
                            on_last=lambda _, result: last.append(result))
    return best["step"], last[0]


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark: ``VmHWM`` of /proc/self/status (KiB). Not ``ru_maxrss``: Linux
    carries that over an exec, so a spawned measuring process would report its parent's size at the fork."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024


def current_rss_bytes() -> int:
    """This process's resident set now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
