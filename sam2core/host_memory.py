"""Host memory policy for inference on a CPU: memory a step frees is kept for the next step, not handed back.

A CPU forward pass allocates and frees blocks of tens of MB at every step (the mask decoder on a batch of 64 clicks:
16 to 32 MB per tensor at 256 px). glibc's malloc serves blocks that large with a fresh ``mmap`` and returns them to
the kernel on free (and trims the top of its heap), so each step writes its outputs to newly faulted-in pages:
measured, about 13% of the automatic generator's mask decoder time on one core. ``keep_freed_memory`` raises both
thresholds (``mallopt``): freed blocks stay in the heap and are reused, and the process keeps its peak, which the
engine bounds (memory flat in video length). The setting is process-wide, so it is the process owner's call: the
pipeline's CPU replicas make it; importing sam2core never does.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BELOW = 1 << 30  # blocks under 1 GiB come from the heap, and freed memory under 1 GiB stays there


def keep_freed_memory() -> bool:
    """Make this process's malloc keep freed memory (see above); whether it took effect (False where the C library
    is not glibc, e.g. macOS, which keeps its own policy)."""
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BELOW))
