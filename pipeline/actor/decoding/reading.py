"""How a video file is read: frames decode forward from a keyframe, so a read is planned as spans, each decoded
forward from the keyframe at or before it (or from where the decoder already is).

Ascending reads (all frames, every k-th frame, a window from frame 300) ask each decoder for one chunk's frames at a
time; the decoder seeks to a keyframe only when one lies between its position and the next asked frame, and
otherwise decodes the frames in between and drops them unconverted. A backward read (strictly descending indices)
that must restart at the keyframe before its chunk keeps every asked-for frame that restart decodes, up to
``HOLD_BYTES`` of them, and serves the next chunks from there: a backward pass costs about one decode per frame (a
250-frame GOP is decoded once, not once per chunk) while memory stays bounded. Look-ahead is the engine's job (its
prefetch thread).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from pipeline.actor.decoding.source import CHUNK, VideoError, VideoSource, chunks

HOLD_BYTES = 1 << 30  # decoded frames a backward read may hold (at 1080p: 172 frames, most of a 250-frame GOP)


class DecodingStopped(Exception):
    """A decoder failed or ran out before frame ``end`` (every frame before it, from where it started, decoded):
    the frames it got are in ``frames``; ``reason`` says why."""

    def __init__(self, end: int, frames: dict[int, np.ndarray], reason: str) -> None:
        super().__init__(reason)
        self.end, self.frames, self.reason = end, frames, reason


def decode_each(ordered: list[int], decode_one: Callable[[int], np.ndarray]) -> dict[int, np.ndarray]:
    """Frames ``ordered`` decoded one at a time by ``decode_one``: where a batch decode failed, the frames before the
    first that fails, raised as ``DecodingStopped`` at that frame."""
    got: dict[int, np.ndarray] = {}
    for f in ordered:
        try:
            got[f] = decode_one(f)
        except Exception as e:
            raise DecodingStopped(f, got, f"{type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}") from e
    return got


def hold_frames(height: int, width: int) -> int:
    """How many decoded RGB frames of this size a backward read holds (``HOLD_BYTES``, at least a chunk)."""
    return max(CHUNK, HOLD_BYTES // (height * width * 3))


def backward_span(lo: int, hi: int, keyframes: np.ndarray, hold: int) -> int:
    """The first frame a backward read that needs frames ``lo..hi`` decodes and keeps: decoding starts at the keyframe
    at or before ``lo`` whatever is kept, so it keeps the frames of the ``hold`` ending at ``hi``, back to that keyframe
    (never past ``lo``). A strided read passes the ``hold`` that spans its next asked frames."""
    key = int(keyframes[np.searchsorted(keyframes, lo, side="right") - 1])
    return min(lo, max(key, hi - hold + 1))


def _descending(indices: list[int]) -> bool:
    return len(indices) > 1 and all(a > b for a, b in zip(indices, indices[1:]))


def _ascending(indices: list[int]) -> bool:
    return all(a < b for a, b in zip(indices, indices[1:]))


class KeyframeSource(VideoSource):
    """A video file: frames decode forward from a keyframe (``_keyframes``, sorted, starting at 0).

    ``iter_frames`` asks ``_decode`` for each chunk it does not hold; on a backward read (strictly descending
    indices) for the next ``hold_frames`` asked-for frames back to ``backward_span``, held for the chunks that
    follow.
    """

    _keyframes: np.ndarray

    def _decode(self, lo: int, hi: int, wanted: set[int]) -> dict[int, np.ndarray]:
        """Frames ``wanted`` (all within [lo, hi]) as uint8 HxWx3 RGB in display orientation, decoded forward;
        raises ``DecodingStopped`` when the decoder fails or runs out before one of them."""
        raise NotImplementedError

    def iter_frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        asked = self._check_indices(indices)
        backward, ascending = _descending(asked), _ascending(asked)
        hold = hold_frames(self.height, self.width)
        held: dict[int, np.ndarray] = {}
        for start, chunk in enumerate(chunks(asked)):
            if not all(f in held for f in chunk):
                lo, hi = min(chunk), max(chunk)
                if backward:  # keep up to ``hold`` of the asked frames to come (every k-th: k times the span)
                    ahead = asked[start * CHUNK:start * CHUNK + hold]
                    lo = backward_span(lo, hi, self._keyframes, hi - ahead[-1] + 1)
                    wanted = {f for f in ahead if f >= lo}
                else:
                    wanted = set(chunk)
                held = {}  # the frames of the previous span go before the next is decoded
                try:
                    held = self._decode(lo, hi, wanted)
                except DecodingStopped as stop:
                    first = min(f for f in wanted if f not in stop.frames)
                    if not ascending or first < stop.end:
                        raise VideoError(f"{self.uri}: frame {first} could not be decoded: {stop.reason}") from stop
                    self.num_frames = min(self.num_frames, stop.end)
                    for f in chunk:
                        if f >= self.num_frames:
                            return
                        yield stop.frames[f]
                    return
            for f in chunk:
                yield held[f] if not backward else held.pop(f)
