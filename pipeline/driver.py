"""The propagation job: validate inputs, plan this shard, keep a pool of Ray workers busy, summarise.

Everything that can be wrong with the inputs (manifest rows, checkpoint, output prefix of another model) is found
before Ray starts, and nothing is written then. Work goes out largest video first, ``tasks_per_worker`` per replica;
a video whose worker died goes back to the queue for another replica (``max_attempts``), a video that fails on its
own (corrupt file, bad prompt) is recorded as failed and the job goes on. Re-running resumes: done videos are
skipped and a finished job writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from typing import Any

import ray

from pipeline.manifest import ManifestError, VideoTask, load_manifest, shard_of
from pipeline.sinks import ProvenanceError, Sink, make_sink
from pipeline.storage import exists, is_absolute_uri, join_uri
from pipeline.worker import ModelSpec, WorkerSpec, start_workers
from sam2core.checkpoint import CheckpointError, fetch, inspect_checkpoint

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED_VIDEOS, EXIT_BAD_INPUT = 0, 1, 2
RANDOM_CHECKPOINT = "random"


@dataclass(frozen=True)
class DataSpec:
    """Where the manifest and the videos are and how to decode them (conf/data)."""

    name: str
    manifest: str
    root: str
    decoder: str = "decord"
    on_invalid: str = "fail"
    storage_options: dict | None = None


@dataclass(frozen=True)
class OutputSpec:
    """Where masklets go (conf/output)."""

    uri: str
    format: str = "sav_json"
    overwrite: bool = False
    storage_options: dict | None = None


@dataclass(frozen=True)
class ClusterSpec:
    """Ray placement and fault tolerance (conf/cluster); None sizes come from the cluster's resources."""

    address: str | None = None
    num_workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1
    tasks_per_worker: int = 2
    max_restarts: int = 2
    max_task_retries: int = 1
    max_attempts: int = 3


@dataclass(frozen=True)
class JobSpec:
    """The whole job as plain values; ``model.checkpoint`` is a path/URI or ``"random"``."""

    model: ModelSpec
    session: dict
    data: DataSpec
    output: OutputSpec
    cluster: ClusterSpec
    num_shards: int = 1
    shard_id: int = 0
    log_every_s: float = 10.0
    config: dict | None = None  # the resolved config without credentials: recorded in provenance
    config_yaml: str = ""  # the same as YAML, written beside the summary


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
        provenance = _provenance(spec)
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
    if not todo and _finished_before(sink, shard):
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


def _finished_before(sink: Sink, shard: tuple[int, int]) -> bool:
    """Whether an earlier run of this shard ended with its summary (the ``_SUCCESS`` naming of Sink.write_summary)."""
    k, n = shard
    return exists(join_uri(sink.uri, f"_SUCCESS-{k}-of-{n}" if n > 1 else "_SUCCESS"), sink.storage_options)


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


def _provenance(spec: JobSpec) -> dict:
    """What produced these masklets. Fetches the checkpoint into the local cache and checks its architecture."""
    prov: dict[str, Any] = {"model": spec.model.name, "image_size": spec.model.image_size,
                            "package_version": version("sam2-propagate"), "config": spec.config or {}}
    if spec.model.checkpoint == RANDOM_CHECKPOINT:
        log.warning("model.checkpoint=random: RANDOM WEIGHTS (seed %d); the masks are meaningless", spec.model.seed)
        return {**prov, "checkpoint": RANDOM_CHECKPOINT, "checkpoint_sha256": None, "random_seed": spec.model.seed}
    path = fetch(spec.model.checkpoint, spec.model.storage_options, spec.model.cache_dir)
    name, _, _ = inspect_checkpoint(path)
    if name != spec.model.name:
        raise CheckpointError(f"{spec.model.checkpoint} holds a {name} model, but model={spec.model.name}; "
                              f"choose model={name}")
    with open(path, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    log.info("checkpoint %s (sha256 %s)", spec.model.checkpoint, sha256)
    return {**prov, "checkpoint": spec.model.checkpoint, "checkpoint_sha256": sha256}


def _run_on_ray(spec: JobSpec, todo: list[VideoTask], provenance: dict, sink: Sink) -> tuple[list[dict], list[dict]]:
    """Start or join Ray, build the worker pool, run every task; returns the video records and the workers."""
    cluster = spec.cluster
    if cluster.address is None and "RAY_ADDRESS" not in os.environ:  # RAY_ADDRESS: inside `ray job submit`
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
    else:
        ray.init(address=cluster.address)
    try:
        gpus = cluster.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        count = min(len(todo), cluster.num_workers or _fitting_workers(gpus, cluster.cpus_per_worker))
        checkpoint = None if spec.model.checkpoint == RANDOM_CHECKPOINT else spec.model.checkpoint
        worker_spec = WorkerSpec(
            model=replace(spec.model, checkpoint=checkpoint), session=spec.session, decoder=spec.data.decoder,
            input_storage_options=spec.data.storage_options, output_uri=spec.output.uri,
            output_format=spec.output.format, output_storage_options=spec.output.storage_options,
            provenance=provenance,
        )
        log.info("starting %d workers (%s CPU, %s GPU each)", count, cluster.cpus_per_worker, gpus)
        actors = start_workers(worker_spec, count, num_cpus=cluster.cpus_per_worker, num_gpus=gpus,
                               max_restarts=cluster.max_restarts, max_task_retries=cluster.max_task_retries)
        pool = WorkerPool(actors, sink, cluster.tasks_per_worker, cluster.max_attempts, spec.log_every_s)
        return pool.run(todo), pool.workers
    finally:
        ray.shutdown()


def _fitting_workers(gpus_per_worker: float, cpus_per_worker: float) -> int:
    """How many replicas the cluster's GPUs (or, for CPU workers, CPUs) hold."""
    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) // cpus_per_worker))


class WorkerStartError(RuntimeError):
    """Not one worker replica came up (bad device, checkpoint or environment on the nodes)."""


class WorkerPool:
    """Streams tasks to actors, ``depth`` in flight per actor, retrying videos whose actor died.

    A video that died with its actor goes back to the front of the queue; the actor gets no more work until a
    ``ready`` probe shows Ray restarted it, and is dropped when the probe fails (restarts used up).
    """

    def __init__(self, actors: list, sink: Sink, depth: int, max_attempts: int, log_every_s: float) -> None:
        self.sink = sink
        self.depth = depth
        self.max_attempts = max_attempts
        self.log_every_s = log_every_s
        self.busy: dict[Any, int] = {}  # actor -> videos in flight; only actors that can take work
        self.probes: dict[ray.ObjectRef, Any] = {_probe(a): a for a in actors}
        self.running: dict[ray.ObjectRef, tuple[Any, VideoTask]] = {}
        self.attempts: dict[str, int] = {}
        self.workers: list[dict] = []
        self.init_error: str | None = None

    def run(self, todo: list[VideoTask]) -> list[dict]:
        """Process every task; returns one record per task (done or failed)."""
        queue: deque[VideoTask] = deque(todo)
        records: list[dict] = []
        progress = _Progress(todo, self.log_every_s)
        while queue or self.running:
            self._dispatch(queue)
            if not self.running and not self.probes:
                if not self.workers:
                    raise WorkerStartError(f"no worker could start: {self.init_error}")
                for task in queue:
                    records.append(self._final(_failed(task, "all workers died")))
                break
            progress.maybe_log()
            ready, _ = ray.wait([*self.running, *self.probes], num_returns=1, timeout=self.log_every_s)
            for ref in ready:
                if ref in self.probes:
                    self._probed(ref)
                    continue
                record = self._finished(ref, queue)
                if record is not None:
                    records.append(self._final(record))
                    progress.add(record)
        progress.log()
        return records

    def _dispatch(self, queue: deque[VideoTask]) -> None:
        for actor, n in self.busy.items():
            while queue and n < self.depth:
                task = queue.popleft()
                self.attempts[task.video_id] = self.attempts.get(task.video_id, 0) + 1
                self.running[actor.process.remote(task)] = (actor, task)
                n += 1
            self.busy[actor] = n

    def _probed(self, ref: ray.ObjectRef) -> None:
        actor = self.probes.pop(ref)
        try:
            identity = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self.init_error = self.init_error or _cause(exc)
            log.error("worker dropped: %s", _cause(exc))
            return
        if identity not in self.workers:
            self.workers.append(identity)
            log.info("worker up on node %s (pid %d, %s, %s)", identity["node_id"][:12], identity["pid"],
                     identity["device"], identity["dtype"])
        self.busy[actor] = sum(1 for a, _ in self.running.values() if a is actor)

    def _finished(self, ref: ray.ObjectRef, queue: deque[VideoTask]) -> dict | None:
        """The record of a finished task, or None when it went back to the queue."""
        actor, task = self.running.pop(ref)
        try:
            record = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if actor in self.busy:  # stop feeding it until it answers a probe
                del self.busy[actor]
                self.probes[_probe(actor)] = actor
            record = _failed(task, f"worker died: {_cause(exc)}", retryable=True)
        else:
            if actor in self.busy:
                self.busy[actor] -= 1
        if record["status"] != "done" and record["retryable"] and self.attempts[task.video_id] < self.max_attempts:
            log.warning("video %s attempt %d failed (%s); retrying", task.video_id, self.attempts[task.video_id],
                        record["error"])
            queue.appendleft(task)
            return None
        record["attempts"] = self.attempts[task.video_id]
        return record

    def _final(self, record: dict) -> dict:
        """Record a video's outcome as soon as it is final (done markers are the worker's)."""
        if record["status"] != "done":
            self.sink.mark_failed(record["video_id"], record["error"], record)
        return record


class _Progress:
    """Videos done/total, frames per second and an ETA weighted by task cost, every ``every_s`` seconds."""

    def __init__(self, todo: list[VideoTask], every_s: float) -> None:
        self.total, self.total_cost = len(todo), sum(t.cost for t in todo) or 1.0
        self.cost = {t.video_id: t.cost for t in todo}
        self.every_s = every_s
        self.start = self.last = time.perf_counter()
        self.finished = self.failed = self.frames = 0
        self.done_cost = 0.0

    def add(self, record: dict) -> None:
        self.finished += 1
        self.failed += record["status"] != "done"
        self.frames += record["frames"]
        self.done_cost += self.cost[record["video_id"]]

    def maybe_log(self) -> None:
        if time.perf_counter() - self.last >= self.every_s:
            self.log()

    def log(self) -> None:
        self.last = time.perf_counter()
        elapsed = self.last - self.start
        eta = f"{elapsed * (self.total_cost - self.done_cost) / self.done_cost:.0f}s" if self.done_cost else "?"
        log.info("videos %d/%d (%d failed), %.1f frames/s, elapsed %.0fs, ETA %s", self.finished, self.total,
                 self.failed, self.frames / max(elapsed, 1e-9), elapsed, eta)


def _probe(actor: Any) -> ray.ObjectRef:
    """Ask ``actor`` whether it is up; waits through a restart, fails only once Ray gave the actor up."""
    return actor.ready.options(max_task_retries=-1).remote()


def _failed(task: VideoTask, reason: str, retryable: bool = False) -> dict:
    return {"video_id": task.video_id, "status": "failed", "frames": 0, "objects": task.num_objects,
            "seconds": 0.0, "error": reason, "retryable": retryable}


def _cause(exc: ray.exceptions.RayActorError) -> str:
    """One line for a Ray actor error: the exception raised in ``__init__``, else Ray's first line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if exc.actor_init_failed else lines[0]


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
