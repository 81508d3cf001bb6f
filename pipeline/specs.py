"""The job as plain, typed values: what the Hydra edge (jobs/propagate) reads from conf/ once and passes inward.

Each group of conf/ has its spec: ``ModelSpec`` (model/), ``DataSpec`` (data/), ``OutputSpec`` (output/),
``ClusterSpec`` (cluster/), ``AutoSpec`` (prompts/: the ``auto.*`` keys); ``JobSpec`` holds them all, and
``WorkerSpec`` is the part a worker replica needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from sam2core.automatic import GeneratorOptions
from sam2core.config import MODEL_NAMES
from sam2core.video import SessionOptions

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16")
PROMPT_MODES = ("manifest", "auto", "manifest+auto")


class SpecError(ValueError):
    """A config value out of its range, named by its key (the job refuses it before any work)."""


def _one_of(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SpecError(f"{key}={value}: expected one of {', '.join(allowed)}")


def _at_least(key: str, value: object, low: float, strict: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < low or (strict and value == low):
        raise SpecError(f"{key}={value}: must be a number {'>' if strict else '>='} {low:g}")


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
        if self.name not in MODEL_NAMES:
            raise SpecError(f"model.name={self.name}: expected one of {', '.join(MODEL_NAMES)}")
        if not isinstance(self.image_size, int) or self.image_size <= 0 or self.image_size % 32:
            raise SpecError(f"model.image_size={self.image_size}: must be a positive multiple of 32 (e.g. 256, 512, "
                            f"1024)")


@dataclass(frozen=True)
class DataSpec:
    """Where the manifest and the videos are and how to decode them (conf/data)."""

    name: str
    manifest: str
    root: str
    decoder: str = "decord"
    on_invalid: str = "fail"
    storage_options: dict | None = None
    protocols: tuple[str, ...] | None = None  # fsspec protocols video URIs may use; None: pipeline.plan.manifest's default
    retry_s: float = 30.0  # transient storage errors on the manifest are retried this long
    prompts: str = "manifest"  # manifest: its prompts; auto: only its videos, objects discovered; manifest+auto: both
    videos: str | None = None  # prompts=auto only: a glob or prefix of video files, instead of the manifest

    def __post_init__(self) -> None:
        _one_of("data.prompts", self.prompts, PROMPT_MODES)
        if self.videos is not None and self.prompts != "auto":
            raise SpecError(f"data.videos={self.videos}: lists videos without prompts, so it needs prompts=auto")
        _one_of("data.decoder", self.decoder, ("decord", "pyav"))
        _one_of("data.on_invalid", self.on_invalid, ("fail", "drop_video"))
        _at_least("data.retry_s", self.retry_s, 0)


@dataclass(frozen=True)
class OutputSpec:
    """Where masklets go (conf/output)."""

    uri: str
    format: str = "sav_json"
    overwrite: bool = False
    storage_options: dict | None = None
    encode_threads: int | None = None  # host threads of a worker's output stage; None: the worker's CPUs
    queue_frames: int = 8  # frames between tracking and the output stage
    retry_s: float = 120.0  # transient storage errors are retried this long before a write fails
    fallback_dir: str = "outputs/_unreachable"  # where the summary goes when the output prefix cannot be written

    def __post_init__(self) -> None:
        _one_of("output.format", self.format, ("sav_json", "parquet"))
        _at_least("output.retry_s", self.retry_s, 0)
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
    retry_backoff_s: float = 2.0  # first delay before a video is retried; doubles per attempt (jitter ±50%)
    video_timeout_s: float = 600.0  # a video's time budget: this, plus the next line's share per object-frame
    timeout_s_per_object_frame: float = 2.0
    start_timeout_s: float = 600.0  # a worker that has not built its model by then is dropped
    worker_class: str = "pipeline.actor.worker.PropagationWorker"  # the actor class (a testing/extension entry point)

    def __post_init__(self) -> None:
        if self.num_workers is not None:
            _at_least("cluster.num_workers", self.num_workers, 1)
        if self.gpus_per_worker is not None:
            _at_least("cluster.gpus_per_worker", self.gpus_per_worker, 0)
        for key in ("cpus_per_worker", "video_timeout_s", "start_timeout_s"):
            _at_least(f"cluster.{key}", getattr(self, key), 0, strict=True)
        for key in ("tasks_per_worker", "max_attempts"):
            _at_least(f"cluster.{key}", getattr(self, key), 1)
        for key in ("max_restarts", "max_task_retries", "retry_backoff_s", "timeout_s_per_object_frame"):
            _at_least(f"cluster.{key}", getattr(self, key), 0)


@dataclass(frozen=True)
class AutoSpec:
    """Automatic discovery (conf/prompts, ``auto.*``): ``generator`` holds ``AutomaticMaskGenerator`` keywords (the
    official names); the rest drive ``pipeline.actor.discovery``."""

    generator: dict = field(default_factory=dict)
    every: int = 4  # keyframe cadence: SA-V annotates every 4th frame of 24 fps video (6 fps)
    match_iou: float = 0.5  # a generator mask with this IoU with a tracked mask is that object
    match_coverage: float = 0.8  # ... or covered by it for this share of its area
    max_objects: int = 50  # discovered objects per video at most (largest first)
    min_area: int = 100  # pixels: smaller generator masks are ignored, masklets never larger are removed
    dedupe_iou: float = 0.8  # a masklet this similar to another on 90% of its frames is a duplicate

    def __post_init__(self) -> None:
        _at_least("auto.every", self.every, 1)
        _at_least("auto.max_objects", self.max_objects, 1)
        _at_least("auto.min_area", self.min_area, 0)
        for key in ("match_iou", "match_coverage", "dedupe_iou"):
            value = getattr(self, key)
            _at_least(f"auto.{key}", value, 0, strict=True)
            if value > 1:
                raise SpecError(f"auto.{key}={value}: must be in (0, 1]")
        known = {f.name for f in fields(GeneratorOptions)}
        unknown = sorted(set(self.generator) - known)
        if unknown:
            raise SpecError(f"auto.generator.{unknown[0]}: unknown generator option (known: "
                            f"{', '.join(sorted(known))})")


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
    auto: AutoSpec | None = None  # discovery options; required unless prompts=manifest
    config: dict | None = None  # the resolved config without credentials: recorded in provenance
    config_yaml: str = ""  # the same as YAML, written beside the summary

    def __post_init__(self) -> None:
        _at_least("sharding.num_shards", self.num_shards, 1)
        if not 0 <= self.shard_id < self.num_shards:
            raise SpecError(f"sharding.shard_id={self.shard_id}: must be in 0..{self.num_shards - 1}")
        _at_least("log_every_s", self.log_every_s, 0, strict=True)
        if self.data.prompts != "manifest" and self.auto is None:
            raise SpecError(f"data.prompts={self.data.prompts}: needs the auto.* keys (select "
                            f"prompts={self.data.prompts})")
        known = {f.name for f in fields(SessionOptions)} - {"dtype", "compile"}
        unknown = sorted(set(self.session) - known)
        if unknown:
            raise SpecError(f"session.{unknown[0]}: unknown engine option (known: {', '.join(sorted(known))})")
        for key in ("fill_hole_area", "prefetch", "encoder_batch"):
            if key in self.session:
                _at_least(f"session.{key}", self.session[key], 1 if key == "encoder_batch" else 0)
        try:
            SessionOptions(**self.session).validate()
        except ValueError as exc:
            raise SpecError(f"session: {exc}") from exc


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
    retry_s: float = 120.0
    auto: AutoSpec | None = None  # discovery options when some task runs in an automatic mode
