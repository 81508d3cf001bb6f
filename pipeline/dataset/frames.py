"""Which frames a masklet file holds, in words: every frame, every k-th one, or a clip, by original frame number.

A run with ``data.frame_step`` or a clip window writes masks for the frames it tracked only, numbered as in the
video (``frame_indices`` 0, 4, 8, … or 300, 304, …; ``frame_count`` the whole video's). Render, report and export
show those frames under those numbers and never draw or write a frame that was not tracked.
"""

from __future__ import annotations

from functools import reduce
from math import gcd
from typing import Sequence


def frame_stride(frame_indices: Sequence[int]) -> int:
    """The step between the tracked frames: the greatest common divisor of their gaps (1 for one frame)."""
    return reduce(gcd, (b - a for a, b in zip(frame_indices, frame_indices[1:])), 0) or 1


def ordinal(n: int) -> str:
    """``4th``, ``2nd``, ``21st``, ``12th``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def describe_frames(frame_indices: Sequence[int], frame_count: int) -> str:
    """The tracked frames against the video's: ``483 frames``, or ``121 of 483 frames: every 4th, 0-480``."""
    n = len(frame_indices)
    if n == 0:
        return f"0 of {frame_count} frames"
    if n == frame_count and frame_indices[0] == 0 and frame_indices[-1] == frame_count - 1:
        return f"{n} frames"
    step = frame_stride(frame_indices)
    every = f"every {ordinal(step)}, " if step > 1 else ""
    return f"{n} of {frame_count} frames: {every}{frame_indices[0]}-{frame_indices[-1]}"
