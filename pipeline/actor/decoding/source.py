"""The surface every video source shares: the FrameSource protocol plus fps, header count and ``close()``, the
errors a source raises, and the display rotation all decoders apply the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from pipeline.io.storage import is_transient

if TYPE_CHECKING:
    from pipeline.actor.decoding.local_copy import LocalCopy

CHUNK = 16  # frames decoded (or fetched) per step of a read


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded; the message names the uri (and frame when known)."""


class InputUnavailable(RuntimeError):
    """The video's storage did not answer (connection refused or reset, timeout, throttling, 5xx): another attempt
    may succeed, unlike a ``VideoError``."""


def access_error(uri: str, what: str, exc: Exception) -> Exception:
    """The error to raise for a failed access to ``uri``: transient outages are retryable, the rest are not."""
    if is_transient(exc):
        return InputUnavailable(f"{uri}: storage unavailable while {what}: {type(exc).__name__}: {exc}")
    return VideoError(f"{uri}: failed {what}: {exc}")


class VideoSource:
    """One video as frames by index: sam2core's FrameSource protocol + ``fps``, ``header_frames`` and ``close()``,
    usable as a context manager.

    * Frame ``i`` is the i-th frame in presentation order, whatever the timestamps (a variable-frame-rate file is
      sampled by index, never by time).
    * ``height``/``width`` and the frames are in display orientation: a rotation in the file (an mp4 display matrix
      or rotate tag, as phones write) is applied by every decoder, as players and ffmpeg do.
    * ``num_frames`` is the count that decodes: a video file's packets, counted when it is opened, not the count its
      header claims, which is ``header_frames`` (``None`` when the header gives none; frame folders: ``None``).
    * The end of a video found only while decoding: when the decoder fails or runs out at frame ``f`` during an
      ascending read (a corrupt or missing tail), ``iter_frames`` stops yielding after frame ``f - 1``: the read ends
      early, without error, and ``num_frames`` becomes ``f`` (later reads of frames past it raise ``IndexError``). A
      caller tells an early end by comparing what it got with what it asked. Any other read (descending or
      unordered) that meets such a frame raises ``VideoError`` naming it.
    * Reads any order of indices; ascending strided reads (every k-th frame, a window from frame 300) and descending
      ones (a pass backward from a prompt) decode only the spans they need (see ``reading``).
    """

    uri: str
    num_frames: int
    height: int
    width: int
    fps: float | None
    header_frames: int | None = None
    _local: LocalCopy | None = None

    def iter_frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        """uint8 HxWx3 RGB frames for ``indices``, yielded in that order."""
        raise NotImplementedError

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


def chunks(indices: list[int]) -> Iterator[list[int]]:
    """``indices`` in steps of ``CHUNK``."""
    for s in range(0, len(indices), CHUNK):
        yield indices[s:s + CHUNK]


def quarter_turns(rotation: float | None) -> int:
    """Counter-clockwise quarter turns (0..3) that put a frame the way it displays, from the display matrix's
    rotation in degrees counter-clockwise (FFmpeg's convention; any multiple of 90, negative included)."""
    return int(round((rotation or 0.0) / 90.0)) % 4


def displayed(frame: np.ndarray, turns: int) -> np.ndarray:
    """``frame`` (HxWx3) turned ``turns`` quarter turns counter-clockwise, contiguous."""
    return frame if turns == 0 else np.ascontiguousarray(np.rot90(frame, turns))
