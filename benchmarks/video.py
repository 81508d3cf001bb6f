"""Synthetic test videos for the benchmark: coloured squares moving on a gradient, one square per object.

Frames are computed from the frame index alone, with torch on any device (on a GPU a 1024-px frame takes no host
time), so the same video can be held in memory, written as an mp4 or a JPEG folder, or rendered on demand by
``SyntheticSource`` (which holds no frames: the memory section uses it so that
only the engine's own state can grow with the video's length).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class VideoCase:
    """A synthetic video (``frames`` frames at ``height`` × ``width``, one square per object) through a model at an
    image size: what the memory and worker sections measure, each adding its own settings."""

    model: str
    image_size: int
    objects: int
    frames: int
    height: int
    width: int


def _grid(num_objects: int) -> int:
    return max(1, math.ceil(math.sqrt(num_objects)))


def object_boxes(num_objects: int, height: int, width: int, frame_idx: int = 0) -> np.ndarray:
    """[K, 4] float boxes ``[x0, y0, x1, y1]`` (pixels) of the K squares on ``frame_idx``."""
    g = _grid(num_objects)
    cell_h, cell_w = height / g, width / g
    side = max(2.0, min(cell_h, cell_w) / 2)
    boxes = np.zeros((num_objects, 4), dtype=np.float32)
    for k in range(num_objects):
        row, col = divmod(k, g)
        phase = 0.15 * frame_idx + k
        cx = (col + 0.5) * cell_w + 0.2 * cell_w * math.cos(phase)
        cy = (row + 0.5) * cell_h + 0.2 * cell_h * math.sin(phase)
        boxes[k] = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    return np.clip(boxes, 0, [width, height, width, height]).round()


def render_frame(frame_idx: int, num_objects: int, height: int, width: int,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """Frame ``frame_idx`` as a uint8 [H, W, 3] tensor rendered on ``device`` (on a GPU: no host work per frame)."""
    yy = torch.arange(height, device=device)[:, None].expand(height, width)
    xx = torch.arange(width, device=device)[None, :].expand(height, width)
    frame = torch.stack([xx * 200 // max(width - 1, 1), yy * 200 // max(height - 1, 1),
                         torch.full_like(xx, 60 + 3 * (frame_idx % 20))], dim=-1).to(torch.uint8)
    for k, (x0, y0, x1, y1) in enumerate(object_boxes(num_objects, height, width, frame_idx).astype(int)):
        colour = ((70 * k + 255) % 256, (150 * k + 40) % 256, (30 * k + 200) % 256)
        frame[y0:y1, x0:x1] = torch.tensor(colour, dtype=torch.uint8, device=device)
    return frame


def synthetic_video(num_frames: int, num_objects: int, height: int, width: int,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """uint8 [T, H, W, 3] on the host, rendered on ``device``."""
    return torch.stack([render_frame(t, num_objects, height, width, device) for t in range(num_frames)]).cpu().numpy()


class SyntheticSource:
    """A ``sam2core`` FrameSource that renders each frame when asked (on ``device``: there the frames stay) and keeps
    none."""

    def __init__(self, num_frames: int, num_objects: int, height: int, width: int,
                 device: str | torch.device = "cpu") -> None:
        self.num_frames, self.height, self.width = num_frames, height, width
        self.num_objects = num_objects
        self.device = device

    def iter_frames(self, indices: Sequence[int]) -> Iterator[torch.Tensor]:
        for t in indices:
            yield render_frame(t, self.num_objects, self.height, self.width, self.device)


def write_mp4(path: Path, frames: Iterable[np.ndarray], fps: int = 24) -> Path:
    """H.264 mp4 (yuv420p, every frame kept; H and W even) written with PyAV. ``frames``: an array [T, H, W, 3] or
    any iterable of HxWx3 frames (rendered one at a time, a long 1080p video is never held whole)."""
    import av  # here, not at the top: the GPU acceptance run renders frames on the device and carries no PyAV

    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
                stream.options = {"crf": "20", "g": "24"}
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        if stream is not None:
            container.mux(stream.encode())
    return path


def write_jpeg_folder(folder: Path, frames: np.ndarray) -> np.ndarray:
    """Frames as ``00000.jpg``… (the official predictor's input); returns the frames as decoded back from the JPEGs,
    so a second consumer sees exactly the pixels the official one reads."""
    folder.mkdir(parents=True, exist_ok=True)
    decoded = []
    for t, frame in enumerate(frames):
        path = folder / f"{t:05d}.jpg"
        Image.fromarray(frame).save(path, quality=95)
        with Image.open(path) as img:
            decoded.append(np.asarray(img.convert("RGB")))
    return np.stack(decoded)
