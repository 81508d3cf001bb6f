"""Driver section: planning an SA-V-scale manifest, and the driver's cost per video when workers cost nothing.

Planning = what the propagation job does before any worker starts: ``load_manifest`` (read, validate every row,
group into tasks) of a synthetic ~51k-video manifest, then every task's digest (``with_digests``, as
``pipeline.driver.job`` does for its shard), timed with its peak RSS in a fresh process. Dispatch = the
propagation job's own dispatch loop (``pipeline.driver.pool.WorkerPool``) feeding real planned tasks to Ray actors
that honour the worker contract (``ready()``, ``status()``, ``process(task)``) but return a done result at once,
so the wall time per video is what the driver and Ray add to each video.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from benchmarks.harness import current_rss_bytes, peak_rss_bytes, run_isolated
from benchmarks.report import Figure, figure
from benchmarks.sav_manifest import ManifestShape, write_manifest
from pipeline.plan.manifest import load_manifest
from pipeline.driver.pool import WorkerPool
from pipeline.driver.scheduling import PoolPolicy
from pipeline.io.prefix import make_sink
from pipeline.specs import ClusterSpec, OutputSpec
from pipeline.plan.tasks import VideoTask, with_digests
from pipeline.records import Status, WorkerIdentity, WorkerResult, WorkerStatus

GB = 1024 ** 3


class NullWorker:
    """The worker contract without the work: ``process`` returns a done result immediately."""

    def __init__(self) -> None:
        self.identity = WorkerIdentity(ray.get_runtime_context().get_node_id(), os.getpid(), "none", "none")

    def ready(self) -> WorkerIdentity:
        return self.identity

    def status(self) -> WorkerStatus | None:
        return None

    def process(self, task: VideoTask) -> WorkerResult:
        return WorkerResult(task.video_id, objects=task.num_objects, digest=task.digest, worker=self.identity)


# what a job's digests cover besides the prompts: the model's identity and engine options (pipeline.driver.job)
_PRODUCED_BY = {"model": {"name": "sam2.1_hiera_large", "sha256": "0" * 64}, "session": {"image_size": 1024}}


def measure_plan(manifest: str, data_root: str) -> dict[str, Any]:
    """Seconds (wall and CPU) and peak RSS of planning: ``load_manifest``, then every task's digest (runs in a
    fresh process)."""
    before = current_rss_bytes()
    start, cpu = time.perf_counter(), time.process_time()
    plan = load_manifest(manifest, data_root)
    loaded = time.perf_counter()
    tasks = with_digests(plan.tasks, _PRODUCED_BY)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "load_seconds": loaded - start, "cpu_seconds": cpu, "peak_rss": peak_rss_bytes(),
            "rss_before": before, "tasks": len(tasks), "rows": plan.num_rows, "dropped": len(plan.dropped)}


def measure_dispatch(manifest: str, data_root: str, tasks: int, workers: int, depth: int) -> dict[str, Any]:
    """Wall seconds for the dispatch loop to run ``tasks`` planned videos on ``workers`` no-op actors."""
    todo = load_manifest(manifest, data_root).tasks[:tasks]
    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as out:
            o = OutputSpec(uri=out)  # the loop records failed videos there; no-op tasks never fail
            sink = make_sink(o.uri, o.format, o.storage_options, o.retry_s)
            actors = [ray.remote(NullWorker).options(num_cpus=1).remote() for _ in range(workers)]
            ray.get([a.ready.remote() for a in actors])
            start = time.perf_counter()
            policy = PoolPolicy.of(ClusterSpec(tasks_per_worker=depth, max_attempts=1))
            records = WorkerPool(actors, sink, policy, log_every_s=3600.0).run(todo)
            seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    done = sum(r.status is Status.DONE for r in records)
    if done != len(todo):
        raise RuntimeError(f"dispatch benchmark: {len(todo) - done} of {len(todo)} no-op tasks did not finish")
    return {"seconds": seconds, "tasks": len(todo)}


def run_section(cfg: dict[str, Any], seed: int, threads: int, targets: dict[str, str]) -> list[Figure]:
    """Plan time and peak memory at SA-V scale, then dispatch overhead per video."""
    shape = ManifestShape(cfg["videos"], cfg["rows"], cfg["mask_fraction"], cfg["height"], cfg["width"], seed)
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as tmp:
        manifest = str(write_manifest(Path(tmp) / "manifest.parquet", shape))
        root = str(Path(tmp) / "videos")
        plan = run_isolated(measure_plan, threads, manifest=manifest, data_root=root)
        dispatch = run_isolated(measure_dispatch, threads, manifest=manifest, data_root=root,
                                tasks=cfg["dispatch_tasks"], workers=cfg["dispatch_workers"],
                                depth=cfg["tasks_per_worker"])
    where = f"{plan['tasks']} videos, {plan['rows']} rows"
    per_video_ms = 1000 * dispatch["seconds"] / dispatch["tasks"]
    return [
        figure("driver", f"plan manifest + digests ({where})", plan["seconds"], "s", targets["plan_seconds"],
               note=f"load_manifest {plan['load_seconds']:.1f} s; CPU {plan['cpu_seconds']:.1f} s"),
        figure("driver", "plan peak RSS", plan["peak_rss"] / GB, "GiB", targets["plan_peak_gib"],
               note=f"process RSS before planning {plan['rss_before'] / GB:.2f} GiB"),
        figure("driver", f"dispatch overhead ({dispatch['tasks']} videos, {cfg['dispatch_workers']} no-op "
               f"workers x {cfg['tasks_per_worker']} in flight)", per_video_ms, "ms/video",
               targets["dispatch_ms"]),
    ]
