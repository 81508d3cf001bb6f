"""Run one measurement in a fresh process: its own peak RSS, its own torch threads, no Hydra of ours in it.

A fresh (spawned) process matters three ways: ``ru_maxrss`` is a per-process high-water mark, so each figure gets
its own; the official ``sam2`` package initialises its own Hydra and cannot build inside a ``@hydra.main`` app; and
a measurement cannot inherit warm caches or allocator state from the one before.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def _init_child(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_isolated(fn: Callable[..., dict[str, Any]], threads: int, **kwargs: Any) -> dict[str, Any]:
    """``fn(**kwargs)`` in a new spawned process with ``threads`` torch/OpenMP threads; returns its result.

    ``fn`` must be a module-level function taking and returning plain (picklable) values.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=_init_child, initargs=(threads,)) as pool:
        return pool.submit(fn, **kwargs).result()


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    """This process's resident set now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
