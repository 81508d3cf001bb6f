"""The tools' jobs as plain, typed values: one spec per entry point (jobs/{render,report,export,evaluate,
make_manifest} and conf/<job>.yaml). Each is registered with Hydra as its config's schema (jobs/edge): every key
and its default is written here, and a spec checks its values when it is built (``SpecError``, exit 2).
``storage_options`` is typed ``Any`` for Hydra, as in ``pipeline.specs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.actor.decoding import decoder_unavailable
from pipeline.dataset.annotations import SAV_KINDS
from pipeline.dataset.export import EXPORT_FORMATS
from pipeline.dataset.manifest_maker import PromptSpec
from pipeline.dataset.render import SheetOptions
from pipeline.specs import SpecError, check_options


def _positive(key: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(f"{key}={value!r}: must be a positive integer")


@dataclass
class SheetSpec:
    """A contact sheet (``sheet.*``): ``frames`` is a count of evenly spaced frames or a list of frame indices
    (``"sheet.frames=[0,5,10]"``)."""

    frames: Any = SheetOptions.frames
    columns: int = SheetOptions.columns
    width: int = SheetOptions.width  # thumbnail width in pixels
    gap: int = SheetOptions.gap  # pixels between tiles

    def __post_init__(self) -> None:
        frames = self.frames
        if isinstance(frames, (list, tuple)) and all(isinstance(f, int) and not isinstance(f, bool) for f in frames):
            self.frames = list(frames)
        elif not isinstance(frames, int) or isinstance(frames, bool):
            raise SpecError(f"sheet.frames: a count or a list of frame indices, got {frames!r}")
        _positive("sheet.columns", self.columns)
        _positive("sheet.width", self.width)
        if self.gap < 0:
            raise SpecError(f"sheet.gap={self.gap}: must be >= 0")

    def options(self, alpha: float) -> SheetOptions:
        """The sheet's drawing options, masks at opacity ``alpha``."""
        return SheetOptions(self.frames, self.columns, self.width, self.gap, alpha)


def _check_alpha(alpha: float) -> None:
    if not 0 <= alpha <= 1:
        raise SpecError(f"alpha={alpha}: must be in [0, 1]")


@dataclass
class DrawnVideosSpec:
    """What render and report share: a run's masklets drawn over their videos (where the videos are, how they are
    decoded, the contact sheets)."""

    prefix: str  # output prefix of a jobs.propagate run (masklets/...), or a folder of PNG mask folders
    videos: list[str] | None = None  # video ids to draw; null: all under prefix
    manifest: str | None = None  # manifest giving each video's video_uri; null: the job's (its recorded config)
    data_root: str | None = None  # base for relative video URIs; null: the job's data.root
    video_uri: str = "{video_id}.mp4"  # pattern of a video's file or frame folder when there is no manifest
    decoder: str = "pyav"  # pyav | torchcodec | torchcodec-cuda | decord (data.decoder's choices)
    out: str | None = None  # null: {prefix}/render or {prefix}/report
    alpha: float = SheetOptions.alpha  # mask opacity
    sheet: SheetSpec = field(default_factory=SheetSpec)
    storage_options: Any = None  # fsspec/s3fs options (AWS_* environment variables also apply)

    def __post_init__(self) -> None:
        check_options("storage_options", self.storage_options)
        unavailable = decoder_unavailable(self.decoder)
        if unavailable:
            raise SpecError(f"decoder={self.decoder}: {unavailable}")
        _check_alpha(self.alpha)


@dataclass
class RenderSpec(DrawnVideosSpec):
    """``jobs.render``: masklets drawn over their videos, ``{out}/{video_id}.mp4`` and ``{video_id}_sheet.png``."""

    mp4: bool = True  # false: the contact sheets only (decodes only their frames)
    fps: float | None = None  # null: the video's frame rate (24 for frame folders) over the masklets' frame step

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fps is not None and self.fps <= 0:
            raise SpecError(f"fps={self.fps}: must be > 0 (or null: the video's rate)")


@dataclass
class ReportSpec(DrawnVideosSpec):
    """``jobs.report``: the HTML report of a propagation run, ``{out}/index.html`` and a page per video (failed
    videos are always listed)."""

    sheet: SheetSpec = field(default_factory=lambda: SheetSpec(width=240))


@dataclass
class ExportSpec:
    """``jobs.export``: masklets in other tools' formats (``pipeline.dataset.export``)."""

    prefix: str  # output prefix of a jobs.propagate run (masklets/...)
    videos: list[str] | None = None  # video ids to export; null: all under prefix
    format: str = "sav_png"  # davis | sav_png | ytvis | yolo
    out: str | None = None  # null: {prefix}/export_{format}
    storage_options: Any = None  # fsspec/s3fs options (AWS_* environment variables also apply)

    def __post_init__(self) -> None:
        check_options("storage_options", self.storage_options)
        if self.format not in EXPORT_FORMATS:
            raise SpecError(f"format: must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")


@dataclass
class EvaluateClusterSpec:
    """Where the evaluation's Ray tasks run (``cluster.*``)."""

    address: str | None = None  # null: a local Ray instance; "auto" or "ray://host:10001": join a cluster
    num_cpus: int | None = None  # local instance only: CPUs to use (null: all)


@dataclass
class EvaluateSpec:
    """``jobs.evaluate``: J&F of predictions against ground truth, by the SA-V evaluator's rules."""

    pred: str  # output prefix of a jobs.propagate run (masklets/*.json|parquet) or a folder of per-video PNG folders
    gt: str  # a folder of SA-V JSON ({video_id}_manual.json or {video_id}.json) or of per-video PNG folders
    out: str | None = None  # where eval_objects.csv / eval_videos.csv go; null: the pred folder
    skip_first_last: bool = True  # drop each ground-truth frame list's first and last frame (SA-V / DAVIS protocol)
    strict: bool = True  # true: every ground-truth video needs a prediction; false: score those present
    # SA-V JSON ground truth: video frames per annotated frame (4: annotation i is video frame 4i, the 24 fps
    # numbering; 1: a prediction made on a folder of the 6-fps frames, numbered 0, 1, 2, ...)
    annotation_step: int = 4
    cluster: EvaluateClusterSpec = field(default_factory=EvaluateClusterSpec)
    storage_options: Any = None  # fsspec/s3fs options (AWS_* environment variables also apply)

    def __post_init__(self) -> None:
        check_options("storage_options", self.storage_options)
        _positive("annotation_step", self.annotation_step)
        if self.cluster.num_cpus is not None:
            _positive("cluster.num_cpus", self.cluster.num_cpus)


@dataclass
class MakeManifestSpec:
    """``jobs.make_manifest``: a prompt manifest from a folder of annotations or from a tar shard of videos with
    their SA-V annotations, or an image manifest from a COCO detection file (exactly one of ``annotations``,
    ``shard`` and ``coco``)."""

    annotations: str | None = None  # folder of SA-V JSON files or of per-video PNG mask folders
    shard: str | None = None  # tar shard (any fsspec URI); rows get video_uri tar://{member}::{shard}
    coco: str | None = None  # COCO instances file (any fsspec URI): an image manifest, a box prompt per annotation
    image_root: str | None = None  # coco only: joined before each file_name (null: file_name as written)
    manifest: str = "manifest.parquet"  # manifest URI to write (local path, file:// or s3://)
    kinds: list[str] = field(default_factory=lambda: ["manual"])  # SA-V JSON kinds per video, in order; ids of a
    # later kind are shifted past earlier ones
    # SA-V JSON: video frames per annotated frame. 4 (SA-V: 24 fps video annotated at 6 fps): prompts on video frames
    # 0, 4, 8, ..., for the 24 fps video tracked at any data.frame_step dividing 4; 1: prompts numbered 0, 1, 2, ...
    # for a folder holding only the annotated (6-fps) frames. prompts.frame_step keeps the frames a run samples.
    annotation_step: int = 4
    # video_uri of each video's rows (relative to data.root or absolute; not used with shard); quote it in an
    # override: "video_uri='JPEGImages_24fps/{video_id}'"
    video_uri: str = "{video_id}.mp4"
    prompts: PromptSpec = field(default_factory=PromptSpec)
    storage_options: Any = None  # fsspec/s3fs options (AWS_* environment variables also apply)

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.annotations, self.shard, self.coco)) != 1:
            raise SpecError("give exactly one of annotations=URI (a folder), shard=URI (a tar shard) or coco=URI (a "
                            "COCO detection file)")
        check_options("storage_options", self.storage_options)
        _positive("annotation_step", self.annotation_step)
        unknown = [k for k in self.kinds if k not in SAV_KINDS]
        if unknown or not self.kinds:
            raise SpecError(f"kinds={self.kinds}: a list of {', '.join(SAV_KINDS)}")
