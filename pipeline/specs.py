"""The job as plain, typed values: what the Hydra edge (jobs/propagate) reads from conf/ once and passes inward.

Each group of conf/ has its spec: ``ModelSpec`` (model/), ``DataSpec`` (data/), ``OutputSpec`` (output/),
``ClusterSpec`` (cluster/), ``AutoSpec`` (prompts/: the ``auto.*`` keys). ``JobConfig`` is the whole config tree:
registered with Hydra as the schema of conf/config.yaml (jobs/edge), it is where every key and its default are
written; the YAML files only choose group options and override values. ``JobSpec`` holds the validated specs, and
``WorkerSpec`` is the part a worker replica needs. A spec checks its values when it is built (``SpecError``).
``storage_options`` fields are typed ``Any`` for Hydra (a dict of fsspec options, or null): a field typed as an
optional dict would refuse a dict given on the command line in place of its null; the spec checks the type. The
group specs are plain (not frozen) dataclasses: Hydra composes into them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from omegaconf import MISSING

from pipeline.actor.decoding import DECODERS, decoder_unavailable
from pipeline.plan.manifest import DEFAULT_PROTOCOLS, MODES, RETRY_S
from sam2core.automatic import GeneratorOptions
from sam2core.config import MODEL_NAMES
from sam2core.video import SessionOptions

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16")
# the engine options a job's config lists under ``session.`` (their defaults are SessionOptions'); the other
# SessionOptions fields, but dtype and compile (model.*), may be added: ``+session.keep_history=true``
SESSION_KEYS = ("apply_postprocessing", "fill_hole_area", "non_overlap_masks", "prefetch", "encoder_batch",
                "max_objects_per_batch")
# the generator options ``auto.generator.`` lists (their defaults are GeneratorOptions', the official ones)
GENERATOR_KEYS = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                  "stability_score_offset", "mask_threshold", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh",
                  "crop_overlap_ratio", "crop_n_points_downscale_factor", "min_mask_region_area", "use_m2m",
                  "multimask_output")


class SpecError(ValueError):
    """A config value out of its range, named by its key (the job refuses it before any work)."""


def _one_of(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SpecError(f"{key}={value}: expected one of {', '.join(allowed)}")


def check_options(key: str, value: object) -> None:
    """``value`` of ``key`` is fsspec storage options: a dict, or None."""
    if value is not None and not isinstance(value, dict):
        raise SpecError(f"{key}: a dict of fsspec options (or null), got {value!r}")


def check_run(num_shards: int, shard_id: int, log_every_s: float) -> None:
    """The checks every Ray job's spec makes of its shard and progress period (SpecError names the key)."""
    _at_least("sharding.num_shards", num_shards, 1)
    if not 0 <= shard_id < num_shards:
        raise SpecError(f"sharding.shard_id={shard_id}: must be in 0..{num_shards - 1}")
    _at_least("log_every_s", log_every_s, 0, strict=True)


def _at_least(key: str, value: object, low: float, strict: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < low or (strict and value == low):
        raise SpecError(f"{key}={value}: must be a number {'>' if strict else '>='} {low:g}")


@dataclass
class ModelSpec:
    """Which model a worker builds (conf/model: each option sets name, checkpoint and image_size). ``checkpoint`` is
    a path or fsspec URI, ``"random"`` in the job's config (seeded random weights, for smoke tests), None inside a
    worker for random weights drawn under ``seed``."""

    name: str
    checkpoint: str | None
    image_size: int
    device: str = "auto"  # auto: cuda when the worker holds a GPU, else cpu (under Ray a worker sees only its GPUs)
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu; or float32 / bfloat16
    compile: bool = False  # torch.compile the tracking step (a warm-up per worker)
    cache_dir: str | None = "~/.cache/sam2_propagate/checkpoints"  # checkpoint URIs are downloaded here once a machine
    seed: int = 0  # seeds the weights when checkpoint=random
    storage_options: Any = None  # fsspec options for a checkpoint URI in object storage

    def __post_init__(self) -> None:
        check_options("model.storage_options", self.storage_options)
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


@dataclass
class DataSpec:
    """Where the manifest and the videos are and how to decode them (conf/data: each option names its data)."""

    name: str
    manifest: str  # the Parquet prompt manifest (any fsspec URI; relative paths: from the working directory)
    root: str  # base for relative video_uri values in the manifest
    decoder: str = "pyav"  # pyav | torchcodec | torchcodec-cuda (NVDEC) | decord: README, "Decoders"
    on_invalid: str = "fail"  # fail: reject the manifest on any bad row; drop_video: skip the videos of bad rows
    storage_options: Any = None  # fsspec/s3fs options for manifest and videos (AWS_* variables also apply)
    # fsspec protocols video_uri may use; add http, https only for manifests you trust (the job fetches them with its
    # own network and credentials)
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    retry_s: float = RETRY_S  # transient storage errors on the manifest are retried this long
    prompts: str = "manifest"  # manifest: its prompts; auto: only its videos, objects discovered; manifest+auto: both
    videos: str | None = None  # prompts=auto only: a glob or prefix of video files, instead of the manifest
    # track every k-th decoded frame, counted from frame 0 (4: SA-V's 6 fps of 24 fps video); masklets keep the
    # video's frame numbers, prompts must be on tracked frames
    frame_step: int = 1

    def __post_init__(self) -> None:
        self.protocols = tuple(self.protocols)
        check_options("data.storage_options", self.storage_options)
        _one_of("data.prompts", self.prompts, MODES)
        if self.videos is not None and self.prompts != "auto":
            raise SpecError(f"data.videos={self.videos}: lists videos without prompts, so it needs prompts=auto")
        _one_of("data.decoder", self.decoder, DECODERS)
        unavailable = decoder_unavailable(self.decoder)
        if unavailable:
            raise SpecError(f"data.decoder={self.decoder}: {unavailable}")
        _one_of("data.on_invalid", self.on_invalid, ("fail", "drop_video"))
        _at_least("data.retry_s", self.retry_s, 0)
        if not isinstance(self.frame_step, int) or isinstance(self.frame_step, bool) or self.frame_step < 1:
            raise SpecError(f"data.frame_step={self.frame_step}: must be an integer >= 1 (1: every frame)")


@dataclass
class OutputSpec:
    """Where masklets go (conf/output: each option sets its uri). One prefix per dataset and model: re-running
    resumes there; another checkpoint is refused unless ``overwrite``. ``~`` in a local ``uri`` is the home folder."""

    uri: str
    format: str = "sav_json"  # sav_json (masklets/{video_id}.json, SA-V layout) | parquet (one row per object-frame)
    overwrite: bool = False
    storage_options: Any = None
    encode_threads: int | None = None  # host threads of a worker's output stage; None: the worker's CPUs
    queue_frames: int = 8  # frames between tracking and the output stage (back-pressure beyond)
    retry_s: float = 120.0  # transient storage errors (outage, throttling, full disk) are retried this long per write
    fallback_dir: str = "outputs/_unreachable"  # where the summary goes when the output prefix cannot be written

    def __post_init__(self) -> None:
        if not self.uri.strip():
            raise SpecError("output.uri is empty: give the output prefix (a local path or an fsspec URI)")
        check_options("output.storage_options", self.storage_options)
        _one_of("output.format", self.format, ("sav_json", "parquet"))
        _at_least("output.retry_s", self.retry_s, 0)
        if self.encode_threads is not None and self.encode_threads < 1:
            raise SpecError(f"output.encode_threads={self.encode_threads}: expected null or >= 1")
        if self.queue_frames < 1:
            raise SpecError(f"output.queue_frames={self.queue_frames}: expected >= 1")


@dataclass
class ClusterSpec:
    """Ray placement and fault tolerance (conf/cluster: local starts Ray on this machine, ray joins a cluster); None
    sizes come from the cluster's resources."""

    address: str | None = None  # null: local Ray (or the cluster of `ray job submit`); "auto"; "ray://host:10001"
    num_workers: int | None = None  # model replicas; null: as many as the cluster's GPUs (or CPUs) fit
    gpus_per_worker: float | None = None  # null: 1 when the cluster has GPUs, else 0; fractions pack replicas on a GPU
    cpus_per_worker: float = 1  # also the torch thread count of a CPU worker
    tasks_per_worker: int = 2  # videos queued per replica, so the next one starts without a driver round trip
    max_restarts: int = 2  # Ray restarts a worker process that died (each restart rebuilds the model); the pool,
    #                        not Ray, re-runs its videos
    max_attempts: int = 3  # attempts per video across workers before it is recorded as failed
    retry_backoff_s: float = 2.0  # first delay before a video is retried; doubles per attempt (jitter ±50%)
    video_timeout_s: float = 600.0  # a video's time budget: this, plus the next line's share per object-frame; past
    timeout_s_per_object_frame: float = 2.0  # it the worker is replaced and the video retried or failed
    start_timeout_s: float = 600.0  # a worker that has not built its model by then is dropped
    # once no video waits, an idle worker runs a backup copy of a video past this many times its expected time
    # (frames × objects at the throughput seen so far); the first copy done is used; 0: never
    speculate_after: float = 2.0
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
        for key in ("max_restarts", "retry_backoff_s", "timeout_s_per_object_frame", "speculate_after"):
            _at_least(f"cluster.{key}", getattr(self, key), 0)


def _generator_defaults() -> dict:
    defaults = asdict(GeneratorOptions())
    return {k: defaults[k] for k in GENERATOR_KEYS}


@dataclass
class AutoSpec:
    """Automatic discovery (conf/prompts, ``auto.*``): ``generator`` holds ``AutomaticMaskGenerator`` keywords (the
    official names and defaults); the rest drive ``pipeline.actor.discovery``."""

    generator: dict = field(default_factory=_generator_defaults)
    every: int = 4  # keyframe cadence in tracked frames (with data.frame_step=4: every 16th frame of the video)
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


def _session_defaults() -> dict:
    defaults = asdict(SessionOptions())
    return {k: defaults[k] for k in SESSION_KEYS}


@dataclass
class ShardingSpec:
    """One slice of the manifest (a stable hash of video_id): ``sharding.*``."""

    num_shards: int = 1
    shard_id: int = 0


@dataclass
class JobConfig:
    """The propagate job's config tree (conf/config.yaml composes it): the groups model/, data/, output/, cluster/
    and prompts/ (which adds ``auto``), the engine options under ``session`` (sam2core SessionOptions, their
    defaults), sharding and the progress line interval."""

    model: ModelSpec = MISSING
    session: dict = field(default_factory=_session_defaults)
    data: DataSpec = MISSING
    output: OutputSpec = MISSING
    sharding: ShardingSpec = field(default_factory=ShardingSpec)
    log_every_s: float = 10.0  # progress line interval (non-interactive)
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    auto: AutoSpec | None = None  # discovery options: prompts=auto or manifest+auto sets them


@dataclass(frozen=True)
class JobSpec:
    """The whole job as plain values."""

    model: ModelSpec
    session: dict
    data: DataSpec
    output: OutputSpec
    cluster: ClusterSpec
    num_shards: int
    shard_id: int
    log_every_s: float
    auto: AutoSpec | None = None  # discovery options; required unless prompts=manifest
    config: dict | None = None  # the resolved config without credentials: recorded in provenance
    config_yaml: str = ""  # the same as YAML, written beside the summary

    def __post_init__(self) -> None:
        check_run(self.num_shards, self.shard_id, self.log_every_s)
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
    encode_threads: int | None
    queue_frames: int
    retry_s: float
    auto: AutoSpec | None = None  # discovery options when some task runs in an automatic mode
    claim: str | None = None  # the job's claim on the output prefix: every write is fenced by it (Sink.claim)
