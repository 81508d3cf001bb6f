"""Decoder frames/s: PyAV, torchcodec and decord on a 1080p 24-fps mp4 the benchmark writes (a panning textured
scene, x264, keyframe every ``gop`` frames), read forward, backward (descending indices, as the engine reads back from
a prompt) and every 4th frame (``frame_step=4``), through ``pipeline.actor.decoding`` as a worker reads. Each is
printed with its ratio to PyAV's. ``python -m benchmarks 'sections=[decoding]'`` or ``python -m benchmarks.decoding``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import Figure, figure, format_table
from pipeline.actor.decoding import decoder_unavailable, open_video

READS = {"forward": lambda n: list(range(n)), "backward": lambda n: list(range(n - 1, -1, -1)),
         "step 4": lambda n: list(range(0, n, 4))}


def write_video(path: Path, frames: int, height: int, width: int, gop: int, seed: int) -> None:
    """A panning view over a textured image (smooth shapes plus fine noise): motion the codec must predict."""
    import av

    rng = np.random.default_rng(seed)
    big_h, big_w = height + 4 * frames, width + 8 * frames
    yy, xx = np.mgrid[0:big_h, 0:big_w]
    scene = np.stack([(np.sin(xx / 37.0) + np.cos(yy / 23.0)) * 60 + 128, (xx * 255 // big_w), (yy * 255 // big_h)],
                     axis=-1)
    scene = np.clip(scene + rng.normal(0, 12, scene.shape), 0, 255).astype(np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "g": str(gop), "bf": "2"}
        for t in range(frames):
            view = np.ascontiguousarray(scene[4 * t:4 * t + height, 8 * t:8 * t + width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(view, format="rgb24")))
        container.mux(stream.encode())


def measure(path: str, decoder: str, indices: list[int], runs: int) -> float:
    """Best frames/s over ``runs`` of opening the file and reading ``indices`` (every frame touched)."""
    best = 0.0
    for _ in range(runs):
        start = time.perf_counter()
        with open_video(path, decoder=decoder) as src:
            for frame in src.iter_frames(indices):
                frame[0, 0, 0]
        best = max(best, len(indices) / (time.perf_counter() - start))
    return best


def run_section(cfg: dict[str, Any], seed: int = 0, threads: int = 1) -> list[Figure]:
    """One figure per decoder and read (frames/s, with the ratio to PyAV's in its note)."""
    c = dict(cfg)  # benchmark.yaml's decoding entry
    torch.set_num_threads(threads)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench1080.mp4"
        write_video(path, c["frames"], c["height"], c["width"], c["gop"], seed)
        label = f"{c['width']}x{c['height']} {c['frames']} frames, GOP {c['gop']}"
        for read, make in READS.items():
            indices = make(c["frames"])
            base = None
            for decoder in c["decoders"]:
                reason = decoder_unavailable(decoder)
                if reason:
                    figures.append(figure("decoding", f"{decoder} {read}", None, "frames/s", note=reason))
                    continue
                fps = measure(str(path), decoder, indices, c["runs"])
                base = base or fps  # the first decoder listed (PyAV) is the baseline
                figures.append(figure("decoding", f"{decoder} {read}", fps, "frames/s",
                                      note=f"{fps / base:.2f}x {c['decoders'][0]}; {label}"))
    return figures


if __name__ == "__main__":
    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).parent / "conf" / "benchmark.yaml")
    print(format_table(run_section(OmegaConf.to_container(conf.decoding))))
