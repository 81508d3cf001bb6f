"""Write the bundled sample under data/sample: three short synthetic videos and their prompt manifest.

The videos show coloured shapes moving over a textured background: two mp4 files (H.264 through PyAV) and one
folder of JPEG frames. The manifest exercises every prompt kind: points, a box, points with a box, a mask, and a
second conditioning frame. Deterministic; run `python scripts/make_sample.py` from the repository root.
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.plan.manifest import MANIFEST_SCHEMA
from pipeline.io.rle import encode_rle

WIDTH, HEIGHT = 160, 120


def background(seed: int) -> np.ndarray:
    """A smooth colour gradient with mild noise, so the encoder sees some texture."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack([60 + 60 * xs / WIDTH, 70 + 50 * ys / HEIGHT, 90 + 0 * xs], axis=-1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def render(num_frames: int, seed: int, shapes) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Frames plus the ground-truth mask of every shape on every frame; shapes are (colour, frame -> mask)."""
    bg = background(seed)
    frames, masks = [], []
    for t in range(num_frames):
        frame = bg.copy()
        per_obj = []
        for colour, shape in shapes:
            m = shape(t)
            frame[m] = colour
            per_obj.append(m)
        frames.append(frame)
        masks.append(per_obj)
    return frames, masks


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = 12) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "23", "g": "12"}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def write_jpegs(folder: Path, frames: list[np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=85)
        (folder / f"{i:05d}.jpg").write_bytes(buf.getvalue())


def bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def centre(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [round(float(xs.mean()), 1), round(float(ys.mean()), 1)]


def prompt(video_id: str, video_uri: str, obj_id: int, frame_idx: int, *, points=None, labels=None, box=None,
           mask=None) -> dict:
    return {"video_id": video_id, "video_uri": video_uri, "obj_id": obj_id, "frame_idx": frame_idx,
            "points": points, "point_labels": labels, "box": box, "mask": mask}


def make_sample(out: Path) -> None:
    """Write the three videos and manifest.parquet into `out` (replacing what is there)."""
    if out.exists():
        shutil.rmtree(out)
    (out / "videos").mkdir(parents=True)
    rows = []

    # A: a red disc moving right and a green square moving down; one click and one box on frame 0.
    frames, gt = render(20, 1, [
        ((220, 40, 40), lambda t: disc(30 + 4 * t, 45, 14)),
        ((40, 200, 60), lambda t: rect(100, 10 + 3 * t, 130, 40 + 3 * t)),
    ])
    write_mp4(out / "videos" / "bouncing.mp4", frames)
    rows.append(prompt("bouncing", "videos/bouncing.mp4", 0, 0, points=[centre(gt[0][0])], labels=[1]))
    rows.append(prompt("bouncing", "videos/bouncing.mp4", 1, 0, box=bbox(gt[0][1])))

    # B: a JPEG folder; a yellow disc circling, prompted by a mask on frame 0 and a correcting click on frame 10.
    def orbit(t: int) -> np.ndarray:
        a = t * 2 * np.pi / 16
        return disc(80 + 35 * np.cos(a), 60 + 30 * np.sin(a), 16)

    frames, gt = render(16, 2, [((230, 210, 40), orbit)])
    write_jpegs(out / "videos" / "orbit", frames)
    rows.append(prompt("orbit", "videos/orbit", 0, 0, mask=encode_rle(gt[0][0])))
    rows.append(prompt("orbit", "videos/orbit", 0, 10, points=[centre(gt[10][0])], labels=[1]))

    # C: a blue bar sliding left, prompted mid-video by a box plus a positive and a negative click (propagates
    # forward, then backward to frame 0).
    frames, gt = render(24, 3, [((50, 80, 230), lambda t: rect(130 - 4 * t, 50, 150 - 4 * t, 100))])
    write_mp4(out / "videos" / "slide.mp4", frames)
    rows.append(prompt("slide", "videos/slide.mp4", 0, 8, box=bbox(gt[8][0]),
                       points=[centre(gt[8][0]), [10.0, 10.0]], labels=[1, 0]))

    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), out / "manifest.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    make_sample(parser.parse_args().out)


if __name__ == "__main__":
    main()
