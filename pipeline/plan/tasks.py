"""Tasks: what the driver hands a worker, one per video, and how videos are split into shards.

A ``VideoTask`` carries every prompt of one video (from validated manifest rows) and a ``cost`` that orders the
work largest first (objects × file size, when the sizes can be listed cheaply).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.storage import is_absolute_uri, join_uri, list_sizes

_MAX_LISTED_FOLDERS = 64  # above this many distinct video folders, file sizes are not looked up


@dataclass(frozen=True)
class Prompt:
    """One manifest row: a prompt for object ``obj_id`` on frame ``frame_idx`` (pixels of the original video)."""

    obj_id: int
    frame_idx: int
    points: list[list[float]] | None
    point_labels: list[int] | None
    box: list[float] | None
    mask: dict | None
    row: int


@dataclass(frozen=True)
class VideoTask:
    """All prompts of one video; ``cost`` orders scheduling (objects × file size when known)."""

    video_id: str
    video_uri: str
    prompts: tuple[Prompt, ...]
    num_objects: int
    cost: float
    digest: str = ""  # of what produces the video's masklets (see ``task_digest``); kept in its done record
    object_batch: int | None = None  # most objects per batched step; set after the video ran out of memory
    auto: bool = False  # discover the video's (other) objects automatically (prompts=auto / manifest+auto)

    def with_smaller_batches(self, used: int | None = None) -> "VideoTask":
        """The same task with half the objects per batched step after an out-of-memory failure: half of ``used``
        (what the failed attempt batched, as its worker reported it: discovered objects count too), else of the
        task's cap, else of its manifest objects."""
        current = used or self.object_batch or max(self.num_objects, 1)
        return replace(self, object_batch=max(1, current // 2))


def task_digest(task: VideoTask, produced_by: dict) -> str:
    """sha256 of everything that determines a video's masklets: its URI, its prompt rows (manifest row numbers
    excluded: reordering a manifest changes nothing) and ``produced_by`` (model identity and engine options)."""
    prompts = [[p.obj_id, p.frame_idx, p.points, p.point_labels, p.box, p.mask] for p in task.prompts]
    blob = json.dumps({"video_uri": task.video_uri, "prompts": prompts, "produced_by": produced_by},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def shard_of(video_id: str, num_shards: int) -> int:
    """Stable shard of a video (sha1 of its id, independent of Python's hash seed)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    return int.from_bytes(hashlib.sha1(video_id.encode()).digest()[:8], "big") % num_shards


def _resolve_uri(uri: str, data_root: str | None) -> str:
    if is_absolute_uri(uri):
        return uri
    if data_root:
        return join_uri(data_root if is_absolute_uri(data_root) else os.path.abspath(data_root), uri)
    return os.path.abspath(uri)


def _file_sizes(uris: Iterable[str], storage_options: dict | None) -> dict[str, int]:
    """Sizes of the video files, from one listing per folder (skipped when videos spread over many folders)."""
    folders: dict[str, list[str]] = defaultdict(list)
    for u in uris:
        parent, _, _ = u.rstrip("/").rpartition("/")
        folders[parent].append(u)
    if len(folders) > _MAX_LISTED_FOLDERS:
        return {}
    sizes: dict[str, int] = {}
    for parent, members in folders.items():
        try:
            listing = list_sizes(parent, storage_options)
        except Exception:  # noqa: BLE001 - sizes only order the work; an unlistable folder falls back to 1
            continue
        for u in members:
            s = listing.get(u.rstrip("/").rpartition("/")[2])
            if s is not None:
                sizes[u] = s
    return sizes


def _mask_dicts(table: pa.Table) -> list[dict | None]:
    """Mask prompts as COCO RLE dicts (built from the two child columns: much faster than struct to_pylist)."""
    if "mask" not in table.column_names:
        return [None] * table.num_rows
    col = table["mask"].combine_chunks()
    present = col.is_valid().to_pylist()
    sizes = pc.struct_field(col, "size").to_pylist()
    counts = pc.struct_field(col, "counts").to_pylist()
    return [{"size": s, "counts": c} if p else None for p, s, c in zip(present, sizes, counts)]


def build_tasks(table: pa.Table, data_root: str | None, storage_options: dict | None,
                mode: str = "manifest") -> list[VideoTask]:
    """One task per video from validated manifest rows (``__row`` holds each row's number), largest cost first.
    ``mode`` "auto": tasks without prompts (one per distinct video); "manifest+auto": prompts plus discovery, where
    a video listed only by video-only rows (null obj_id: see pipeline.plan.manifest) gets a task without prompts."""
    if mode == "auto" or "obj_id" not in table.column_names:
        prompted = table.slice(0, 0)
    else:
        prompted = table.filter(pc.is_valid(table["obj_id"]))
    return _video_tasks(table, data_root, storage_options, _prompts_by_video(prompted), auto=mode != "manifest")


def _prompts_by_video(table: pa.Table) -> dict[str, list[Prompt]]:
    """The prompt rows of ``table`` per video, each video's ordered by (frame, object)."""
    if table.num_rows == 0:
        return {}
    cols = {c: table[c].to_pylist() if c in table.column_names else [None] * table.num_rows
            for c in ("points", "point_labels", "box")}
    cols["mask"] = _mask_dicts(table)
    rows = table["__row"].to_pylist()
    obj = table["obj_id"].to_pylist()
    frame = table["frame_idx"].to_pylist()
    by_video: dict[str, list[Prompt]] = defaultdict(list)
    for i, v in enumerate(table["video_id"].to_pylist()):
        by_video[v].append(Prompt(obj[i], frame[i], cols["points"][i], cols["point_labels"][i], cols["box"][i],
                                  cols["mask"][i], rows[i]))
    for prompts in by_video.values():
        prompts.sort(key=lambda p: (p.frame_idx, p.obj_id))
    return by_video


def _video_tasks(table: pa.Table, data_root: str | None, storage_options: dict | None,
                 prompts_of: dict[str, list[Prompt]], auto: bool) -> list[VideoTask]:
    """One task per distinct video of ``table`` with its ``prompts_of`` (none for a video without prompt rows),
    largest cost first. Cost = objects × file size; a video without prompts counts as one object (its objects are
    not known yet)."""
    uri_of: dict[str, str] = {}
    for v, u in zip(table["video_id"].to_pylist(), table["video_uri"].to_pylist()):
        if v not in uri_of:
            uri_of[v] = _resolve_uri(u, data_root)
    sizes = _file_sizes(uri_of.values(), storage_options)
    fallback = float(np.median(list(sizes.values()))) if sizes else 1.0
    tasks = []
    for v, u in uri_of.items():
        prompts = tuple(prompts_of.get(v, ()))
        n_obj = len({p.obj_id for p in prompts})
        tasks.append(VideoTask(v, u, prompts, n_obj, max(n_obj, 1) * float(sizes.get(u, fallback)), auto=auto))
    tasks.sort(key=lambda t: (-t.cost, t.video_id))
    return tasks
