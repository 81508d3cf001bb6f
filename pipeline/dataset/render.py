"""Masklets drawn over video frames: an mp4 (PyAV, H.264) and a PNG contact sheet, for a quick look at a job.

Each object id has one colour everywhere (hue stepped by the golden ratio per id), masks are blended in at
``alpha`` and outlined in full colour. H.264 wants even sizes: odd frame sizes are padded by one black pixel.
"""

from __future__ import annotations

import colorsys
import io
from fractions import Fraction
from typing import Iterable, Iterator

import av
import numpy as np
from PIL import Image

from pipeline.dataset.metrics import boundary_map
from pipeline.masklets import Masklets, decode_rle

_GOLDEN = 0.6180339887498949


def object_color(obj_id: int) -> tuple[int, int, int]:
    """Stable RGB colour of an object id (neighbouring ids get well separated hues)."""
    r, g, b = colorsys.hsv_to_rgb((0.1 + obj_id * _GOLDEN) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def overlay(frame: np.ndarray, masks: Iterable[np.ndarray], colors: Iterable[tuple[int, int, int]],
            alpha: float = 0.5) -> np.ndarray:
    """The frame (uint8 HxWx3) with each mask blended in its colour and outlined."""
    out = frame.astype(np.float32)
    edges = []
    for mask, color in zip(masks, colors):
        if not mask.any():
            continue
        c = np.asarray(color, dtype=np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * c
        edges.append((boundary_map(mask), c))
    for edge, c in edges:
        out[edge] = c
    return out.round().astype(np.uint8)


def overlaid_frames(m: Masklets, frames: Iterable[np.ndarray], alpha: float) -> Iterator[np.ndarray]:
    """Overlays of the masklet frames; ``frames`` yields the video frames of ``m.frame_indices`` in order."""
    colors = [object_color(o) for o in m.obj_ids]
    for pos, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.shape[:2] != (m.height, m.width):
            raise ValueError(f"video {m.video_id} frame {m.frame_indices[pos]}: frame is "
                             f"{frame.shape[0]}x{frame.shape[1]}, masklets are {m.height}x{m.width}")
        yield overlay(frame, (decode_rle(r) for r in m.rles[pos]), colors, alpha)


def _even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))


class Mp4Encoder:
    """Encodes RGB frames into an in-memory H.264 mp4 (``finish`` returns the file bytes)."""

    def __init__(self, fps: float) -> None:
        self._buf = io.BytesIO()
        self._container = av.open(self._buf, mode="w", format="mp4")
        self._fps = fps
        self._stream = None

    def add(self, frame: np.ndarray) -> None:
        """Append one uint8 HxWx3 frame."""
        frame = _even(frame)
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=Fraction(self._fps).limit_denominator(1001))
            self._stream.height, self._stream.width = frame.shape[:2]
            self._stream.pix_fmt = "yuv420p"
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)

    def finish(self) -> bytes:
        """Flush the encoder and return the mp4 bytes."""
        if self._stream is None:
            raise ValueError("no frames to encode")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        return self._buf.getvalue()


def sheet_positions(num_frames: int, count: int) -> list[int]:
    """``count`` evenly spaced positions in ``range(num_frames)`` (all of them when there are fewer)."""
    if num_frames <= count:
        return list(range(num_frames))
    return sorted({int(round(i * (num_frames - 1) / (count - 1))) for i in range(count)}) if count > 1 else [0]


def contact_sheet(thumbs: list[np.ndarray], columns: int) -> np.ndarray:
    """Equal-size thumbnails tiled row by row, ``columns`` per row, on black."""
    th, tw = thumbs[0].shape[:2]
    rows = -(-len(thumbs) // columns)
    sheet = np.zeros((rows * th, min(columns, len(thumbs)) * tw, 3), dtype=np.uint8)
    for k, t in enumerate(thumbs):
        r, c = divmod(k, columns)
        sheet[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = t
    return sheet


def thumbnail(frame: np.ndarray, width: int) -> np.ndarray:
    """The frame scaled to ``width`` pixels wide, aspect kept."""
    h, w = frame.shape[:2]
    height = max(1, round(h * width / w))
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))


def png_bytes(image: np.ndarray) -> bytes:
    """PNG file bytes of an RGB image."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def render_video(m: Masklets, frames: Iterable[np.ndarray], fps: float, alpha: float = 0.5,
                 sheet_frames: int = 8, sheet_columns: int = 4, thumb_width: int = 320) -> tuple[bytes, bytes]:
    """(mp4 bytes, contact-sheet PNG bytes) of the masklets over ``frames`` (the frames of ``m.frame_indices``)."""
    picks = set(sheet_positions(len(m.frame_indices), sheet_frames))
    encoder = Mp4Encoder(fps)
    thumbs = []
    count = 0
    for pos, image in enumerate(overlaid_frames(m, frames, alpha)):
        encoder.add(image)
        count += 1
        if pos in picks:
            thumbs.append(thumbnail(image, thumb_width))
    if count != len(m.frame_indices) or count == 0:
        raise ValueError(f"video {m.video_id}: the video gave {count} frames for {len(m.frame_indices)} masklet "
                         f"frames")
    return encoder.finish(), png_bytes(contact_sheet(thumbs, sheet_columns))
