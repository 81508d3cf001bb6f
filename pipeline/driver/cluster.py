"""Ray, as the job uses it: join or start an instance, and size the pool of worker replicas to its resources."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from pipeline.specs import ClusterSpec


@contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Ray for the duration of the block: ``address`` None starts a local instance of this machine's size (never
    a cluster some other process started here) unless the job runs under ``ray job submit`` (RAY_ADDRESS)."""
    if address is None and "RAY_ADDRESS" not in os.environ:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
    else:
        ray.init(address=address)
    try:
        yield
    finally:
        ray.shutdown()


def gpus_per_worker(cluster: ClusterSpec) -> float:
    """The configured GPUs per replica; unset: one when the cluster has GPUs, else none."""
    if cluster.gpus_per_worker is not None:
        return cluster.gpus_per_worker
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def worker_count(cluster: ClusterSpec, gpus: float, tasks: int) -> int:
    """Replicas to start: ``num_workers`` or as many as the cluster's GPUs (CPUs for CPU workers) hold, never more
    than there are tasks."""
    if cluster.num_workers:
        return min(tasks, cluster.num_workers)
    resources = ray.cluster_resources()
    if gpus > 0:
        fitting = int(resources.get("GPU", 0) // gpus)
    else:
        fitting = int(resources.get("CPU", 1) // cluster.cpus_per_worker)
    return min(tasks, max(1, fitting))
