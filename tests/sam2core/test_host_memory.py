"""sam2core.host_memory: after ``keep_freed_memory`` a large block freed and allocated again is reused instead of
being faulted in afresh. Process-wide, so it runs in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, resource, torch
from sam2core.host_memory import keep_freed_memory

def faults(cycles: int) -> int:
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(cycles):
        torch.empty(8 << 20).fill_(1.0)  # 32 MB, written in full, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

faults(2)  # malloc's own adaptive threshold settles first
before = faults(10)
kept = keep_freed_memory()
faults(1)  # the first block after the change is new
print(json.dumps({"kept": kept, "before": before, "after": faults(10)}))
"""


def test_freed_memory_is_reused_after_keep_freed_memory() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["kept"], "this test's machine runs glibc"
    pages = (32 << 20) // 4096
    assert probe["before"] >= 10 * pages // 2, probe  # each 32 MB block faulted in again
    assert probe["after"] <= pages, probe  # reused: at most one block's pages over ten cycles
