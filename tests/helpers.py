"""Test helpers: write real video files and frame folders (PyAV / Pillow) from numpy frames."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import av
import numpy as np
from PIL import Image


def synthetic_frames(num_frames: int, height: int = 64, width: int = 96, seed: int = 0) -> np.ndarray:
    """uint8 [T, H, W, 3] frames: smooth gradient background with a moving bright square (codec friendly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                     np.full_like(xx, int(rng.integers(40, 200)))], axis=-1).astype(np.uint8)
    frames = np.repeat(base[None], num_frames, axis=0)
    side = max(4, min(height, width) // 4)
    for t in range(num_frames):
        y0 = (t * 3) % max(height - side, 1)
        x0 = (t * 5) % max(width - side, 1)
        frames[t, y0:y0 + side, x0:x0 + side] = (250, 250, 30)
    return frames


def make_video(path: str | Path, frames: np.ndarray | Sequence[np.ndarray], fps: int = 24,
               codec: str = "libx264") -> Path:
    """Write uint8 HxWx3 frames to an mp4 with PyAV (yuv420p, every frame kept); returns the path.

    H and W must be even for yuv420p. x264 encodes on one thread: with more, two encodes of the same frames may differ.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "g": "8", "bf": "2", "threads": "1"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_frame_folder(folder: str | Path, frames: np.ndarray | Sequence[np.ndarray], ext: str = "jpg",
                      digits: int = 5) -> Path:
    """Write frames as ``00000.jpg`` … (SA-V / DAVIS layout); PNG is lossless, JPEG at quality 95."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        img = Image.fromarray(np.ascontiguousarray(f))
        kwargs = {"quality": 95} if ext in ("jpg", "jpeg") else {}
        img.save(folder / f"{i:0{digits}d}.{ext}", **kwargs)
    return folder
