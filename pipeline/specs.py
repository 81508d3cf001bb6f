"""The job as plain, typed values: what the Hydra edge (jobs/propagate) reads from conf/ once and passes inward.

Each group of conf/ has its spec: ``ModelSpec`` (model/), ``DataSpec`` (data/), ``OutputSpec`` (output/),
``ClusterSpec`` (cluster/); ``JobSpec`` holds them all, and ``WorkerSpec`` is the part a worker replica needs.
"""

from __future__ import annotations

from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16")


class SpecError(ValueError):
    """A config value out of its range, named by its key (the job refuses it before any work)."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model a worker builds. ``checkpoint`` is a path/URI, ``"random"`` in the job's config, None inside a
    worker for random weights drawn under ``seed``."""

    name: str
    checkpoint: str | None
    image_size: int
    device: str = "auto"  # auto | cpu | cuda: under Ray a worker sees only the GPUs Ray gave it
    dtype: str = "auto"  # auto | float32 | bfloat16
    compile: bool = False
    cache_dir: str | None = None
    seed: int = 0
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            hint = (" (under Ray each worker sees only the GPU it was given, as cuda; choose GPUs with "
                    "cluster.gpus_per_worker or CUDA_VISIBLE_DEVICES on the node)" if self.device.startswith("cuda:")
                    else "")
            raise SpecError(f"model.device={self.device}: expected one of {', '.join(DEVICES)}{hint}")
        if self.dtype not in DTYPES:
            raise SpecError(f"model.dtype={self.dtype}: expected one of {', '.join(DTYPES)}")


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
    encode_threads: int | None = None  # host threads of a worker's output stage; None: the worker's CPUs
    queue_frames: int = 8  # frames between tracking and the output stage

    def __post_init__(self) -> None:
        if self.encode_threads is not None and self.encode_threads < 1:
            raise SpecError(f"output.encode_threads={self.encode_threads}: expected null or >= 1")
        if self.queue_frames < 1:
            raise SpecError(f"output.queue_frames={self.queue_frames}: expected >= 1")


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
    """The whole job as plain values."""

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


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, as plain values: model, engine options, input decoding and output sink."""

    model: ModelSpec
    session: dict  # SessionOptions fields other than dtype/compile
    decoder: str
    input_storage_options: dict | None
    output_uri: str
    output_format: str
    output_storage_options: dict | None
    provenance: dict
    encode_threads: int | None = None
    queue_frames: int = 8
