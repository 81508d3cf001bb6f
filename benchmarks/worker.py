"""Worker section: how much of the engine's speed one pipeline worker keeps, end to end.

The same mp4 (written with PyAV, served by a local SeaweedFS S3 server) and the same prompts (one box per object on
frame 0) go through (a) the engine alone, on frames decoded beforehand and held in memory, and (b) one
``PropagationWorker`` Ray actor calling ``process(task)``: download, decode, propagate, RLE-encode, write the
masklet file and done marker to S3. Both times cover the prompts and the propagation ("both", as the worker runs).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from benchmarks.harness import best_seconds, run_isolated
from benchmarks.report import Figure, figure
from benchmarks.video import VideoCase, object_boxes, synthetic_video, write_mp4
from pipeline.actor.decoding import open_video
from pipeline.specs import ModelSpec, OutputSpec, WorkerSpec
from pipeline.io.storage import write_bytes
from pipeline.plan.tasks import Prompt, VideoTask
from pipeline.actor.worker import start_workers
from pipeline.records import Status
from sam2core.build import build_model
from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession
from testkit.seaweedfs import local_s3


@dataclass(frozen=True)
class WorkerRun(VideoCase):
    """One video (frames × objects at height × width) through a model at an image size."""

    decoder: str
    output_format: str
    warmup: int
    runs: int
    seed: int


def _device_and_dtype() -> tuple[str, str]:
    return ("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32")


def _engine_seconds(run: WorkerRun, frames: np.ndarray, boxes: np.ndarray) -> float:
    """Best time of prompts + propagation over frames already in memory."""
    device, dtype = _device_and_dtype()
    torch.manual_seed(run.seed)
    model = build_model(run.model, image_size=run.image_size, device=device)
    session = VideoSession(model, ArrayFrameSource(frames), SessionOptions(dtype=dtype))

    def prompt_and_propagate() -> None:
        for k, box in enumerate(boxes):
            session.add_points(0, k, box=box)
        for _ in session.propagate(direction="both"):
            pass

    return best_seconds(prompt_and_propagate, run.warmup, run.runs, prepare=session.reset, device=device)[0]


def _worker_seconds(run: WorkerRun, task: VideoTask, output_uri: str, storage_options: dict) -> float:
    """Best wall time of one ``PropagationWorker.process(task)`` call on a one-actor Ray instance."""
    device, dtype = _device_and_dtype()
    out = OutputSpec(uri=output_uri, format=run.output_format, storage_options=storage_options)
    spec = WorkerSpec(
        model=ModelSpec(run.model, None, run.image_size, device=device, dtype=dtype, seed=run.seed),
        session={}, decoder=run.decoder, input_storage_options=storage_options,
        output_uri=out.uri, output_format=out.format, output_storage_options=out.storage_options,
        provenance={"model": run.model, "checkpoint": "random", "benchmark": True},
        encode_threads=out.encode_threads, queue_frames=out.queue_frames, retry_s=out.retry_s,
    )
    ray.init(address="local", num_cpus=1, num_gpus=int(device == "cuda"), include_dashboard=False, log_to_driver=False)
    try:
        (actor,) = start_workers(spec, 1, num_cpus=1, num_gpus=int(device == "cuda"), max_restarts=0)
        ray.get(actor.ready.remote())

        def process() -> None:
            result = ray.get(actor.process.remote(task))
            if result.status is not Status.DONE:
                raise RuntimeError(f"worker failed on the benchmark video: {result.error}")

        return best_seconds(process, run.warmup, run.runs)[0]
    finally:
        ray.shutdown()


def measure(run: WorkerRun) -> dict[str, Any]:
    """Engine-only and worker seconds for the same video and prompts (runs in a fresh process)."""
    frames = synthetic_video(run.frames, run.objects, run.height, run.width)
    boxes = object_boxes(run.objects, run.height, run.width)
    with local_s3() as s3, tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        storage_options, bucket = s3.storage_options, s3.make_bucket("bench")
        local = write_mp4(Path(tmp) / "bench.mp4", frames)
        uri = f"s3://{bucket}/videos/bench.mp4"
        write_bytes(uri, local.read_bytes(), storage_options)
        with open_video(str(local), decoder=run.decoder) as source:  # what the worker sees, decoded up front
            decoded = np.stack(list(source.iter_frames(range(source.num_frames))))
        engine = _engine_seconds(run, decoded, boxes)
        prompts = tuple(Prompt(k, 0, None, None, [float(v) for v in box], None, k) for k, box in enumerate(boxes))
        task = VideoTask("bench", uri, prompts, run.objects, float(run.objects))
        worker = _worker_seconds(run, task, f"s3://{bucket}/out", storage_options)
    return {"frames": len(decoded), "engine_seconds": engine, "worker_seconds": worker}


def run_section(cfg: dict[str, Any], model: str, seed: int, threads: int, keep_target: str) -> list[Figure]:
    """Engine-only fps, worker fps and the fraction kept, for each case (``cuda_cases`` on a GPU)."""
    figures = []
    for case in cfg["cuda_cases" if torch.cuda.is_available() else "cases"]:
        run = WorkerRun(model, case["image_size"], case["objects"], case["frames"], case["height"], case["width"],
                        cfg["decoder"], cfg["output_format"], cfg["warmup"], cfg["runs"], seed)
        result = run_isolated(measure, threads, run=run)
        where = (f"{model} {run.image_size}px, {run.objects} obj, {result['frames']} frames "
                 f"{run.width}x{run.height}, {_device_and_dtype()[0]}")
        engine_fps = result["frames"] / result["engine_seconds"]
        worker_fps = result["frames"] / result["worker_seconds"]
        figures += [
            figure("worker", f"engine-only fps ({where})", engine_fps, "frames/s"),
            figure("worker", f"worker fps, S3 in/out ({where})", worker_fps, "frames/s"),
            figure("worker", f"worker/engine fps kept ({where})", worker_fps / engine_fps, "fraction", keep_target),
        ]
    return figures
