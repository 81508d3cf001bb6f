"""Prompt manifest rows from annotated masklets: masks as they are, boxes around them, or points sampled in them.

Conventions: a box is ``[x0, y0, x1, y1]`` on pixel edges (the mask's columns ``x0 .. x1-1``, rows ``y0 .. y1-1``);
a point is a pixel centre ``[col + 0.5, row + 0.5]``, positive (label 1). Points are drawn without replacement by
a generator seeded from (seed, video_id, obj_id, frame_idx), so a row never depends on which other rows are made.

Frame numbers: an SA-V JSON's annotated position ``i`` is written as frame ``annotation_step · i`` (4: the 24 fps
video's numbering, the frames a ``data.frame_step=4`` run tracks; 1: a folder holding only the 6-fps frames); PNG
folders are numbered by their file names. ``prompts.frame_step`` (the run's ``data.frame_step``) keeps only
annotated frames that run samples (multiples of it), so no prompt lands on a frame it skips.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset.annotations import SAV_KINDS, AnnotationError, masklets_from_sav, merge_masklets
from pipeline.plan.manifest import MANIFEST_SCHEMA
from pipeline.io.masklets import Masklets
from pipeline.io.rle import decode_rle
from pipeline.io.storage import resolve_storage_options
from pipeline.specs import SpecError

FRAME_MODES = ("first", "all")
PROMPT_KINDS = ("mask", "box", "points")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm")

log = logging.getLogger(__name__)


@dataclass
class PromptSpec:
    """Which annotated frames become prompts and in which form (jobs.make_manifest's ``prompts.*``)."""

    frames: str = "first"  # first: each object's first non-empty annotated frame; all: every non-empty one
    kind: str = "mask"  # mask (the annotation's RLE) | box (pixel-edge box of it) | points (sampled in it)
    num_points: int = 1  # points: positive points per prompt (pixel centres, fewer if the mask is smaller)
    seed: int = 0  # points: sampling seed (per video/object/frame, order-independent)
    frame_step: int = 1  # the run's data.frame_step: prompts only on the frames it samples (multiples of it)

    def __post_init__(self) -> None:
        if self.frames not in FRAME_MODES:
            raise SpecError(f"prompts.frames={self.frames}: expected one of {', '.join(FRAME_MODES)}")
        if self.kind not in PROMPT_KINDS:
            raise SpecError(f"prompts.kind={self.kind}: expected one of {', '.join(PROMPT_KINDS)}")
        if self.num_points < 1:
            raise SpecError(f"prompts.num_points={self.num_points}: must be >= 1")
        if self.frame_step < 1:
            raise SpecError(f"prompts.frame_step={self.frame_step}: must be >= 1")


def mask_box(mask: np.ndarray) -> list[float]:
    """Pixel-edge box ``[x0, y0, x1, y1]`` of a non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _rng(seed: int, video_id: str, obj_id: int, frame_idx: int) -> np.random.Generator:
    video_key = int.from_bytes(hashlib.sha1(video_id.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, video_key, obj_id, frame_idx])


def sample_points(mask: np.ndarray, n: int, rng: np.random.Generator) -> list[list[float]]:
    """Up to ``n`` distinct pixel centres of a non-empty mask, as ``[x, y]``."""
    flat = np.flatnonzero(mask)
    picks = rng.choice(flat.size, size=min(n, flat.size), replace=False)
    rows, cols = np.divmod(flat[np.sort(picks)], mask.shape[1])
    return [[float(c) + 0.5, float(r) + 0.5] for r, c in zip(rows, cols)]


def prompt_rows(m: Masklets, video_uri: str, spec: PromptSpec) -> list[dict]:
    """Manifest rows of one video: per object, its first non-empty annotated frame or every non-empty one, among
    the frames a run with ``data.frame_step=spec.frame_step`` samples (an object never seen there is logged)."""
    rows = []
    for j, obj in enumerate(m.obj_ids):
        made = len(rows)
        for pos, frame_idx in enumerate(m.frame_indices):
            if frame_idx % spec.frame_step:
                continue
            rle = m.rles[pos][j]
            mask = decode_rle(rle)
            if not mask.any():
                continue
            row = {"video_id": m.video_id, "video_uri": video_uri, "obj_id": int(obj), "frame_idx": int(frame_idx),
                   "points": None, "point_labels": None, "box": None, "mask": None}
            if spec.kind == "mask":
                row["mask"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}
            elif spec.kind == "box":
                row["box"] = mask_box(mask)
            else:
                points = sample_points(mask, spec.num_points, _rng(spec.seed, m.video_id, int(obj), int(frame_idx)))
                row["points"] = points
                row["point_labels"] = [1] * len(points)
            rows.append(row)
            if spec.frames == "first":
                break
        if len(rows) == made and spec.frame_step > 1:
            log.warning("video %s object %d: no prompt, empty on every annotated frame that prompts.frame_step=%d "
                        "samples", m.video_id, obj, spec.frame_step)
    return sorted(rows, key=lambda r: (r["frame_idx"], r["obj_id"]))


def manifest_table(rows: list[dict]) -> pa.Table:
    """The rows as a manifest table with the exact column types of the manifest contract."""
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def manifest_bytes(rows: list[dict]) -> bytes:
    """The manifest as Parquet file bytes (for a whole-object put)."""
    buf = io.BytesIO()
    pq.write_table(manifest_table(rows), buf)
    return buf.getvalue()


def manifest_from_annotations(root: str, spec: PromptSpec, video_uri: str, kinds: list[str], annotation_step: int,
                              storage_options: dict | None = None) -> tuple[list[dict], dict[str, str]]:
    """Rows for every video annotated under ``root`` and the videos that could not be read (id → reason).

    ``video_uri`` is a pattern such as ``{video_id}.mp4``; one unreadable video does not stop the others.
    """
    from pipeline.dataset.annotations import AnnotationError, find_annotations, read_annotation

    rows: list[dict] = []
    failed: dict[str, str] = {}
    for video_id, uris in find_annotations(root, storage_options, kinds).items():
        try:
            m = read_annotation(uris, video_id, storage_options, annotation_step)
        except (AnnotationError, FileNotFoundError) as e:
            failed[video_id] = str(e)
            continue
        try:
            uri = video_uri.format(video_id=video_id)
        except (KeyError, IndexError) as e:
            raise ValueError(f"video_uri pattern {video_uri!r} may only use {{video_id}}") from e
        rows.extend(prompt_rows(m, uri, spec))
    return rows, failed


def shard_member_uri(member: str, shard: str) -> str:
    """The fsspec URI of one member of a tar shard: ``tar://{member}::{shard}``."""
    return f"tar://{member}::{shard}"


def open_shard(shard: str, storage_options: dict | None = None) -> fsspec.AbstractFileSystem:
    """The tar shard at ``shard`` (any fsspec URI) as a filesystem over its members (reads the index once)."""
    protocol = fsspec.utils.get_protocol(shard)
    options = resolve_storage_options(storage_options) if protocol in ("s3", "s3a") else dict(storage_options or {})
    try:
        if protocol in ("file", "local"):
            return fsspec.filesystem("tar", fo=shard.removeprefix("file://"))
        return fsspec.filesystem("tar", fo=shard, target_protocol=protocol, target_options=options)
    except FileNotFoundError:
        raise ValueError(f"{shard}: no such tar shard") from None
    except tarfile.TarError as e:
        raise ValueError(f"{shard}: not a tar file ({e})") from e


def shard_videos(names: list[str], kinds: list[str]) -> tuple[dict[str, tuple[str, list[str]]], dict[str, str]]:
    """video_id → (video member, annotation members in ``kinds`` order) of a shard's member names, and the videos
    left out (id → why). SA-V layout: ``{dir}/{video_id}.mp4`` beside ``{dir}/{video_id}_{kind}.json``."""
    videos: dict[str, str] = {}
    notes: dict[str, dict[str, str]] = {}
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if base.lower().endswith(VIDEO_EXTENSIONS):
            videos[base.rsplit(".", 1)[0]] = name
        elif base.endswith(".json"):
            video_id, _, kind = base[: -len(".json")].rpartition("_")
            if kind in SAV_KINDS and video_id:
                notes.setdefault(video_id, {})[kind] = name
    found, skipped = {}, {}
    for video_id in sorted(set(videos) | set(notes)):
        files = [notes.get(video_id, {})[k] for k in kinds if k in notes.get(video_id, {})]
        if video_id not in videos:
            skipped[video_id] = f"annotations {files or sorted(notes[video_id].values())} but no video member"
        elif not files:
            skipped[video_id] = f"no {'/'.join(kinds)} annotation beside {videos[video_id]}"
        else:
            found[video_id] = (videos[video_id], files)
    return found, skipped


def manifest_from_shard(shard: str, spec: PromptSpec, kinds: list[str], annotation_step: int,
                        storage_options: dict | None = None) -> tuple[list[dict], dict[str, str]]:
    """Rows for every annotated video of a tar shard as SA-V ships them, each ``video_uri`` the member's chained
    URI (``tar://{member}::{shard}``), and the videos left out (id → reason)."""
    fs = open_shard(shard, storage_options)
    names = [n for n, info in fs.find("", detail=True).items() if info.get("type") == "file"]
    found, failed = shard_videos(names, kinds)
    rows: list[dict] = []
    for video_id, (video, notes) in found.items():
        try:
            parts = []
            for member in notes:
                source = shard_member_uri(member, shard)
                try:
                    d = json.loads(fs.cat_file(member))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise AnnotationError(f"{source}: not JSON ({e})") from e
                m = masklets_from_sav(d, source, annotation_step)
                if m.video_id != video_id:
                    raise AnnotationError(f"{source}: video_id {m.video_id!r} does not match its name ({video_id!r})")
                parts.append(m)
        except AnnotationError as e:
            failed[video_id] = str(e)
            continue
        m = merge_masklets(parts) if len(parts) > 1 else parts[0]
        rows.extend(prompt_rows(m, shard_member_uri(video, shard), spec))
    return rows, failed
