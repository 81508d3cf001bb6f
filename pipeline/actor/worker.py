"""The Ray actor that turns one video + its prompts into a masklet file, holding one model replica.

A worker reads its video, runs a sam2core ``VideoSession`` and writes the masklets and the done marker itself;
only the task description comes in and a small record goes back, so frames and masks never cross a process
boundary (``pipeline.records``: ``WorkerIdentity`` from ``ready``, ``WorkerResult`` from ``process``,
``WorkerStatus`` from ``status``). Every failure of one video comes back as a failed result naming its cause, and
its ``Fault`` says whether another attempt could succeed: bad input (unreadable file, prompt outside the video)
cannot, a storage outage, an out-of-memory (``Fault.OUT_OF_MEMORY``, retried with smaller object batches) or a GPU
fault (``Fault.GPU_FAULT``: the pool has Ray replace this process, whose CUDA context is lost) can. ``status``
answers while a video runs, from its own thread: the frame the worker is on, for progress and per-video timeouts.

A task with ``auto`` set (``prompts=auto`` or ``manifest+auto``) first discovers the video's objects
(``sam2core.video.discovery`` through ``pipeline.actor.discovery``: the replica's ``AutomaticMaskGenerator`` on
keyframes, short tracking chunks between them),
then runs the one final pass with every object, and writes the masklets in SA-V's auto layout without near-empty
and duplicate masklets.

Testing entry point: ``cluster.worker_class`` names the actor class (default this one); fault tests subclass it
and override ``run_video`` (one video in, its masklets out; ``process`` around it writes them and classifies what
it raises) to raise GPU errors, die or stall inside a real actor. Nothing else in the production path exists for
tests.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import ray
import torch
from ray.util import metrics

from pipeline.actor.discovery import discover, prune
from pipeline.io.masklets import MaskletBuilder, Masklets
from pipeline.io.rle import decode_rle
from pipeline.actor.output_stage import OutputStage
from pipeline.actor.sampling import SampledSource
from pipeline.io.prefix import make_sink
from pipeline.actor.replica import Replica, failure, pick_device, pick_dtype
from pipeline.records import Fault, WorkerResult, WorkerStatus
from pipeline.actor.decoding import VideoError, VideoSource, open_video, sweep_stale_copies
from pipeline.specs import WorkerSpec
from pipeline.plan.tasks import Prompt, VideoTask
from sam2core.automatic import AutomaticMaskGenerator
from sam2core.video import FrameResult, PromptError, SessionOptions, VideoSession
from sam2core.video.discovery import FoundObject


def memory_fraction(gpu_share: float) -> float | None:
    """The share of its GPU's memory a replica holding ``gpu_share`` of the GPU may allocate: that share when it is
    a fraction (replicas sharing a GPU then each run out of their own memory, so an out-of-memory error belongs to
    the replica whose batch caused it), no cap for a whole GPU."""
    return gpu_share if 0 < gpu_share < 1 else None


def replica_threads(cpus: float) -> int:
    """Threads a replica holding ``cpus`` CPUs runs at once in a pool of its own: its output stage's string
    encoders, inductor's parallel compile workers (whose default is one per core of the machine, in every replica
    at once)."""
    return max(1, int(cpus))


def keep_to_share(device: torch.device, gpu_share: float, cpus: float, compile_steps: bool) -> None:
    """Hold this process to its Ray resources: its fraction of a shared GPU's memory, and compile threads by its
    CPUs (before anything is compiled)."""
    fraction = memory_fraction(gpu_share)
    if device.type == "cuda" and fraction is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    if compile_steps:
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = replica_threads(cpus)


def batched_objects(task: VideoTask, default_cap: int, held: int) -> int:
    """Objects per batched step of an attempt at ``task`` whose session held ``held`` objects at its end: the
    task's cap (else ``default_cap``), at most the objects there were (discovered ones count: an automatic task
    has no manifest objects)."""
    cap = task.object_batch or default_cap
    return max(1, min(cap, held or task.num_objects or cap))


def check_geometry(prompt: Prompt, height: int, width: int) -> Prompt:
    """A prompt checked against its video: a mask must have the video's size; points must lie in the frame
    (``0 ≤ x ≤ W``, ``0 ≤ y ≤ H``); a box is clipped to the frame and refused if nothing of it is left.
    PromptError names the manifest row."""
    where = f"manifest row {prompt.row} (object {prompt.obj_id}, frame {prompt.frame_idx})"
    if prompt.mask is not None:
        size = [int(v) for v in prompt.mask["size"]]
        if size != [height, width]:
            raise PromptError(f"{where}: mask is {size[0]}x{size[1]} (HxW) but the video is {height}x{width}")
    for x, y in prompt.points or []:
        if not (0 <= x <= width and 0 <= y <= height):
            raise PromptError(f"{where}: point ({x:g}, {y:g}) is outside the {width}x{height} frame")
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        clipped = [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width),
                   min(max(y1, 0.0), height)]
        if x1 <= x0 or y1 <= y0:
            raise PromptError(f"{where}: box {list(prompt.box)} has zero area (needs x0 < x1 and y0 < y1)")
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            raise PromptError(f"{where}: box {list(prompt.box)} lies outside the {width}x{height} frame")
        if clipped != list(prompt.box):
            prompt = replace(prompt, box=clipped)
    return prompt


class PropagationWorker(Replica):
    """One model replica; ``process`` propagates one video's prompts through the whole video."""

    def __init__(self, spec: WorkerSpec) -> None:
        sweep_stale_copies()  # temp video copies of workers killed before they could remove them
        self.spec = spec
        m = spec.model
        device = pick_device(m.device)
        resources = ray.get_runtime_context().get_assigned_resources()  # this actor's share of its node
        keep_to_share(device, resources.get("GPU", 0.0), resources.get("CPU", 1.0), m.compile)
        self.options = SessionOptions(dtype=pick_dtype(m.dtype, device), compile=m.compile, **spec.session)
        super().__init__(m, device, self.options.dtype)
        self.sink = make_sink(spec.output_uri, spec.output_format, spec.output_storage_options, spec.retry_s,
                              spec.claim)
        self.session: VideoSession | None = None
        self._objects_held = 0  # objects the session held when the last video ended or failed
        self.generator = AutomaticMaskGenerator(self.model, **spec.auto.generator) if spec.auto else None
        self.low_res_size = (m.image_size // 4, m.image_size // 4)
        self.encode_threads = spec.encode_threads or replica_threads(resources.get("CPU", 1.0))
        self._writing: set[str] = set()  # videos whose writes began here
        self._dropped: set[str] = set()  # videos the driver took back (``drop``): never written here
        tags = {"model": m.name}
        self._frames_metric = metrics.Counter("sam2_frames", "frames propagated", tag_keys=("model",))
        self._object_frames_metric = metrics.Counter("sam2_object_frames", "object-frames propagated",
                                                     tag_keys=("model",))
        self._videos_metric = metrics.Counter("sam2_videos", "videos finished", tag_keys=("model", "status"))
        for metric in (self._frames_metric, self._object_frames_metric, self._videos_metric):
            metric.set_default_tags(tags)

    @ray.method(concurrency_group="status")
    def drop(self, video_id: str) -> bool:
        """Give ``video_id`` up (the driver uses another copy of it): True when its writes had not begun here and
        never will (queued, it fails as it starts; running, it stops at its next frame), False when they had (they
        complete, once)."""
        with self._lock:
            if video_id in self._writing:
                return False
            self._dropped.add(video_id)
            return True

    def process(self, task: VideoTask, mark_done: bool = True) -> WorkerResult:
        """Run ``task`` (``run_video``) and write its masklets + done marker (a backup copy, ``mark_done`` False,
        writes no marker: the driver does when it is used); returns a small result, never raises for one video's
        failure: its ``Fault`` tells the driver whether another attempt could succeed."""
        start = time.perf_counter()
        frames, objects = 0, task.num_objects
        self._objects_held = 0
        with self._lock:
            self._status = WorkerStatus(task.video_id, started=time.time(), objects=task.num_objects)
        try:
            self.sink.fence()  # a prefix another job took over: fail at once (claim_lost), before any work
            self._unless_dropped(task.video_id)
            masklets = self.run_video(task)
            frames, objects = len(masklets.frame_indices), len(masklets.obj_ids)  # the frames tracked
            result = WorkerResult(task.video_id, frames=frames, objects=objects,
                                  seconds=round(time.perf_counter() - start, 3), digest=task.digest,
                                  worker=self.identity)
            self._unless_dropped(task.video_id, writing=True)
            self.sink.write(masklets)
            if mark_done:
                self.sink.mark_done(result)
        except (PromptError, VideoError) as exc:
            result = self._failed(task, Fault.BAD_INPUT, f"{type(exc).__name__}: {exc}", frames, objects)
        except Exception as exc:  # noqa: BLE001 - one video's failure must not take the replica down
            fault, reason = failure(exc)
            result = self._failed(task, fault, reason, frames, objects)
            if fault is Fault.OUT_OF_MEMORY:  # what this attempt batched, for the retry to halve
                result = replace(result, object_batch=batched_objects(task, self.options.objects_per_batch(
                    self.device), self._objects_held))
        finally:
            with self._lock:
                self._status = None
        result = replace(result, seconds=round(time.perf_counter() - start, 3))
        self._videos_metric.inc(tags={"status": result.status.value})
        return result

    def _unless_dropped(self, video_id: str, writing: bool = False) -> None:
        """Raise when the driver took ``video_id`` back; else, with ``writing``, its writes begin (no drop now)."""
        with self._lock:
            if video_id in self._dropped:
                self._dropped.discard(video_id)
                raise RuntimeError("dropped: another copy of the video is used")
            if writing:
                self._writing.add(video_id)

    def _failed(self, task: VideoTask, fault: Fault, error: str, frames: int, objects: int) -> WorkerResult:
        return WorkerResult(task.video_id, fault, error, frames, objects, worker=self.identity)

    def run_video(self, task: VideoTask) -> Masklets:
        """One video's masklets: decode, (discover,) prompt, propagate both ways through the output stage. What it
        raises, ``process`` classifies; the fault-injection hook of the tests (``cluster.worker_class``).

        The engine sees the frames the task's grid keeps as frames 0..n-1 (``SampledSource``; every frame without a
        step or a clip); prompts are moved into that numbering and masklets back to the video's."""
        video = open_video(task.video_uri, self.spec.input_storage_options, decoder=self.spec.decoder)
        try:
            source = SampledSource(video, task.grid)
        except BaseException:
            video.close()
            raise
        try:
            session = self._session_for(source, task.object_batch)
            prompts = [on_tracked_frame(check_geometry(p, source.height, source.width), source, video.num_frames)
                       for p in task.prompts]
            session.warm_up(prompt_frames(prompts))  # model.compile: every shape of this video's passes, now ...
            with self._lock:  # ... so the video's time budget starts after the compiling
                self._status.started = time.time()
            found = self._discover(session, source, prompts) if task.auto else []
            for prompt in prompts:
                _apply_prompt(session, prompt)
            for d in found:
                session.add_mask(d.frame_idx, d.obj_id, d.mask)
            with self._lock:
                self._status.frames, self._status.objects = source.num_frames, len(session.obj_ids)
            builder = MaskletBuilder(task.video_id, video.num_frames, source.height, source.width,
                                     session.obj_ids, provenance=self.spec.provenance)
            stage = OutputStage(builder, self.device, self.low_res_size, self.options.non_overlap_masks,
                                self.encode_threads, self.spec.queue_frames)
            try:
                for result in session.propagate(direction="both") if session.obj_ids else ():
                    self._unless_dropped(task.video_id)  # another copy is used: stop here, nothing written
                    stage.put(source.frame(result.frame_idx), result.low_res_logits, result.object_scores)
                    self._status.frames_done += 1
                    self._frames_metric.inc()
                    self._object_frames_metric.inc(len(result.obj_ids))
            except BaseException:
                stage.abort()
                raise
            stage.close()
            if not session.obj_ids:  # nothing found: every tracked frame, no masklet
                for f in source.frames:
                    builder.add_rles(f, [], [], [])
            masklets = decoded_counts(builder.build(), video)
            if not task.auto:
                return masklets
            found = [replace(d, frame_idx=source.frame(d.frame_idx)) for d in found]
            return self._auto_masklets(masklets, found, {p.obj_id for p in prompts})
        finally:
            if self.session is not None:
                self._objects_held = len(self.session.obj_ids)  # at the end (or the failure) of this video
                self.session.reset()
            source.close()

    def _discover(self, session: VideoSession, source: VideoSource, prompts: list[Prompt]) -> list[FoundObject]:
        """The objects of the video the generator finds on keyframes and ``prompts`` do not cover; leaves
        ``session`` reset for the final pass."""
        def progress(frame_idx: int) -> None:
            self._unless_dropped(self._status.video_id)  # another copy is used: stop here
            self._status.frames_done = frame_idx

        with self._lock:  # the time budget counts the walk as one object tracked through the video
            self._status.frames, self._status.objects = source.num_frames, max(1, len({p.obj_id for p in prompts}))
        found = discover(session, self.generator, self.spec.auto, prompts, on_frame=progress)
        session.reset()
        with self._lock:
            self._status.frames_done = 0
        return found

    def _auto_masklets(self, m: Masklets, found: list[FoundObject], manual: set[int]) -> Masklets:
        """SA-V auto layout: per-object types, per-frame stability (the generator's on the keyframe an object was
        found, sigmoid of the object score elsewhere), near-empty and duplicate masklets removed."""
        found_at = {d.obj_id: (d.frame_idx, d.stability) for d in found}
        stability = []
        for f, row in zip(m.frame_indices, m.scores):
            stability.append([found_at[o][1] if found_at.get(o, (None,))[0] == f else _sigmoid(s)
                              for o, s in zip(m.obj_ids, row)])
        types = ["manual" if o in manual else "auto" for o in m.obj_ids]
        m = replace(m, stability=stability, types=types)
        auto = self.spec.auto
        return prune(m, auto.min_area, auto.dedupe_iou, keep=sorted(manual))

    def _session_for(self, source: VideoSource, object_batch: int | None) -> VideoSession:
        """The replica's session switched to ``source`` (built on first use; keeps compiled modules warm); a task
        that ran out of memory before gets a session batching at most ``object_batch`` objects per step."""
        options = self.options if object_batch is None else replace(self.options, max_objects_per_batch=object_batch)
        if self.session is None or self.session.options != options:
            self.session = VideoSession(self.model, source, options)
        else:
            self.session.reset(source)
        return self.session


def decoded_counts(m: Masklets, video: VideoSource) -> Masklets:
    """The masklets of ``video`` with its counts as decoding found them: ``frame_count`` the frames that decode (a
    read that met a corrupt tail lowered ``num_frames``, and the engine's forward pass ended there, so the masklets
    cover just those) and ``header_frame_count`` the header's claim where it differs. Such a video does not fail."""
    header = video.header_frames
    return replace(m, frame_count=video.num_frames,
                   header_frame_count=header if header is not None and header != video.num_frames else None)


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + math.exp(-min(max(x, -80.0), 80.0))))


def on_tracked_frame(prompt: Prompt, source: SampledSource, video_frames: int) -> Prompt:
    """``prompt`` on the engine's numbering of ``source``. The driver refused prompts off the task's grid, so a frame
    not tracked here is past the video's end: PromptError names the manifest row."""
    position = source.position(prompt.frame_idx)
    if position is None:
        raise PromptError(f"manifest row {prompt.row} (object {prompt.obj_id}, frame {prompt.frame_idx}): outside the "
                          f"video (frames 0..{video_frames - 1})")
    return replace(prompt, frame_idx=position)


def prompt_frames(prompts: list[Prompt]) -> dict[int, set[int]]:
    """The frames each object is prompted on (what ``VideoSession.warm_up`` plans a video's passes from)."""
    frames: dict[int, set[int]] = {}
    for prompt in prompts:
        frames.setdefault(prompt.obj_id, set()).add(prompt.frame_idx)
    return frames


def _apply_prompt(session: VideoSession, prompt: Prompt) -> FrameResult:
    """One manifest row → one engine call (points and/or box, or a mask), returning the frame's result; errors name
    the manifest row."""
    try:
        if prompt.mask is not None:
            return session.add_mask(prompt.frame_idx, prompt.obj_id, decode_rle(prompt.mask))
        return session.add_points(prompt.frame_idx, prompt.obj_id, points=prompt.points,
                                  labels=prompt.point_labels, box=prompt.box)
    except PromptError as exc:
        raise PromptError(f"manifest row {prompt.row}: {exc}") from exc


def start_workers(spec: WorkerSpec, count: int, *, num_cpus: float, num_gpus: float, max_restarts: int,
                  worker_class: type | None = None) -> list[ray.actor.ActorHandle]:
    """``count`` replicas (``worker_class``, default ``PropagationWorker``) spread over the cluster's nodes, each
    holding ``num_cpus``/``num_gpus``; ``status`` and ``drop`` run in their own concurrency group, beside ``process``.
    Ray re-runs no task of theirs: the pool decides every re-run."""
    actor = ray.remote(concurrency_groups={"status": 1})(worker_class or PropagationWorker).options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
        scheduling_strategy="SPREAD",
    )
    return [actor.remote(spec) for _ in range(count)]
