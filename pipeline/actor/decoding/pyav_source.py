"""Video files decoded with PyAV (FFmpeg bundled in its wheel; threaded decode)."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from pipeline.actor.decoding.local_copy import LocalCopy
from pipeline.actor.decoding.reading import DecodingStopped, KeyframeSource
from pipeline.actor.decoding.source import VideoError, displayed, quarter_turns


def packet_index(container, stream, uri: str) -> tuple[np.ndarray, np.ndarray]:
    """The presentation timestamps of a video stream's frames, sorted, and the indices of its keyframes (0 first),
    from its packets, demuxed without decoding: the count is what the file holds, not what its header claims."""
    pts, key = [], []
    for packet in container.demux(stream):
        if packet.pts is not None and packet.size > 0:
            pts.append(packet.pts)
            key.append(packet.is_keyframe)
    if not pts:
        raise VideoError(f"{uri}: video has no frames")
    order = np.argsort(pts, kind="stable")
    keyframes = np.flatnonzero(np.asarray(key)[order])
    if keyframes.size == 0 or keyframes[0] != 0:
        keyframes = np.concatenate(([0], keyframes))
    return np.asarray(pts, dtype=np.int64)[order], keyframes


def scan_video(path: str, uri: str) -> tuple[int, np.ndarray, int | None]:
    """A video file's frame count and keyframes (``packet_index``) and the frame count its header claims."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError(f"{uri}: no video stream")
            stream = container.streams.video[0]
            pts, keyframes = packet_index(container, stream, uri)
            return len(pts), keyframes, int(stream.frames) or None
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(f"{uri}: cannot read video: {e}") from e


class PyAVSource(KeyframeSource):
    """Video file decoded with PyAV; frame i = i-th frame in presentation order.

    A packet scan at open gives the frame count and keyframe positions without decoding; the first frame is decoded
    then for its display rotation. Decoding continues forward from the current position, dropping the frames in
    between unconverted, unless a keyframe lies between it and the next asked frame: then it seeks there.
    """

    def __init__(self, uri: str, local: LocalCopy) -> None:
        import av

        self.uri, self._local = uri, local
        self._container = None
        try:
            self._container = av.open(local.path)
            if not self._container.streams.video:
                raise VideoError(f"{uri}: no video stream")
            stream = self._container.streams.video[0]
            self._pts, self._keyframes = packet_index(self._container, stream, uri)
            self._index_of_pts = {int(p): i for i, p in enumerate(self._pts)}
            stream.thread_type = "AUTO"
            self._stream = stream
            self.num_frames = len(self._pts)
            self.header_frames = int(stream.frames) or None
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else None
            self._restart_at(0)
            first = next(self._frames, None)
            if first is None:
                raise VideoError(f"{uri}: video has no decodable frames")
            self._turns = quarter_turns(first.rotation)
            self._next = 1
        except Exception as e:
            if self._container is not None:
                self._container.close()
            if isinstance(e, VideoError):
                raise
            raise VideoError(f"{uri}: cannot open video with PyAV: {e}") from e
        h, w = int(stream.codec_context.height), int(stream.codec_context.width)
        self.height, self.width = (w, h) if self._turns % 2 else (h, w)

    def _restart_at(self, index: int) -> None:
        key = int(self._keyframes[np.searchsorted(self._keyframes, index, side="right") - 1])
        self._container.seek(int(self._pts[key]), stream=self._stream, backward=True, any_frame=False)
        self._frames: Iterator | None = self._container.decode(self._stream)
        self._start = key
        self._next = -1  # unknown until the first decoded frame reports its pts

    def _must_seek(self, target: int) -> bool:
        """Whether reaching ``target`` needs a seek: no open decoder, one past it, or a keyframe in between."""
        if self._frames is None or self._next < 0 or self._next > target:
            return True
        return bool(((self._keyframes > self._next) & (self._keyframes <= target)).any())

    def _decode(self, lo: int, hi: int, wanted: set[int]) -> dict[int, np.ndarray]:
        got: dict[int, np.ndarray] = {}
        for target in sorted(wanted):
            if target in got:
                continue
            if self._must_seek(target):
                try:
                    self._restart_at(target)
                except Exception as e:
                    self._frames = None
                    raise VideoError(f"{self.uri}: seeking to frame {target} failed: {e}") from e
            try:
                for frame in self._frames:
                    idx = self._index_of_pts.get(frame.pts)
                    if idx is None:
                        continue
                    self._next = idx + 1
                    if idx in wanted:
                        got[idx] = displayed(frame.to_ndarray(format="rgb24"), self._turns)
                    if idx >= target:
                        break
                else:
                    raise EOFError("the decoder ran out of frames")
            except Exception as e:
                end = self._next if self._next >= 0 else self._start
                self._frames = None
                raise DecodingStopped(end, got, f"{type(e).__name__}: {e}") from e
            if target not in got:
                self._frames = None
                raise VideoError(f"{self.uri}: frame {target} could not be decoded")
        return got

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._frames = None
        super().close()
