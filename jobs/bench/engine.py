"""Engine section: frames per second of our ``VideoSession`` against the official predictor, same weights, video
and prompts.

The official predictor is built with random weights at the benchmark's image size and its state dict is loaded
strictly into our model. Both get the same pixels (the official one a JPEG folder, ours the frames decoded back
from it) and the same prompts (one box per object on frame 0), and both are timed over a forward propagation
only: the official ``init_state`` (which decodes the whole video up front) is outside its timing, our streaming
decode is inside ours. The official package is imported here alone, inside the measuring process: comparing with it
is this section's purpose, and no product code depends on it.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.bench.isolate import run_isolated
from jobs.bench.report import Figure, figure
from jobs.bench.video import object_boxes, synthetic_video, write_jpeg_folder
from sam2core.build import build_model
from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession

_SIZE_SUFFIX = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
CPU_VARIANTS = ("ours", "official")
CUDA_VARIANTS = ("ours", "ours_compiled", "official_vos")


@dataclass(frozen=True)
class EngineRun:
    """One engine measurement: a model at an image size, on a device, for several object counts."""

    model: str
    image_size: int
    objects: tuple[int, ...]
    frames: int
    device: str
    dtype: str
    variants: tuple[str, ...]
    warmup: int
    runs: int
    seed: int


def _official_config(name: str) -> str:
    prefix, size = name.split("_hiera_")
    return f"configs/{prefix}/{prefix}_hiera_{_SIZE_SUFFIX[size]}.yaml"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _best_seconds(prepare: Any, propagate: Any, device: str, warmup: int, runs: int) -> float:
    """Fastest of ``runs`` timed propagations after ``warmup`` untimed ones; ``prepare`` (reset + prompts) untimed."""
    best = float("inf")
    for i in range(warmup + runs):
        prepare()
        _sync(device)
        start = time.perf_counter()
        for _ in propagate():
            pass
        _sync(device)
        if i >= warmup:
            best = min(best, time.perf_counter() - start)
    return best


def _time_ours(model: torch.nn.Module, frames: np.ndarray, boxes: np.ndarray, run: EngineRun,
               compiled: bool) -> float:
    session = VideoSession(model, ArrayFrameSource(frames), SessionOptions(dtype=run.dtype, compile=compiled))

    def prepare() -> None:
        session.reset()
        for k, box in enumerate(boxes):
            session.add_points(0, k, box=box)

    return _best_seconds(prepare, lambda: session.propagate(direction="forward"), run.device, run.warmup, run.runs)


def _time_official(predictor: Any, folder: Path, boxes: np.ndarray, run: EngineRun) -> float:
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if run.dtype == "bfloat16"
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        state = predictor.init_state(video_path=str(folder))

        def prepare() -> None:
            predictor.reset_state(state)
            for k, box in enumerate(boxes):
                predictor.add_new_points_or_box(state, frame_idx=0, obj_id=k, box=box)

        return _best_seconds(prepare, lambda: predictor.propagate_in_video(state), run.device, run.warmup, run.runs)


def _ours_like(official: torch.nn.Module, run: EngineRun) -> torch.nn.Module:
    """Our model holding the official predictor's weights (strict load), on the run's device."""
    model = build_model(run.model, image_size=run.image_size)
    model.load_state_dict(official.state_dict(), strict=True)
    return model.to(run.device).eval()


def measure(run: EngineRun) -> list[dict[str, Any]]:
    """Frames/s of every variant for every object count (runs in a fresh process: see ``isolate``)."""
    from sam2.build_sam import build_sam2_video_predictor  # the comparison target, test oracle only

    if run.device == "cuda":  # as the official benchmark script runs
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(run.seed)
    official = build_sam2_video_predictor(
        _official_config(run.model), None, device=run.device, mode="eval",
        hydra_overrides_extra=[f"++model.image_size={run.image_size}"], apply_postprocessing=False,
        vos_optimized="official_vos" in run.variants)
    # compiling patches the modules in place, so the compiled variant gets a model of its own
    ours = {v: _ours_like(official, run) for v in run.variants if v.startswith("ours")}
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        size = run.image_size
        for n in run.objects:
            folder = Path(tmp) / f"objects{n}"
            frames = write_jpeg_folder(folder, synthetic_video(run.frames, n, size, size))
            boxes = object_boxes(n, size, size)
            for variant in run.variants:
                if variant.startswith("official"):
                    seconds = _time_official(official, folder, boxes, run)
                else:
                    seconds = _time_ours(ours[variant], frames, boxes, run, compiled=variant == "ours_compiled")
                results.append({"variant": variant, "objects": n, "seconds": seconds, "fps": run.frames / seconds})
                print(f"engine {run.model} {run.device} {run.image_size}px: {variant}, {n} obj: "
                      f"{run.frames / seconds:.3g} frames/s", flush=True)
    return results


def _figures(run: EngineRun, results: list[dict[str, Any]], ratio_targets: dict[int, str]) -> list[Figure]:
    where = f"{run.model} {run.device} {run.image_size}px {run.dtype}"
    fps = {(r["variant"], r["objects"]): r["fps"] for r in results}
    baseline = next(v for v in run.variants if v.startswith("official"))
    out = []
    for n in run.objects:
        for variant in run.variants:
            out.append(figure("engine", f"{variant} fps, {n} obj ({where})", fps[variant, n], "frames/s"))
        for variant in run.variants:
            if variant.startswith("ours"):
                out.append(figure("engine", f"{variant}/{baseline}, {n} obj ({where})",
                                  fps[variant, n] / fps[baseline, n], "x", ratio_targets.get(n, "")))
    return out


def run_section(cfg: dict[str, Any], model: str, seed: int, threads: int) -> list[Figure]:
    """CPU comparisons at each configured image size; CUDA comparisons when a GPU is present."""
    figures = []
    cpu = cfg["cpu"]
    cpu_targets = {int(k): v for k, v in cpu["targets"].items()}
    for size in cpu["image_sizes"]:
        run = EngineRun(model, size, tuple(cpu["objects"]), cpu["frames"], "cpu", "float32", CPU_VARIANTS,
                        cpu["warmup"], cpu["runs"], seed)
        figures += _figures(run, run_isolated(measure, threads, run=run), cpu_targets)
    if not torch.cuda.is_available():
        figures.append(figure("engine", "CUDA comparison", None, "", note="skipped: no CUDA device"))
        return figures
    gpu = cfg["cuda"]
    gpu_targets = {n: gpu["target"] for n in gpu["objects"] if n >= gpu["target_min_objects"]}
    for name in gpu["models"]:
        run = EngineRun(name, gpu["image_size"], tuple(gpu["objects"]), gpu["frames"], "cuda", gpu["dtype"],
                        CUDA_VARIANTS, gpu["warmup"], gpu["runs"], seed)
        figures += _figures(run, run_isolated(measure, threads, run=run), gpu_targets)
    return figures
