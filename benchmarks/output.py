"""Output section: the whole mask output path of a worker, per frame, from low-resolution logits to COCO strings.

Today's path (what a worker did before the output stage): upsample every object's logits to video resolution,
threshold, copy the bool masks to the host and RLE-encode them one after another with pycocotools. The new path is
``pipeline.output.OutputStage``: boxes of the pixels that can be positive, upsampling and run boundaries inside them
on the device, strings built on the host. Same synthetic logits for both (discs with SAM-like slopes: the model
itself is irrelevant here), same bytes checked, on the benchmark's device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.harness import best_seconds, run_isolated
from benchmarks.report import Figure, figure
from pipeline.io.masklets import MaskletBuilder
from pipeline.io.rle import encode_rles
from pipeline.actor.output_stage import OutputStage


def synthetic_logits(frames: int, objects: int, low: int, seed: int) -> list[torch.Tensor]:
    """``[objects, 1, low, low]`` logits per frame: discs of various sizes moving across the frame, -20 far away."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(low).float(), torch.arange(low).float(), indexing="ij")
    base = torch.rand(objects, 3, generator=g)
    out = []
    for t in range(frames):
        cy = (0.15 + 0.7 * base[:, 0] + 0.01 * t) % 1 * low
        cx = (0.15 + 0.7 * base[:, 1] + 0.005 * t) % 1 * low
        r = (0.03 + 0.12 * base[:, 2]) * low
        dist = ((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2).sqrt()
        out.append(((r[:, None, None] - dist) * 1.5).clamp(min=-20.0)[:, None])
    return out


def _today(logits: list[torch.Tensor], height: int, width: int) -> list[list[dict]]:
    frames = []
    for low in logits:
        masks = (F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)[:, 0] > 0).cpu()
        frames.append(encode_rles(masks.numpy()))
    return frames


def _new(logits: list[torch.Tensor], height: int, width: int, device: torch.device, pool: int) -> list[list[dict]]:
    objects, low = logits[0].shape[0], logits[0].shape[-1]
    builder = MaskletBuilder("bench", len(logits), height, width, list(range(objects)))
    stage = OutputStage(builder, device, (low, low), False, pool, depth=8)
    scores = torch.zeros(objects, device=device)
    for t, frame in enumerate(logits):
        stage.put(t, frame, scores)
    stage.close()
    return builder.build().rles


def measure(frames: int, objects: int, image_size: int, height: int, width: int, pool: int, warmup: int,
            runs: int, seed: int) -> dict[str, Any]:
    """Seconds per frame of today's and the new output path on the same logits; whether their bytes agree."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.inference_mode():
        logits = [x.to(device) for x in synthetic_logits(frames, objects, image_size // 4, seed)]
        today_s, today = best_seconds(lambda: _today(logits, height, width), warmup, runs, device=device.type)
        new_s, new = best_seconds(lambda: _new(logits, height, width, device, pool), warmup, runs,
                                  device=device.type)
    same = [[r["counts"] for r in f] for f in today] == [[r["counts"] for r in f] for f in new]
    return {"today": today_s / frames, "new": new_s / frames, "same_bytes": same, "device": device.type}


def run_section(cfg: dict[str, Any], seed: int, threads: int, target: str) -> list[Figure]:
    """Per-frame seconds of both paths and their ratio."""
    r = run_isolated(measure, threads, frames=cfg["frames"], objects=cfg["objects"], image_size=cfg["image_size"],
                     height=cfg["height"], width=cfg["width"], pool=threads, warmup=cfg["warmup"],
                     runs=cfg["runs"], seed=seed)
    where = (f"{cfg['objects']} obj at {cfg['width']}x{cfg['height']} from {cfg['image_size'] // 4}px logits, "
             f"{r['device']}, {threads} thread(s)")
    note = "identical bytes" if r["same_bytes"] else "BYTES DIFFER"
    return [
        figure("output", f"today: full upsample + serial pycocotools ({where})", r["today"] * 1e3, "ms/frame"),
        figure("output", f"output stage ({where})", r["new"] * 1e3, "ms/frame", note=note),
        figure("output", "output stage speed-up", r["today"] / r["new"], "x", target, note=note),
    ]
