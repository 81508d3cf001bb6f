"""The image job (``jobs.segment_images``) as plain, typed values, over the same conf/ groups as propagate.

``ImageJobConfig`` is the config tree registered with Hydra as the schema of conf/segment_images.yaml: the groups
model/, data/, output/, cluster/ (their specs are ``pipeline.specs``'), prompts/ (``data.prompts``: manifest or
auto; auto adds ``auto.generator``), and ``images.*``, the options of this job. ``ImageJobSpec`` holds the validated
specs and ``ImageWorkerSpec`` what a worker replica needs. The video-only keys of the shared groups (data.decoder,
output.format, output.encode_threads, output.queue_frames, the auto.* keys but generator) are not read here;
data.videos and data.on_invalid=drop_video are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from pipeline.specs import (AutoSpec, ClusterSpec, DataSpec, ModelSpec, OutputSpec, ShardingSpec, SpecError,
                            _at_least, check_run)

IMAGE_PROMPT_MODES = ("manifest", "auto")


@dataclass
class ImagesSpec:
    """How a worker goes through its images (``images.*``): none of these changes a mask."""

    per_task: int = 64  # images per task (a Ray call, a part file, a done marker; the unit of resume)
    batch: int = 8  # images per image-encoder batch
    loader_threads: int | None = None  # threads decoding and resizing ahead of the model; null: the worker's CPUs
    ahead: int = 2  # encoder batches decoded ahead of the model (bounds the memory held by the loaders)

    def __post_init__(self) -> None:
        for key in ("per_task", "batch", "ahead"):
            _at_least(f"images.{key}", getattr(self, key), 1)
        if self.loader_threads is not None:
            _at_least("images.loader_threads", self.loader_threads, 1)


@dataclass
class ImageJobConfig:
    """The segment_images job's config tree (conf/segment_images.yaml composes it)."""

    model: ModelSpec = MISSING
    data: DataSpec = MISSING
    output: OutputSpec = MISSING
    images: ImagesSpec = field(default_factory=ImagesSpec)
    sharding: ShardingSpec = field(default_factory=ShardingSpec)
    log_every_s: float = 10.0  # progress line interval (non-interactive)
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    auto: AutoSpec | None = None  # prompts=auto sets it; only auto.generator is read


@dataclass(frozen=True)
class ImageJobSpec:
    """The whole image job as plain values."""

    model: ModelSpec
    data: DataSpec
    output: OutputSpec
    images: ImagesSpec
    cluster: ClusterSpec
    num_shards: int
    shard_id: int
    log_every_s: float
    auto: AutoSpec | None = None
    config: dict | None = None  # the resolved config without credentials: recorded in provenance
    config_yaml: str = ""  # the same as YAML, written beside the summary

    def __post_init__(self) -> None:
        check_run(self.num_shards, self.shard_id, self.log_every_s)
        if self.data.prompts not in IMAGE_PROMPT_MODES:
            raise SpecError(f"prompts={self.data.prompts}: images take prompts=manifest or prompts=auto")
        if self.data.videos is not None:
            raise SpecError(f"data.videos={self.data.videos}: the image job reads images from data.manifest")
        if self.data.on_invalid != "fail":
            raise SpecError(f"data.on_invalid={self.data.on_invalid}: the image job refuses a manifest with bad rows "
                            f"(every one is named); fix them or drop their rows")
        if self.data.prompts == "auto" and self.auto is None:
            raise SpecError("data.prompts=auto: needs the auto.* keys (select prompts=auto)")


@dataclass(frozen=True)
class ImageWorkerSpec:
    """Everything an image worker needs, as plain values."""

    model: ModelSpec
    images: ImagesSpec
    input_storage_options: dict | None
    output_uri: str
    output_storage_options: dict | None
    retry_s: float
    generator: dict | None = None  # AutomaticMaskGenerator keywords when prompts=auto
    claim: str | None = None  # the job's claim on the output prefix: every write is fenced by it (Sink.claim)
