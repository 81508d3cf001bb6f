"""Frame-step section: one pipeline worker end to end on a 24-fps 1080p mp4, every frame vs ``data.frame_step``.

A synthetic 1080p H.264 video (one moving square per object, rendered and encoded a frame at a time) and one box
per object on frame 0 go through one ``PropagationWorker`` Ray actor calling ``process(task)`` (decode, propagate
both ways, RLE-encode, write the masklet file and the done marker to a local prefix) once per step, the steps taking
turns. The figure is the wall time of each step and the speed-up of each over the first; the masklets are checked
to hold the sampled frames with their original numbers and the video's full count.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from benchmarks.harness import Timed, interleaved_best, run_isolated
from benchmarks.report import Figure, figure
from benchmarks.video import VideoCase, object_boxes, render_frame, write_mp4
from pipeline.actor.worker import start_workers
from pipeline.io.masklets import read_masklets
from pipeline.plan.sampling import FrameGrid
from pipeline.plan.tasks import Prompt, VideoTask
from pipeline.records import Status
from pipeline.specs import ModelSpec, OutputSpec, WorkerSpec


@dataclass(frozen=True)
class StepRun(VideoCase):
    """One video through one worker at each of ``steps`` (the first is the baseline)."""

    steps: tuple[int, ...]
    decoder: str
    runs: int
    seed: int


def _device_and_dtype() -> tuple[str, str]:
    return ("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32")


def measure(run: StepRun) -> dict[str, Any]:
    """Best seconds of ``process(task)`` per step, after an untimed warm-up on a short clip (runs in a fresh
    process)."""
    device, dtype = _device_and_dtype()
    with tempfile.TemporaryDirectory(prefix="bench-frame-step-") as tmp:
        video = write_mp4(Path(tmp) / "bench.mp4", (render_frame(t, run.objects, run.height, run.width).numpy()
                                                    for t in range(run.frames)))
        out = OutputSpec(uri=str(Path(tmp) / "out"))
        spec = WorkerSpec(
            model=ModelSpec(run.model, None, run.image_size, device=device, dtype=dtype, seed=run.seed),
            session={}, decoder=run.decoder, input_storage_options=None, output_uri=out.uri,
            output_format=out.format, output_storage_options=None,
            provenance={"model": run.model, "checkpoint": "random", "benchmark": True},
            encode_threads=out.encode_threads, queue_frames=out.queue_frames, retry_s=out.retry_s,
        )
        boxes = object_boxes(run.objects, run.height, run.width)
        prompts = tuple(Prompt(k, 0, None, None, [float(v) for v in box], None, k) for k, box in enumerate(boxes))

        def task(grid: FrameGrid) -> VideoTask:
            return VideoTask("bench", str(video), prompts, run.objects, float(run.objects), grid=grid)

        ray.init(address="local", num_cpus=1, num_gpus=int(device == "cuda"), include_dashboard=False,
                 log_to_driver=False)
        try:
            (actor,) = start_workers(spec, 1, num_cpus=1, num_gpus=int(device == "cuda"), max_restarts=0)
            ray.get(actor.ready.remote())

            def process(grid: FrameGrid) -> None:
                result = ray.get(actor.process.remote(task(grid)))
                if result.status is not Status.DONE:
                    raise RuntimeError(f"worker failed on the benchmark video: {result.error}")

            process(FrameGrid(run.steps[-1], 0, 4 * run.steps[-1] - 1))  # warm-up: a few frames
            seconds = interleaved_best({str(step): Timed(lambda step=step: process(FrameGrid(step)))
                                        for step in run.steps}, 0, run.runs)
            m = read_masklets(str(Path(out.uri) / "masklets" / "bench.json"))  # the last step's, written last
            expected = list(FrameGrid(run.steps[-1]).frames(run.frames))
            if m.frame_indices != expected or m.frame_count != run.frames:
                raise RuntimeError(f"step {run.steps[-1]}: masklets on frames {m.frame_indices[:4]}… of "
                                   f"{m.frame_count}, expected {expected[:4]}… of {run.frames}")
        finally:
            ray.shutdown()
    return {"seconds": {int(step): s for step, s in seconds.items()}}


def run_section(cfg: dict[str, Any], seed: int, threads: int) -> list[Figure]:
    """Seconds per step and the speed-up of each step over the first (``cuda_image_size`` on a GPU)."""
    device, _ = _device_and_dtype()
    image_size = cfg["cuda_image_size" if device == "cuda" else "image_size"]
    steps = tuple(int(s) for s in cfg["steps"])
    run = StepRun(cfg["model"], image_size, cfg["objects"], cfg["frames"], cfg["height"], cfg["width"], steps,
                  cfg["decoder"], cfg["runs"], seed)
    seconds = run_isolated(measure, threads, run=run)["seconds"]
    where = (f"{run.model} {image_size}px, {run.objects} obj, {run.frames} frames {run.width}x{run.height} 24 fps, "
             f"{device}")
    base = steps[0]
    figures = [figure("frame_step", f"worker seconds, data.frame_step={step} ({where})", seconds[step], "s")
               for step in steps]
    figures += [figure("frame_step", f"step {step} vs step {base}: speed-up ({where})", seconds[base] / seconds[step],
                       "x", cfg["target"] if step == steps[-1] else "") for step in steps[1:]]
    return figures
