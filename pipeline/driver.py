"""The propagation job, end to end: manifest → tasks → pool → workers → sink, then the summary.

Everything that can be wrong with the inputs (manifest rows, checkpoint, output prefix of another model) is found
before Ray starts, and nothing is written then. Re-running resumes: done videos are skipped and a finished job
writes nothing. The dispatching itself is ``pipeline.pool``; the workers write the masklets.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, replace

from pipeline import cluster
from pipeline.manifest import ManifestError, load_manifest
from pipeline.pool import WorkerPool, WorkerStartError
from pipeline.provenance import RANDOM_CHECKPOINT, ProvenanceError, job_provenance
from pipeline.sinks import Sink, make_sink
from pipeline.specs import JobSpec, WorkerSpec
from pipeline.storage import is_absolute_uri
from pipeline.tasks import VideoTask, shard_of
from pipeline.worker import start_workers
from sam2core.checkpoint import CheckpointError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED_VIDEOS, EXIT_BAD_INPUT = 0, 1, 2


def run(spec: JobSpec) -> int:
    """Run the job; returns 0 when every video of this shard is done, 1 when some failed, 2 when the job could not
    run (invalid manifest, unreadable checkpoint, output prefix of another model, no worker could start)."""
    spec = _with_absolute_paths(spec)
    if not 0 <= spec.shard_id < spec.num_shards:
        log.error("sharding.shard_id=%d is outside 0..%d", spec.shard_id, spec.num_shards - 1)
        return EXIT_BAD_INPUT
    try:
        plan = load_manifest(spec.data.manifest, spec.data.root, spec.data.storage_options,
                             on_invalid=spec.data.on_invalid)
    except ManifestError as exc:
        log.error("manifest %s rejected; nothing was written.\n%s", spec.data.manifest, exc)
        return EXIT_BAD_INPUT
    for video_id, errors in plan.dropped.items():
        log.warning("video %s dropped: %s", video_id, "; ".join(f"row {e.row} {e.column}: {e.reason}" for e in errors))
    try:
        provenance = job_provenance(spec.model, spec.config)
    except CheckpointError as exc:
        log.error("%s\nThe checkpoint must be readable before the job starts. Pass a local file with "
                  "model.checkpoint=/path/to/%s.pt (or model.checkpoint=random for random weights).",
                  exc, spec.model.name)
        return EXIT_BAD_INPUT
    sink = make_sink(spec.output.uri, spec.output.format, spec.output.storage_options)
    try:
        sink.check_provenance(provenance, spec.output.overwrite)
    except ProvenanceError as exc:
        log.error("%s\nUse another output.uri, or output.overwrite=true to replace those masklets.", exc)
        return EXIT_BAD_INPUT

    tasks = [t for t in plan.tasks if shard_of(t.video_id, spec.num_shards) == spec.shard_id]
    done_before = sink.done_ids()
    todo = [t for t in tasks if t.video_id not in done_before]
    log.info("%d videos in shard %d/%d: %d already done, %d to run", len(tasks), spec.shard_id, spec.num_shards,
             len(tasks) - len(todo), len(todo))
    shard = (spec.shard_id, spec.num_shards)
    if not todo and sink.finished(shard):
        log.info("nothing to do: every video of this shard is done (%s)", spec.output.uri)
        return EXIT_OK

    start = time.perf_counter()
    try:
        records, workers = _run_on_ray(spec, todo, provenance, sink) if todo else ([], [])
    except WorkerStartError as exc:
        log.error("%s; no video was processed.", exc)
        return EXIT_BAD_INPUT
    failures = {r["video_id"]: r["error"] for r in records if r["status"] != "done"}
    summary = _summary(spec, tasks, records, failures, len(tasks) - len(todo), plan.dropped, workers,
                       time.perf_counter() - start)
    sink.write_summary(summary, spec.config_yaml, shard)
    if failures:
        log.error("%d of %d videos failed (reasons in %s/summary.json):\n%s", len(failures), len(todo),
                  spec.output.uri, "\n".join(f"  {v}: {r}" for v, r in failures.items()))
        return EXIT_FAILED_VIDEOS
    log.info("all %d videos done: %s", len(tasks), spec.output.uri)
    return EXIT_OK


def _with_absolute_paths(spec: JobSpec) -> JobSpec:
    """Relative local paths are taken from the driver's working directory (Ray workers have another one)."""
    def absolute(uri: str) -> str:
        return uri if not uri or is_absolute_uri(uri) else os.path.abspath(uri)

    model = spec.model
    if model.checkpoint != RANDOM_CHECKPOINT:
        model = replace(model, checkpoint=absolute(model.checkpoint))
    if model.cache_dir:
        model = replace(model, cache_dir=os.path.expanduser(model.cache_dir))
    data = replace(spec.data, manifest=absolute(spec.data.manifest), root=absolute(spec.data.root))
    return replace(spec, model=model, data=data, output=replace(spec.output, uri=absolute(spec.output.uri)))


def _run_on_ray(spec: JobSpec, todo: list[VideoTask], provenance: dict, sink: Sink) -> tuple[list[dict], list[dict]]:
    """Start or join Ray, start the worker replicas, run every task; returns the video records and the workers."""
    with cluster.connected(spec.cluster.address):
        gpus = cluster.gpus_per_worker(spec.cluster)
        count = cluster.worker_count(spec.cluster, gpus, len(todo))
        checkpoint = None if spec.model.checkpoint == RANDOM_CHECKPOINT else spec.model.checkpoint
        worker_spec = WorkerSpec(
            model=replace(spec.model, checkpoint=checkpoint), session=spec.session, decoder=spec.data.decoder,
            input_storage_options=spec.data.storage_options, output_uri=spec.output.uri,
            output_format=spec.output.format, output_storage_options=spec.output.storage_options,
            provenance=provenance, encode_threads=spec.output.encode_threads, queue_frames=spec.output.queue_frames,
        )
        c = spec.cluster
        log.info("starting %d workers (%s CPU, %s GPU each)", count, c.cpus_per_worker, gpus)
        actors = start_workers(worker_spec, count, num_cpus=c.cpus_per_worker, num_gpus=gpus,
                               max_restarts=c.max_restarts, max_task_retries=c.max_task_retries)
        pool = WorkerPool(actors, sink, c.tasks_per_worker, c.max_attempts, spec.log_every_s)
        return pool.run(todo), pool.workers


def _summary(spec: JobSpec, tasks: list[VideoTask], records: list[dict], failures: dict[str, str],
             skipped: int, dropped: dict, workers: list[dict], seconds: float) -> dict:
    frames = sum(r["frames"] for r in records if r["status"] == "done")
    return {
        "status": "failed" if failures else "ok",
        "videos": len(tasks),
        "done": sum(r["status"] == "done" for r in records),
        "failed": len(failures),
        "skipped": skipped,
        "dropped": {v: [asdict(e) for e in errs] for v, errs in dropped.items()},
        "frames": frames,
        "seconds": round(seconds, 3),
        "frames_per_second": round(frames / seconds, 3) if seconds > 0 else None,
        "failures": failures,
        "shard": {"num_shards": spec.num_shards, "shard_id": spec.shard_id},
        "model": spec.model.name,
        "checkpoint": spec.model.checkpoint,
        "workers": [{**w, "videos": sum(r.get("pid") == w["pid"] and r.get("node_id") == w["node_id"]
                                        for r in records)} for w in workers],
    }
