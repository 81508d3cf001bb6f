"""The image job, end to end: image manifest → tasks of many images → pool → image workers → parts, then the
COCO file and the summary.

The edges are the propagation job's (``pipeline.driver.job``): inputs checked before Ray starts and refused in one
line (exit 2, nothing written), resume by digest (a task whose done marker carries the same digest is skipped, one
whose prompts changed is recomputed, each task exactly once), exit 1 when a task or an image failed (each named),
130 on Ctrl-C. The pool is the video pool: it schedules image tasks by their key (``ImageTask.video_id``).

When every task of this shard is done, the parts are merged into ``annotations.json`` (``annotations-{k}-of-{n}.json``
for shard k of a job sharded n ways); a shard with failed tasks writes no COCO file, so a file there is complete.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from pipeline.actor.image_worker import ImageWorker
from pipeline.actor.worker import start_workers
from pipeline.driver import cluster
from pipeline.driver.edges import Refused, claim_lost, claim_prefix, finished, with_absolute_paths, write_summary
from pipeline.driver.pool import WorkerPool
from pipeline.driver.progress import IMAGE_UNITS
from pipeline.driver.provenance import RANDOM_CHECKPOINT
from pipeline.driver.scheduling import PoolPolicy
from pipeline.image_specs import ImageJobSpec, ImageWorkerSpec
from pipeline.io.image_prefix import ImageSink, annotations_name
from pipeline.plan.image_manifest import ImagePlan, ManifestError, ManifestReadError, load_image_manifest
from pipeline.plan.image_tasks import ImageTask
from pipeline.plan.tasks import shard_of
from pipeline.records import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, PrefixIdentity, Status,
                              WorkerStartError)

log = logging.getLogger(__name__)


def run_images(spec: ImageJobSpec) -> int:
    """Run the job; 0 when every image of this shard is done, 1 when some failed, 2 refused before any work, 130
    interrupted."""
    spec = with_absolute_paths(spec)
    try:
        plan, provenance, sink = _prepare(spec)
    except Refused as exc:
        log.error("%s", exc)
        return EXIT_REFUSED
    shard = (spec.shard_id, spec.num_shards)
    tasks, todo = _plan_shard(spec, plan, provenance, sink)
    if not todo and finished(sink, shard):
        log.info("nothing to do: every image of this shard is done (%s)", spec.output.uri)
        return EXIT_OK
    start = time.perf_counter()
    pool = None
    try:
        pool = _pool(spec, todo, sink) if todo else None
    except WorkerStartError as exc:
        log.error("%s; no image was processed.", exc)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        log.error("interrupted; re-run the same command to resume")
        return EXIT_INTERRUPTED
    if claim_lost(sink):
        return EXIT_REFUSED
    records = pool.records if pool else []
    failures = {r.video_id: r.error for r in records if r.status is not Status.DONE}
    summary = {"status": "ok", "tasks": len(tasks), "images": sum(t.num_images for t in tasks),
               "objects": sum(t.num_objects for t in tasks), "skipped_tasks": len(tasks) - len(todo),
               "failed_tasks": failures, "failed_images": {}, "annotations": None,
               "seconds": round(time.perf_counter() - start, 3),
               "shard": {"num_shards": spec.num_shards, "shard_id": spec.shard_id}, "model": spec.model.name,
               "checkpoint": spec.model.checkpoint, "random_weights": spec.model.checkpoint == RANDOM_CHECKPOINT,
               "prompts": spec.data.prompts, "workers": [w.to_json() for w in (pool.workers if pool else [])]}
    if not failures:
        parts = [sink.read_part(t.key) for t in tasks]
        summary["failed_images"] = {i: r for p in parts for i, r in p["failed"].items()}
        info = {"description": f"SAM 2 masks ({spec.model.name}) of {spec.data.manifest}",
                "random_weights": summary["random_weights"]}
        summary["annotations"] = sink.write_annotations(parts, shard, info)
        log.info("wrote %s: %d images, %d annotations", summary["annotations"],
                 sum(len(p["images"]) for p in parts), sum(len(p["annotations"]) for p in parts))
    if failures or summary["failed_images"]:
        summary["status"] = "failed"
    if not write_summary(spec, sink, summary, shard):
        failures = failures or {"(summary)": "the output prefix could not be written"}
    bad = {**failures, **summary["failed_images"]}
    if bad:
        log.error("%d tasks and %d images failed (no %s for failed tasks):\n%s", len(failures),
                  len(summary["failed_images"]), annotations_name(shard),
                  "\n".join(f"  {k}: {r}" for k, r in list(bad.items())[:50]))
        return EXIT_FAILED
    return EXIT_OK


def _prepare(spec: ImageJobSpec) -> tuple[ImagePlan, dict, ImageSink]:
    """Manifest, checkpoint and output prefix checked, in that order; Refused names what is wrong."""
    d = spec.data
    try:
        plan = load_image_manifest(d.manifest, d.root, d.storage_options, spec.images.per_task, d.protocols,
                                   d.retry_s, d.prompts)
    except ManifestReadError as exc:
        raise Refused(f"{exc}; nothing was written") from exc
    except ManifestError as exc:
        raise Refused(f"manifest {d.manifest} rejected; nothing was written.\n{exc}") from exc
    if not plan.tasks:
        raise Refused(f"manifest {d.manifest}: it has no rows; nothing to do")
    sink = ImageSink(spec.output.uri, spec.output.storage_options, spec.output.retry_s)
    provenance = claim_prefix(sink, spec.model, {"images": True}, spec.config, spec.output.overwrite, None, "masks")
    return plan, provenance, sink


def _plan_shard(spec: ImageJobSpec, plan: ImagePlan, provenance: dict, sink: ImageSink
                ) -> tuple[list[ImageTask], list[ImageTask]]:
    """This shard's tasks with their digests, and those still to run (no done record, or one of other prompts,
    options or model)."""
    produced_by = {**PrefixIdentity.of(provenance).to_json(), "prompts": spec.data.prompts}
    if spec.data.prompts == "auto":
        produced_by["generator"] = spec.auto.generator
    tasks = [t.with_digest(produced_by) for t in plan.tasks if shard_of(t.key, spec.num_shards) == spec.shard_id]
    done = sink.done_records()
    todo = []
    for t in tasks:
        record = done.get(t.key)
        if record is not None and record.digest == t.digest:
            continue
        if t.key in done:
            log.warning("task %s changed since it was done (prompts, options or model); recomputing", t.key)
        todo.append(t)
    log.info("%d tasks (%d images) in shard %d/%d: %d already done, %d to run", len(tasks),
             sum(t.num_images for t in tasks), spec.shard_id, spec.num_shards, len(tasks) - len(todo), len(todo))
    return tasks, todo


def _pool(spec: ImageJobSpec, todo: list[ImageTask], sink: ImageSink) -> WorkerPool:
    """Start or join Ray, start the image workers and run every task; returns the pool with its records."""
    c = spec.cluster
    with cluster.connected(c.address):
        gpus = cluster.gpus_per_worker(c)
        count = cluster.worker_count(c, gpus, len(todo))
        checkpoint = None if spec.model.checkpoint == RANDOM_CHECKPOINT else spec.model.checkpoint
        worker_spec = ImageWorkerSpec(
            model=replace(spec.model, checkpoint=checkpoint), images=spec.images,
            input_storage_options=spec.data.storage_options, output_uri=spec.output.uri,
            output_storage_options=spec.output.storage_options, retry_s=spec.output.retry_s, claim=sink.claim_token,
            generator=dict(spec.auto.generator) if spec.data.prompts == "auto" else None)
        log.info("starting %d image workers (%s CPU, %s GPU each)", count, c.cpus_per_worker, gpus)
        actors = start_workers(worker_spec, count, num_cpus=c.cpus_per_worker, num_gpus=gpus,
                               max_restarts=c.max_restarts,
                               worker_class=ImageWorker)
        # no backup copies of image tasks: a task with failed images is done without a done marker
        pool = WorkerPool(actors, sink, replace(PoolPolicy.of(c), speculate_after=0.0), spec.log_every_s,
                          IMAGE_UNITS)
        pool.run(todo)
        return pool

