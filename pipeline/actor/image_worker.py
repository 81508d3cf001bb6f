"""The Ray actor that turns a task of many images and their prompts into a COCO part, holding one model replica.

Per task it runs ``pipeline.actor.image_segmenter.ImageSegmenter`` (the loop itself: loader threads ahead, batched
encoding, every object of an image decoded at once, COCO strings built on the loader threads; on a CPU worker with a
core to spare, that core decodes), then writes the part and its done marker. With ``prompts=auto`` the replica's
``AutomaticMaskGenerator`` runs on each image, reusing the batch's features.

One unreadable image, or one whose mask prompt does not fit it, fails alone (named in the part's ``failed``); the
task still completes, but without a done marker, so that a re-run retries it (the image may be there by then). A
storage outage fails the task (retried by the pool), as do out-of-memory (retried with half the images per encoder
batch) and GPU faults (the pool replaces the process). ``status`` reports the images done, for progress and the
task's time budget (``cluster.video_timeout_s`` + ``timeout_s_per_object_frame`` per image).
"""

from __future__ import annotations

import time
from dataclasses import replace

import ray

from pipeline.actor.image_segmenter import ImageSegmenter
from pipeline.actor.replica import Replica, failure, pick_device, pick_dtype
from pipeline.image_specs import ImageWorkerSpec
from pipeline.io.image_prefix import ImageSink
from pipeline.plan.image_tasks import ImageTask
from pipeline.records import Fault, WorkerResult, WorkerStatus
from sam2core.automatic import AutomaticMaskGenerator


class ImageWorker(Replica):
    """One model replica; ``process`` segments every image of one task and writes its part and done marker."""

    def __init__(self, spec: ImageWorkerSpec) -> None:
        self.spec = spec
        m = spec.model
        device = pick_device(m.device)
        self.dtype = pick_dtype(m.dtype, device)
        super().__init__(m, device, self.dtype)
        generator = AutomaticMaskGenerator(self.model, **spec.generator) if spec.generator is not None else None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        self.segmenter = ImageSegmenter(self.model, self.dtype, spec.images.loader_threads or max(1, int(cpus)),
                                        spec.images.ahead, spec.input_storage_options, generator)
        self.sink = ImageSink(spec.output_uri, spec.output_storage_options, spec.retry_s, spec.claim)

    def process(self, task: ImageTask) -> WorkerResult:
        """Run ``task`` and write its part + done marker; returns a small result and never raises for the task's
        failure (its ``Fault`` says whether another attempt could succeed)."""
        start = time.perf_counter()
        with self._lock:
            self._status = WorkerStatus(task.key, started=time.time(), objects=1, frames=task.num_images)
        try:
            self.sink.fence()  # a prefix another job took over: fail at once (claim_lost), before any work
            part = self.run_task(task)
            result = WorkerResult(task.key, frames=task.num_images, objects=len(part["annotations"]),
                                  seconds=round(time.perf_counter() - start, 3), digest=task.digest,
                                  worker=self.identity)
            self.sink.write_part(task.key, part)
            if not part["failed"]:  # a task with failed images stays to do: a re-run retries it
                self.sink.mark_done(result)
        except Exception as exc:  # noqa: BLE001 - one task's failure must not take the replica down
            fault, reason = failure(exc)
            result = WorkerResult(task.key, fault, reason, worker=self.identity,
                                  object_batch=self._batch(task) if fault is Fault.OUT_OF_MEMORY else None)
        finally:
            with self._lock:
                self._status = None
        return replace(result, seconds=round(time.perf_counter() - start, 3))

    def _batch(self, task: ImageTask) -> int:
        return task.image_batch or self.spec.images.batch

    def run_task(self, task: ImageTask) -> dict:
        """The part of one task (``ImageSegmenter.segment``); what it raises, ``process`` classifies."""
        def progress(images: int) -> None:
            with self._lock:
                self._status.frames_done = images

        return self.segmenter.segment(task.images(), self._batch(task), progress)
