"""The Ray actor that turns one video + its prompts into a masklet file, holding one model replica.

A worker reads its video, runs a sam2core ``VideoSession`` and writes the masklets and the done marker itself;
only the task description comes in and a small record goes back, so frames and masks never cross a process
boundary. Failures of one video (unreadable file, prompt past the last frame) come back as a failed record and
leave the actor serving the next video; a dead process is Ray's business (``max_restarts``/``max_task_retries``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
import torch

from pipeline.masklets import MaskletBuilder, Masklets, decode_rle
from pipeline.output import OutputStage
from pipeline.sinks import make_sink
from pipeline.sources import VideoError, open_video
from pipeline.specs import WorkerSpec
from pipeline.tasks import Prompt, VideoTask
from sam2core.build import build_model
from sam2core.video import PromptError, SessionOptions, VideoSession


def pick_device(requested: str) -> torch.device:
    """``auto`` → the GPU Ray assigned to this actor, else CPU; ``cuda`` → that GPU (Ray sets the actor's
    CUDA_VISIBLE_DEVICES, so it is always device 0 here); ``cpu`` → CPU."""
    if requested == "auto":
        return torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> str:
    """``auto`` → bfloat16 on GPU (as the official tools run), float32 on CPU."""
    if requested != "auto":
        return requested
    return "bfloat16" if device.type == "cuda" else "float32"


class PropagationWorker:
    """One model replica; ``process`` propagates one video's prompts through the whole video."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.device = pick_device(spec.model.device)
        m = spec.model
        torch.manual_seed(m.seed)
        self.model = build_model(m.name, m.checkpoint, image_size=m.image_size, device=self.device,
                                 storage_options=m.storage_options, cache_dir=m.cache_dir)
        self.options = SessionOptions(dtype=pick_dtype(m.dtype, self.device), compile=m.compile, **spec.session)
        self.sink = make_sink(spec.output_uri, spec.output_format, spec.output_storage_options)
        self.session: VideoSession | None = None
        self.low_res_size = (m.image_size // 4, m.image_size // 4)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)  # this actor's share
        self.encode_threads = spec.encode_threads or max(1, int(cpus))
        self.identity = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                         "device": str(self.device), "dtype": self.options.dtype}

    def ready(self) -> dict:
        """Where this replica runs (node, pid, device, dtype); returns once the model is built."""
        return self.identity

    def process(self, task: VideoTask) -> dict:
        """Propagate ``task`` and write its masklets + done marker; returns a small record, never raises for bad
        input. ``retryable`` tells the driver whether another attempt could succeed (not for bad videos/prompts)."""
        start = time.perf_counter()
        record: dict[str, Any] = {"video_id": task.video_id, "status": "done", "frames": 0,
                                  "objects": task.num_objects, "error": None, "retryable": False, **self.identity}
        try:
            masklets = self._propagate(task)
            record["frames"] = masklets.frame_count
            record["seconds"] = round(time.perf_counter() - start, 3)
            self.sink.write(masklets)
            self.sink.mark_done(task.video_id, record)
        except (PromptError, VideoError) as exc:
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one video's failure must not take the replica down
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}", retryable=True)
        record["seconds"] = round(time.perf_counter() - start, 3)
        return record

    def _propagate(self, task: VideoTask) -> Masklets:
        source = open_video(task.video_uri, self.spec.input_storage_options, decoder=self.spec.decoder)
        try:
            session = self._session_for(source)
            for prompt in task.prompts:
                _apply_prompt(session, prompt)
            builder = MaskletBuilder(task.video_id, source.num_frames, source.height, source.width,
                                     session.obj_ids, provenance=self.spec.provenance)
            stage = OutputStage(builder, self.device, self.low_res_size, self.options.non_overlap_masks,
                                self.encode_threads, self.spec.queue_frames)
            try:
                for result in session.propagate(direction="both"):
                    stage.put(result.frame_idx, result.low_res_logits, result.object_scores)
            except BaseException:
                stage.abort()
                raise
            stage.close()
            return builder.build()
        finally:
            if self.session is not None:
                self.session.reset()
            source.close()

    def _session_for(self, source: Any) -> VideoSession:
        """The replica's session switched to ``source`` (built on first use; keeps compiled modules warm)."""
        if self.session is None:
            self.session = VideoSession(self.model, source, self.options)
        else:
            self.session.reset(source)
        return self.session


def _apply_prompt(session: VideoSession, prompt: Prompt) -> None:
    """One manifest row → one engine call (points and/or box, or a mask); errors name the manifest row."""
    try:
        if prompt.mask is not None:
            session.add_mask(prompt.frame_idx, prompt.obj_id, decode_rle(prompt.mask))
        else:
            session.add_points(prompt.frame_idx, prompt.obj_id, points=prompt.points, labels=prompt.point_labels,
                               box=prompt.box)
    except PromptError as exc:
        raise PromptError(f"manifest row {prompt.row}: {exc}") from exc


def start_workers(spec: WorkerSpec, count: int, *, num_cpus: float, num_gpus: float, max_restarts: int,
                  max_task_retries: int) -> list[ray.actor.ActorHandle]:
    """``count`` replicas spread over the cluster's nodes, each holding ``num_cpus``/``num_gpus``."""
    actor = ray.remote(PropagationWorker).options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=max_task_retries,
        scheduling_strategy="SPREAD",
    )
    return [actor.remote(spec) for _ in range(count)]
