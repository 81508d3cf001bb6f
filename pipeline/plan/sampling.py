"""Which frames of a video a job tracks: every ``step``-th decoded frame, counted from frame 0, inside an optional
clip ``start..end`` (both inclusive).

The grid is global: with step 4 and a clip 301–900 the tracked frames are 304, 308, …, 900 (the frames of the
step-4 grid of the whole video that lie in the clip), so a video's frame numbers mean the same whatever its clip,
and SA-V's 6-fps annotations (every 4th frame of 24 fps video) are on the grid. The driver checks prompts against
the grid (the frame count is not known there); a worker cuts it to the frames its video has.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameGrid:
    """``step`` ≥ 1; ``start``/``end`` the clip's first and last frame (inclusive), None for the video's ends."""

    step: int = 1
    start: int | None = None
    end: int | None = None

    @property
    def every_frame(self) -> bool:
        """Every decoded frame is tracked (the job without a step or a clip)."""
        return self.step == 1 and self.start is None and self.end is None

    @property
    def first(self) -> int:
        """The first grid frame at or after the clip's start."""
        start = self.start or 0
        return -(-start // self.step) * self.step

    def contains(self, frame: int) -> bool:
        """``frame`` is tracked (when the video has it)."""
        return frame % self.step == 0 and frame >= self.first and (self.end is None or frame <= self.end)

    def is_empty(self) -> bool:
        """The clip holds no frame of the grid (say 301–303 with step 4)."""
        return self.end is not None and self.first > self.end

    def frames(self, num_frames: int) -> range:
        """The tracked frames of a video with ``num_frames`` frames, in increasing order (empty when its clip starts
        past its end)."""
        last = num_frames - 1 if self.end is None else min(self.end, num_frames - 1)
        return range(self.first, last + 1, self.step)

    def nearest(self, frame: int) -> list[int]:
        """The tracked frames next to ``frame`` (one each side where there is one): what a refusal suggests."""
        if self.is_empty():
            return []
        below = min(frame // self.step * self.step, self.end // self.step * self.step if self.end is not None
                    else frame)
        above = max(-(-frame // self.step) * self.step, self.first)
        return sorted({f for f in (below, above) if self.contains(f)})

    def describe(self) -> str:
        """The grid in a refusal's words: ``data.frame_step=4, clip 300–900 inclusive``."""
        parts = [f"data.frame_step={self.step}"] if self.step != 1 else []
        if self.start is not None or self.end is not None:
            end = "the end of the video" if self.end is None else f"{self.end} inclusive"
            parts.append(f"clip {self.start or 0}–{end}")
        return ", ".join(parts) or "every frame"

    def to_json(self) -> dict:
        """The grid as the digest records it: ``{"step": 4, "start": 300, "end": 900}`` (None for no bound)."""
        return {"step": self.step, "start": self.start, "end": self.end}
