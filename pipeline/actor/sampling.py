"""The tracked frames of a video as a video of their own: what the engine sees with ``data.frame_step`` or a clip.

``SampledSource`` presents the frames a task's ``FrameGrid`` keeps (say 0, 4, 8, … or 304 … 900) to the engine as
frames 0..n-1, decoded by asking the video for exactly those frames, so the engine tracks them as the official
predictor tracks a folder holding only them. A worker maps prompts into its numbering (``position``) and results
back to the video's (``frame``): masklets keep the original frame numbers and the video's full frame count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from pipeline.actor.decoding import VideoError, VideoSource
from pipeline.plan.sampling import FrameGrid


class SampledSource(VideoSource):
    """The frames ``grid`` keeps of ``video`` (which it owns: ``close`` closes it), numbered 0..n-1. VideoError when
    the video has none of them (a clip that starts past its end). The tracked frames follow the video's count, so a
    video found shorter while decoding is a shorter view."""

    def __init__(self, video: VideoSource, grid: FrameGrid) -> None:
        self.video = video
        self.grid = grid
        if not self.frames:
            raise VideoError(f"{video.uri}: no frame to track ({grid.describe()}, first tracked frame {grid.first}) "
                             f"in the video's {video.num_frames} frames (0..{video.num_frames - 1})")
        self.uri = video.uri
        self.height, self.width = video.height, video.width
        self.fps = None if video.fps is None else video.fps / grid.step

    @property
    def frames(self) -> range:
        """The video's numbers of the tracked frames, in increasing order."""
        return self.grid.frames(self.video.num_frames)

    @property
    def num_frames(self) -> int:  # type: ignore[override]
        return len(self.frames)

    def frame(self, position: int) -> int:
        """The video's frame number of the engine's frame ``position``."""
        return self.frames[position]

    def position(self, frame: int) -> int | None:
        """The engine's number of the video's frame ``frame``; None when it is not tracked (or past the video)."""
        frames = self.frames
        return frames.index(frame) if frame in frames else None

    def iter_frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        frames = self.frames
        return self.video.iter_frames([frames[i] for i in self._check_indices(indices)])

    def close(self) -> None:
        self.video.close()
