"""Memory section: does a session's memory grow with the video's length? Peak figures for a short and a long video.

Frames come from ``SyntheticSource`` (rendered on demand on the model's device, none kept), so what can grow is the
engine's own state.
Each length runs in a fresh process: the session's tensor bytes (``VideoSession.state_nbytes``) and the process's
resident set, both sampled every frame while propagating, and on CUDA ``torch.cuda.max_memory_allocated``. (The
RSS high-water mark of the whole process is reported beside them, but its peak can come from model building.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.harness import current_rss_bytes, peak_rss_bytes, run_isolated
from benchmarks.report import Figure, figure
from benchmarks.video import SyntheticSource, VideoCase, object_boxes
from sam2core.build import build_model
from sam2core.video import SessionOptions, VideoSession

MIB = 1024 ** 2


@dataclass(frozen=True)
class MemoryRun(VideoCase):
    """One propagation of ``frames`` frames with ``objects`` objects."""

    seed: int


def measure(run: MemoryRun) -> dict[str, Any]:
    """Peak session bytes, RSS and GPU bytes over a forward propagation (runs in a fresh process)."""
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    torch.manual_seed(run.seed)
    model = build_model(run.model, image_size=run.image_size, device=device)
    session = VideoSession(model, SyntheticSource(run.frames, run.objects, run.height, run.width, device),
                           SessionOptions(dtype=dtype))
    for k, box in enumerate(object_boxes(run.objects, run.height, run.width)):
        session.add_points(0, k, box=box)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    state_peak = rss_peak = 0
    start = time.perf_counter()
    for _ in session.propagate(direction="forward"):
        state_peak = max(state_peak, session.state_nbytes())
        rss_peak = max(rss_peak, current_rss_bytes())
    return {"seconds": time.perf_counter() - start, "state_peak": state_peak, "rss_peak": rss_peak,
            "rss_high_water": peak_rss_bytes(), "gpu_peak": torch.cuda.max_memory_allocated() if cuda else None}


def _growth(short: float | None, long: float | None) -> float | None:
    return None if short is None or long is None else long / short - 1


def run_section(cfg: dict[str, Any], model: str, seed: int, threads: int, growth_target: str) -> list[Figure]:
    """Peaks for each length and the growth from the shortest to the longest."""
    results = {}
    for frames in cfg["frames"]:
        run = MemoryRun(model, cfg["image_size"], cfg["objects"], frames, cfg["height"], cfg["width"], seed)
        results[frames] = run_isolated(measure, threads, run=run)
    where = f"{model} {cfg['image_size']}px, {cfg['objects']} obj"
    out = []
    for frames, r in results.items():
        out += [figure("memory", f"session state peak, {frames} frames ({where})", r["state_peak"] / MIB, "MiB"),
                figure("memory", f"process RSS peak while propagating, {frames} frames", r["rss_peak"] / MIB, "MiB",
                       note=f"whole-process high-water mark {r['rss_high_water'] / MIB:.0f} MiB")]
        if r["gpu_peak"] is not None:
            out.append(figure("memory", f"GPU allocated peak, {frames} frames", r["gpu_peak"] / MIB, "MiB"))
    short, long = results[min(results)], results[max(results)]
    span = f"{max(results)} vs {min(results)} frames"
    for key, label in (("state_peak", "session state"), ("rss_peak", "process RSS"), ("gpu_peak", "GPU allocated")):
        growth = _growth(short[key], long[key])
        if growth is not None:
            out.append(figure("memory", f"{label} growth, {span}", growth, "fraction", growth_target))
    return out
