"""The propagation job, end to end: manifest → tasks → pool → workers → sink, then the summary.

Everything that can be wrong with the inputs (manifest rows, checkpoint, an unreachable or foreign output prefix)
is found before Ray starts, and refused with one line and exit status 2; nothing is written then. Re-running
resumes: videos whose done record carries the same digest (prompts, engine options, model) are skipped, changed
ones recomputed, and a finished job writes nothing. Storage that stays down ends the job cleanly: exit 1, every
unfinished video named, the summary written locally if the prefix cannot take it. Ctrl-C stops it with one line
and exit status 130; a re-run of the same command resumes.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import asdict, replace

from pipeline.driver import cluster
from pipeline.driver.edges import Refused, claim_lost, claim_prefix, finished, with_absolute_paths, write_summary
from pipeline.plan.manifest import ManifestError, ManifestPlan, ManifestReadError, list_videos, load_manifest
from pipeline.driver.pool import WorkerPool
from pipeline.driver.provenance import RANDOM_CHECKPOINT
from pipeline.driver.scheduling import PoolPolicy
from pipeline.io.prefix import Sink, make_sink
from pipeline.specs import JobSpec, WorkerSpec
from pipeline.plan.tasks import VideoTask, shard_of, with_digests
from pipeline.actor.worker import start_workers
from pipeline.records import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, PrefixIdentity, Status,
                              WorkerIdentity, WorkerResult, WorkerStartError)

log = logging.getLogger(__name__)


def run(spec: JobSpec) -> int:
    """Run the job; returns 0 when every video of this shard is done, 1 when some failed, 2 when the job was
    refused before any work, 130 when interrupted (Ctrl-C)."""
    spec = with_absolute_paths(spec)
    try:
        plan, provenance, sink = _prepare(spec)
    except Refused as exc:
        log.error("%s", exc)
        return EXIT_REFUSED
    tasks, todo = _plan_shard(spec, plan, provenance, sink)
    shard = (spec.shard_id, spec.num_shards)
    if not todo and finished(sink, shard):
        log.info("nothing to do: every video of this shard is done (%s)", spec.output.uri)
        return EXIT_OK

    start = time.perf_counter()
    try:
        pool = _pool(spec, todo, provenance, sink) if todo else None
    except WorkerStartError as exc:
        log.error("%s; no video was processed.", exc)
        return EXIT_REFUSED
    except KeyboardInterrupt as exc:
        records = exc.pool.records if isinstance(exc, _Interrupted) else []
        log.error("interrupted: %d of %d videos done in this run, %d before; re-run the same command to resume",
                  sum(r.status is Status.DONE for r in records), len(todo), len(tasks) - len(todo))
        return EXIT_INTERRUPTED
    if claim_lost(sink):
        return EXIT_REFUSED
    records, workers, unrecorded = (pool.records, pool.workers, pool.unrecorded) if pool else ([], [], [])
    failures = {r.video_id: r.error for r in records if r.status is not Status.DONE}
    summary = _summary(spec, tasks, records, failures, len(tasks) - len(todo), plan.dropped, workers, unrecorded,
                       time.perf_counter() - start)
    if not write_summary(spec, sink, summary, shard):
        failures = failures or {"(summary)": "the output prefix could not be written"}
    if failures:
        log.error("%d of %d videos failed (reasons in the summary):\n%s", len(failures), len(todo),
                  "\n".join(f"  {v}: {r}" for v, r in failures.items()))
        return EXIT_FAILED
    log.info("all %d videos done: %s", len(tasks), spec.output.uri)
    return EXIT_OK


def _prepare(spec: JobSpec) -> tuple[ManifestPlan, dict, Sink]:
    """Manifest, checkpoint and output prefix checked, in that order; Refused names what is wrong."""
    d = spec.data
    try:
        if d.videos is not None:
            plan = list_videos(d.videos, d.storage_options, d.protocols, d.frame_step)
        else:
            plan = load_manifest(d.manifest, d.root, d.storage_options, on_invalid=d.on_invalid,
                                 protocols=d.protocols, retry_s=d.retry_s, mode=d.prompts, frame_step=d.frame_step)
    except ManifestReadError as exc:
        raise Refused(f"{exc}; nothing was written") from exc
    except ManifestError as exc:
        raise Refused(f"{'data.videos ' + d.videos if d.videos is not None else 'manifest ' + d.manifest} "
                      f"rejected; nothing was written.\n{exc}") from exc
    for video_id, errors in plan.dropped.items():
        log.warning("video %s dropped: %s", video_id, "; ".join(f"row {e.row} {e.column}: {e.reason}" for e in errors))
    if not plan.tasks:
        what = "every video of it was dropped (data.on_invalid=drop_video)" if plan.dropped else "it has no rows"
        raise Refused(f"manifest {spec.data.manifest}: {what}; nothing to do")
    sink = make_sink(spec.output.uri, spec.output.format, spec.output.storage_options, spec.output.retry_s)
    provenance = claim_prefix(sink, spec.model, spec.session, spec.config, spec.output.overwrite, spec.data.decoder,
                              "masklets")
    return plan, provenance, sink


def _plan_shard(spec: JobSpec, plan: ManifestPlan, provenance: dict, sink: Sink
                ) -> tuple[list[VideoTask], list[VideoTask]]:
    """This shard's tasks (each with its digest) and those still to run: no done record, a record that does not
    parse, or one made from other prompts/options/model (logged as changed)."""
    produced_by = PrefixIdentity.of(provenance).to_json()
    if spec.data.prompts != "manifest":  # discovery options change the masklets too
        produced_by = {**produced_by, "prompts": spec.data.prompts, "auto": asdict(spec.auto)}
    tasks = with_digests([t for t in plan.tasks if shard_of(t.video_id, spec.num_shards) == spec.shard_id],
                         produced_by)
    done = sink.done_records()
    todo = []
    for t in tasks:
        if t.video_id not in done:
            todo.append(t)
        elif done[t.video_id] is None:
            log.warning("video %s: its done marker does not parse; recomputing", t.video_id)
            todo.append(t)
        elif done[t.video_id].digest != t.digest:
            log.warning("video %s changed since it was done (prompts, options or model); recomputing", t.video_id)
            todo.append(t)
    log.info("%d videos in shard %d/%d: %d already done, %d to run", len(tasks), spec.shard_id, spec.num_shards,
             len(tasks) - len(todo), len(todo))
    return tasks, todo


def _worker_class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _pool(spec: JobSpec, todo: list[VideoTask], provenance: dict, sink: Sink) -> WorkerPool:
    """Start or join Ray, start the worker replicas and run every task; returns the pool with its records."""
    c = spec.cluster
    with cluster.connected(c.address):
        gpus = cluster.gpus_per_worker(c)
        count = cluster.worker_count(c, gpus, len(todo))
        checkpoint = None if spec.model.checkpoint == RANDOM_CHECKPOINT else spec.model.checkpoint
        o = spec.output
        worker_spec = WorkerSpec(
            model=replace(spec.model, checkpoint=checkpoint), session=spec.session, decoder=spec.data.decoder,
            input_storage_options=spec.data.storage_options, output_uri=o.uri, output_format=o.format,
            output_storage_options=o.storage_options, provenance=provenance, encode_threads=o.encode_threads,
            queue_frames=o.queue_frames, retry_s=o.retry_s, claim=sink.claim_token,
            auto=spec.auto if spec.data.prompts != "manifest" else None,
        )
        log.info("starting %d workers (%s CPU, %s GPU each)", count, c.cpus_per_worker, gpus)
        actors = start_workers(worker_spec, count, num_cpus=c.cpus_per_worker, num_gpus=gpus,
                               max_restarts=c.max_restarts,
                               worker_class=_worker_class(c.worker_class))
        pool = WorkerPool(actors, sink, PoolPolicy.of(c), spec.log_every_s)
        try:
            pool.run(todo)
        except KeyboardInterrupt:
            raise _Interrupted(pool) from None
        return pool


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C inside the pool, carrying it so the driver can say how far the job got."""

    def __init__(self, pool: WorkerPool) -> None:
        super().__init__()
        self.pool = pool


def _summary(spec: JobSpec, tasks: list[VideoTask], records: list[WorkerResult], failures: dict[str, str],
             skipped: int, dropped: dict, workers: list[WorkerIdentity], unrecorded: list[str], seconds: float) -> dict:
    frames = sum(r.frames for r in records if r.status is Status.DONE)
    return {
        "status": "failed" if failures else "ok",
        "videos": len(tasks),
        "done": sum(r.status is Status.DONE for r in records),
        "failed": len(failures),
        "skipped": skipped,
        "dropped": {v: [asdict(e) for e in errs] for v, errs in dropped.items()},
        "frames": frames,
        "seconds": round(seconds, 3),
        "frames_per_second": round(frames / seconds, 3) if seconds > 0 else None,
        "failures": failures,
        "unrecorded_failures": sorted(unrecorded),
        "shard": {"num_shards": spec.num_shards, "shard_id": spec.shard_id},
        "model": spec.model.name,
        "checkpoint": spec.model.checkpoint,
        "random_weights": spec.model.checkpoint == RANDOM_CHECKPOINT,
        "workers": [{**w.to_json(), "videos": sum(r.worker is not None and (r.worker.pid, r.worker.node_id) ==
                                                  (w.pid, w.node_id) for r in records)} for w in workers],
    }
