"""Video sources for the engine: a video file (decord or PyAV) or a folder of frames named by integer index.

Each source implements sam2core's ``FrameSource`` protocol (num_frames, height, width, iter_frames) plus ``fps``
and ``close()``. Frames are decoded lazily in the order asked, one chunk (``CHUNK`` frames) at a time. A video
file decodes forward from a keyframe only, so a backward read (strictly descending indices) that must restart at the
keyframe before its chunk keeps every asked-for frame that restart decodes, up to ``HOLD_BYTES`` of them, and serves
the next chunks from there: a backward pass costs about one decode per frame (a 250-frame GOP is decoded once, not
once per chunk) while memory stays bounded. Look-ahead is the engine's job (its prefetch thread).
Remote video files are copied to a local temp file first (both decoders need seekable local input; removed on
close). Unreadable or corrupt input raises ``VideoError`` naming the uri.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import weakref
from typing import Iterator, Sequence

import numpy as np

from pipeline.io.storage import filesystem, is_local, is_transient, join_uri, list_sizes

CHUNK = 16
HOLD_BYTES = 1 << 30  # decoded frames a backward read may hold (at 1080p: 172 frames, most of a 250-frame GOP)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_INT_NAME = re.compile(r"^(\d+)\.(jpe?g|png)$", re.IGNORECASE)


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded; the message names the uri (and frame when known)."""


class InputUnavailable(RuntimeError):
    """The video's storage did not answer (connection refused or reset, timeout, throttling, 5xx): another attempt
    may succeed, unlike a ``VideoError``."""


def _access_error(uri: str, what: str, exc: Exception) -> Exception:
    """The error to raise for a failed access to ``uri``: transient outages are retryable, the rest are not."""
    if is_transient(exc):
        return InputUnavailable(f"{uri}: storage unavailable while {what}: {type(exc).__name__}: {exc}")
    return VideoError(f"{uri}: failed {what}: {exc}")


class VideoSource:
    """Common surface of the sources: FrameSource protocol + fps + close(), usable as a context manager."""

    uri: str
    num_frames: int
    height: int
    width: int
    fps: float | None

    def iter_frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        """uint8 HxWx3 RGB frames for ``indices``, yielded in that order."""
        raise NotImplementedError

    _local: "_LocalCopy | None" = None

    def close(self) -> None:
        """Release decoder handles and temp files (idempotent)."""
        if self._local is not None:
            self._local.release()
            self._local = None

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_indices(self, indices: Sequence[int]) -> list[int]:
        out = [int(i) for i in indices]
        bad = [i for i in out if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"{self.uri}: frame index {bad[0]} outside [0, {self.num_frames})")
        return out


def _chunks(indices: list[int]) -> Iterator[list[int]]:
    for s in range(0, len(indices), CHUNK):
        yield indices[s:s + CHUNK]


def hold_frames(height: int, width: int) -> int:
    """How many decoded RGB frames of this size a backward read holds (``HOLD_BYTES``, at least a chunk)."""
    return max(CHUNK, HOLD_BYTES // (height * width * 3))


def backward_span(lo: int, hi: int, keyframes: np.ndarray, hold: int) -> int:
    """The first frame a backward read that needs frames ``lo..hi`` decodes and keeps: decoding starts at the keyframe
    at or before ``lo`` whatever is kept, so it keeps up to ``hold`` frames ending at ``hi``, back to that keyframe
    (never past ``lo``)."""
    key = int(keyframes[np.searchsorted(keyframes, lo, side="right") - 1])
    return min(lo, max(key, hi - hold + 1))


def _descending(indices: list[int]) -> bool:
    return len(indices) > 1 and all(a > b for a, b in zip(indices, indices[1:]))


class _KeyframeSource(VideoSource):
    """A video file: frames decode forward from a keyframe (``_keyframes``, sorted, starting at 0).

    ``iter_frames`` asks ``_decode`` for each chunk it does not hold; on a backward read (strictly descending
    indices) for every asked-for frame from ``backward_span`` up to the chunk, held for the chunks that follow.
    """

    _keyframes: np.ndarray

    def _decode(self, lo: int, hi: int, wanted: set[int]) -> dict[int, np.ndarray]:
        """Frames ``wanted`` (all within [lo, hi]) as uint8 HxWx3 RGB, decoded forward."""
        raise NotImplementedError

    def iter_frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        asked = self._check_indices(indices)
        backward = _descending(asked)
        if backward:
            remaining = set(asked)
            hold = hold_frames(self.height, self.width)
        held: dict[int, np.ndarray] = {}
        for chunk in _chunks(asked):
            if not all(f in held for f in chunk):
                lo, hi = min(chunk), max(chunk)
                if backward:
                    lo = backward_span(lo, hi, self._keyframes, hold)
                    wanted = {f for f in remaining if lo <= f <= hi}
                else:
                    wanted = set(chunk)
                held = {}  # the frames of the previous span go before the next is decoded
                held = self._decode(lo, hi, wanted)
            for f in chunk:
                yield held[f] if not backward else held.pop(f)
            if backward:
                remaining.difference_update(chunk)


class _LocalCopy:
    """A local path for ``uri``: the file itself when local, else a temp copy deleted on ``release``
    (or when the copy is garbage collected, so an unclosed source does not leak disk)."""

    def __init__(self, uri: str, storage_options: dict | None) -> None:
        fs, path = filesystem(uri, storage_options)
        self._finalizer: weakref.finalize | None = None
        if is_local(uri):
            self.path = path
            return
        fd, tmp = tempfile.mkstemp(prefix="sam2-video-", suffix=os.path.splitext(path)[1])
        os.close(fd)
        self._finalizer = weakref.finalize(self, _remove, tmp)
        self.path = tmp
        try:
            fs.get_file(path, tmp)
        except Exception:
            self.release()
            raise

    def release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class DecordSource(_KeyframeSource):
    """Video file decoded with decord; each span is one ``get_batch`` of its sorted indices."""

    def __init__(self, uri: str, local: _LocalCopy) -> None:
        import decord

        self.uri, self._local = uri, local
        try:
            # one thread: decord's threaded decode fails on some files ("Error sending packet", decord#246/#314)
            self._reader = decord.VideoReader(local.path, ctx=decord.cpu(0), num_threads=1)
            self.num_frames = len(self._reader)
            if self.num_frames == 0:
                raise VideoError(f"{uri}: video has no frames")
            self.height, self.width = (int(v) for v in self._reader[0].shape[:2])
            self._reader.seek(0)
            self.fps = float(self._reader.get_avg_fps())
            self._keyframes = np.union1d([0], np.asarray(self._reader.get_key_indices(), dtype=np.int64))
        except VideoError:
            raise
        except Exception as e:  # decord raises its own error types for unreadable files
            raise VideoError(f"{uri}: cannot open video with decord: {e}") from e

    def _decode(self, lo: int, hi: int, wanted: set[int]) -> dict[int, np.ndarray]:
        ordered = sorted(wanted)
        try:
            batch = self._reader.get_batch(ordered).asnumpy()
        except Exception as e:
            raise VideoError(f"{self.uri}: decoding frames {ordered[0]}..{ordered[-1]} failed: {e}") from e
        return {f: batch[i] for i, f in enumerate(ordered)}

    def close(self) -> None:
        self._reader = None
        super().close()


class PyAVSource(_KeyframeSource):
    """Video file decoded with PyAV (threaded decode); frame i = i-th frame in presentation order.

    A packet scan at open gives the frame count and keyframe positions without decoding. Decoding continues
    forward from the current position when the next span lies ahead, else seeks to the keyframe before it.
    """

    def __init__(self, uri: str, local: _LocalCopy) -> None:
        import av

        self.uri, self._local = uri, local
        self._container = None
        try:
            self._container = av.open(local.path)
            if not self._container.streams.video:
                raise VideoError(f"{uri}: no video stream")
            stream = self._container.streams.video[0]
            pts, key = [], []
            for packet in self._container.demux(stream):
                if packet.pts is not None and packet.size > 0:
                    pts.append(packet.pts)
                    key.append(packet.is_keyframe)
            if not pts:
                raise VideoError(f"{uri}: video has no frames")
        except Exception as e:
            if self._container is not None:
                self._container.close()
            if isinstance(e, VideoError):
                raise
            raise VideoError(f"{uri}: cannot open video with PyAV: {e}") from e
        order = np.argsort(pts, kind="stable")
        self._pts = np.asarray(pts, dtype=np.int64)[order]
        self._index_of_pts = {int(p): i for i, p in enumerate(self._pts)}
        self._keyframes = np.flatnonzero(np.asarray(key)[order])
        if self._keyframes.size == 0 or self._keyframes[0] != 0:
            self._keyframes = np.concatenate(([0], self._keyframes))
        stream.thread_type = "AUTO"
        self._stream = stream
        self.num_frames = len(self._pts)
        self.height, self.width = int(stream.codec_context.height), int(stream.codec_context.width)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        self._frames: Iterator | None = None
        self._next = 0  # index of the frame the open decoder yields next

    def _restart_at(self, index: int) -> None:
        key = int(self._keyframes[np.searchsorted(self._keyframes, index, side="right") - 1])
        self._container.seek(int(self._pts[key]), stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._next = -1  # unknown until the first decoded frame reports its pts

    def _decode(self, lo: int, hi: int, wanted: set[int]) -> dict[int, np.ndarray]:
        try:
            got = self._decode_span(lo, hi, wanted)
        except Exception as e:
            self._frames = None
            raise VideoError(f"{self.uri}: decoding frames {lo}..{hi} failed: {e}") from e
        missing = wanted - set(got)
        if missing:
            self._frames = None
            raise VideoError(f"{self.uri}: frame {min(missing)} could not be decoded")
        return got

    def _decode_span(self, lo: int, hi: int, wanted: set[int]) -> dict[int, np.ndarray]:
        """Frames ``wanted`` (all within [lo, hi]) decoded forward from the current position or a keyframe."""
        ahead_key = self._keyframes[(self._keyframes > self._next) & (self._keyframes <= lo)]
        if self._frames is None or self._next < 0 or self._next > lo or ahead_key.size:
            self._restart_at(lo)
        got: dict[int, np.ndarray] = {}
        for frame in self._frames:
            idx = self._index_of_pts.get(frame.pts)
            if idx is None:
                continue
            self._next = idx + 1
            if idx in wanted:
                got[idx] = frame.to_ndarray(format="rgb24")
            if idx >= hi:
                break
        return got

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._frames = None
        super().close()


class FrameFolderSource(VideoSource):
    """Folder of JPEG/PNG frames named by integer (``00000.jpg`` …); frame i = i-th name in numeric order.

    The files of a chunk are fetched in one ``fs.cat`` call (concurrent requests on S3), then decoded with PIL.
    """

    def __init__(self, uri: str, storage_options: dict | None) -> None:
        self.uri = uri
        self._fs, folder = filesystem(uri, storage_options)
        named = []
        for name in list_sizes(uri, storage_options):
            m = _INT_NAME.match(name)
            if m:
                named.append((int(m.group(1)), name))
        if not named:
            raise VideoError(f"{uri}: folder holds no frames named by integer ({', '.join(IMAGE_EXTENSIONS)})")
        named.sort()
        self._paths = [join_uri(folder, name) for _, name in named]
        self.num_frames = len(self._paths)
        self.fps = None
        first = self._decode(0, self._fetch([0])[0])
        self.height, self.width = int(first.shape[0]), int(first.shape[1])

    def _fetch(self, indices: list[int]) -> list[bytes]:
        paths = [self._paths[i] for i in indices]
        try:
            got = self._fs.cat(paths, on_error="return")
        except Exception as e:
            raise _access_error(self.uri, f"reading frames {indices[0]}..{indices[-1]}", e) from e
        out = []
        for i, p in zip(indices, paths):
            data = got.get(p) if isinstance(got, dict) else got
            if not isinstance(data, bytes):
                if isinstance(data, Exception):
                    raise _access_error(self.uri, f"reading frame {i} ({p})", data) from data
                raise VideoError(f"{self.uri}: cannot read frame {i} ({p}): {data}")
            out.append(data)
        return out

    def _decode(self, index: int, data: bytes) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                frame = np.asarray(img.convert("RGB"))
        except Exception as e:
            raise VideoError(f"{self.uri}: cannot decode frame {index} ({self._paths[index]}): {e}") from e
        if hasattr(self, "height") and frame.shape[:2] != (self.height, self.width):
            raise VideoError(f"{self.uri}: frame {index} ({self._paths[index]}) is {frame.shape[1]}x{frame.shape[0]}"
                             f", frame 0 is {self.width}x{self.height}")
        return frame

    def iter_frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        for chunk in _chunks(self._check_indices(indices)):
            for i, data in zip(chunk, self._fetch(chunk)):
                yield self._decode(i, data)


def open_video(uri: str, storage_options: dict | None = None, decoder: str = "decord") -> VideoSource:
    """Open a video file (``decoder``: "decord" or "pyav") or a folder of integer-named frames at any fsspec URI."""
    if decoder not in ("decord", "pyav"):
        raise ValueError(f"decoder must be 'decord' or 'pyav', got {decoder!r}")
    try:
        fs, path = filesystem(uri, storage_options)
        is_dir = fs.isdir(path)
        if not is_dir and not fs.exists(path):
            raise VideoError(f"{uri}: no such video file or frame folder")
    except VideoError:
        raise
    except Exception as e:
        raise _access_error(uri, "accessing the video", e) from e
    if is_dir:
        return FrameFolderSource(uri, storage_options)
    try:
        local = _LocalCopy(uri, storage_options)
    except Exception as e:
        raise _access_error(uri, "fetching the video", e) from e
    try:
        return DecordSource(uri, local) if decoder == "decord" else PyAVSource(uri, local)
    except Exception:
        local.release()
        raise
