"""Video files decoded with decord (0.6.0, unmaintained since 2021; kept as an option, see the README)."""

from __future__ import annotations

import numpy as np

from pipeline.actor.decoding.local_copy import LocalCopy
from pipeline.actor.decoding.pyav_source import scan_video
from pipeline.actor.decoding.reading import KeyframeSource, decode_each
from pipeline.actor.decoding.source import VideoError


class DecordSource(KeyframeSource):
    """Video file decoded with decord; each span is one ``get_batch`` of its sorted indices (decord seeks and
    decodes-and-drops within it, and applies the display rotation itself).

    decord's own count comes from the header, so the count and keyframes come from a packet scan (``scan_video``).
    A failing ``get_batch`` is retried frame by frame to find where decoding stops.
    """

    def __init__(self, uri: str, local: LocalCopy) -> None:
        import decord

        self.uri, self._local = uri, local
        self.num_frames, self._keyframes, self.header_frames = scan_video(local.path, uri)
        try:
            # one thread: decord's threaded decode fails on some files ("Error sending packet", decord#246/#314)
            self._reader = decord.VideoReader(local.path, ctx=decord.cpu(0), num_threads=1)
            self.num_frames = min(self.num_frames, len(self._reader))
            self.height, self.width = (int(v) for v in self._reader[0].shape[:2])
            self._reader.seek(0)
            self.fps = float(self._reader.get_avg_fps())
        except Exception as e:  # decord raises its own error types for unreadable files
            raise VideoError(f"{uri}: cannot open video with decord: {e}") from e

    def _decode(self, lo: int, hi: int, wanted: set[int]) -> dict[int, np.ndarray]:
        ordered = sorted(wanted)
        try:
            batch = self._reader.get_batch(ordered).asnumpy()
        except Exception:  # which frame failed: one at a time (only on a failing span)
            return decode_each(ordered, lambda f: self._reader[f].asnumpy())
        return {f: batch[i] for i, f in enumerate(ordered)}

    def close(self) -> None:
        self._reader = None
        super().close()
