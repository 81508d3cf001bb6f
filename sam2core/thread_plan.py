"""Which work gets a thread of its own beside the caller's: only work on a core the caller's intra-op threads leave
spare. The video engine encodes the next frames on such a thread while it tracks the current one; the automatic
mask generator scores one batch of candidates on one while it decodes the next.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ThreadPlan:
    """Whether a stage runs on a thread of its own beside the caller (``overlap``), and that thread's intra-op
    threads (None: the process's setting)."""

    overlap: bool
    side_threads: int | None = None


def plan_threads(overlap: bool, device: torch.device) -> ThreadPlan:
    """Keep an overlap from oversubscribing the CPU: with ``T`` intra-op threads on the calling thread and ``C``
    cores, the side thread gets ``min(T, C - T)`` threads of its own when a core is spare, and the work is serial
    otherwise (measured: at 2 threads on 2 cores, two one-thread stages are slower than one two-thread stage, as
    intra-op parallelism scales well there). On accelerators the threads only launch kernels: the overlap stays as
    asked."""
    if not overlap or device.type != "cpu":
        return ThreadPlan(overlap)
    budget = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    spare = cores - budget
    if spare < 1:
        return ThreadPlan(False)
    return ThreadPlan(True, min(budget, spare))
