"""Tasks: what the driver hands a worker, one per video, and how videos are split into shards.

A ``VideoTask`` carries every prompt of one video (from validated manifest rows) and a ``cost`` that orders the
work largest first (objects × file size, when the sizes can be listed cheaply).

At SA-V scale (~51k videos, ~650k prompt rows, half of them COCO RLE masks) the driver must not hold a Python object
per prompt: the rows stay in the manifest's Arrow columns (``PromptTable``), each task holds its row numbers
(``PromptRows``, a sequence of ``Prompt`` built when read), and ``with_digests`` hashes every task's prompts from
the columns at once.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.storage import is_absolute_uri, join_uri, list_sizes
from pipeline.plan.sampling import FrameGrid

_MAX_LISTED_FOLDERS = 64  # above this many distinct video folders, file sizes are not looked up
_DIGEST_BATCH_ROWS = 1 << 14  # prompt rows turned into JSON at once by ``with_digests`` (bounds its memory)
_PROMPT_FIELDS = ("points", "point_labels", "box", "mask")
_F = TypeVar("_F", bound=Callable[..., Any])


def without_cyclic_gc(plan: _F) -> _F:
    """Run ``plan`` with Python's cyclic garbage collector paused, and freeze what it built: planning builds
    objects that live for the whole job (a task and its prompt rows per video), none of them in cycles, and at SA-V
    scale the collector rescanning them, as they are built and again after, costs a quarter of the planning time."""
    @functools.wraps(plan)
    def paused(*args: Any, **kwargs: Any) -> Any:
        was = gc.isenabled()
        gc.disable()
        try:
            return plan(*args, **kwargs)
        finally:
            gc.freeze()  # out of the collector's generations: never scanned again
            if was:
                gc.enable()
    return paused  # type: ignore[return-value]


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


class PromptTable:
    """Validated prompt rows of a manifest as Arrow columns (``__row``: manifest row number, ``obj_id``,
    ``frame_idx`` and whichever of points, point_labels, box, mask it has), shared by the tasks planned from it."""

    def __init__(self, table: pa.Table) -> None:
        table = table.select([c for c in ("__row", "obj_id", "frame_idx", *_PROMPT_FIELDS) if c in table.column_names])
        # kept as the table's record batches: Arrow's take on a chunked string column concatenates every chunk first
        self.batches = table.to_batches()
        self.starts = np.cumsum([0] + [b.num_rows for b in self.batches])

    def _take(self, rows: np.ndarray) -> pa.Table:
        """Table rows ``rows`` (in that order)."""
        batch = np.searchsorted(self.starts, rows, side="right") - 1
        if batch.size and batch.min() == batch.max():
            return pa.Table.from_batches([self.batches[batch[0]].take(pa.array(rows - self.starts[batch[0]]))])
        by_batch = np.argsort(batch, kind="stable")
        bounds = np.searchsorted(batch[by_batch], np.arange(len(self.batches) + 1))
        parts = [self.batches[i].take(pa.array(rows[by_batch[a:b]] - self.starts[i]))
                 for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a]
        gathered = pa.Table.from_batches(parts, schema=self.batches[0].schema).combine_chunks()
        return gathered.take(pa.array(np.argsort(by_batch)))

    def prompts(self, rows: np.ndarray) -> tuple[Prompt, ...]:
        """``Prompt`` objects of table rows ``rows``, in that order."""
        sub = self._take(rows)
        cols = {c: sub[c].to_pylist() if c in sub.column_names else [None] * len(rows) for c in _PROMPT_FIELDS}
        if "mask" in sub.column_names:
            cols["mask"] = _mask_dicts(sub["mask"])
        return tuple(Prompt(*fields) for fields in zip(sub["obj_id"].to_pylist(), sub["frame_idx"].to_pylist(),
                                                       cols["points"], cols["point_labels"], cols["box"],
                                                       cols["mask"], sub["__row"].to_pylist()))

    def prompt_json(self, rows: np.ndarray) -> pa.Array:
        """Each row of ``rows`` as ``,`` followed by the JSON ``task_digest`` writes for its prompt:
        ``[obj_id,frame_idx,points,point_labels,box,mask]`` (``json.dumps`` with separators "," and ":", mask keys
        sorted), built column by column; the mask strings are copied twice (escaped, joined), never into Python."""
        sub = self._take(rows)
        n = sub.num_rows
        parts: list[Any] = [",[", _json_numbers(sub["obj_id"].combine_chunks()), ",",
                            _json_numbers(sub["frame_idx"].combine_chunks())]
        for c in ("points", "point_labels", "box"):
            parts += [",", _json_lists(sub[c].combine_chunks()).fill_null("null") if c in sub.column_names
                      else pa.array(["null"] * n)]
        if "mask" in sub.column_names:
            mask = sub["mask"].combine_chunks()
            present = mask.is_valid()
            # validated counts hold only '0'..'o'; of those only the backslash needs escaping
            counts = pc.replace_substring(pc.struct_field(mask, "counts").cast(pa.string()), "\\", "\\\\")
            none = pa.scalar(None, pa.string())
            parts += [",", pc.if_else(present, '{"counts":"', "null"), counts, pc.if_else(present, '","size":', none),
                      _json_lists(pc.struct_field(mask, "size")), pc.if_else(present, "}", none)]
        else:
            parts += [",null"]
        return pc.binary_join_element_wise(*parts, "]", "", null_handling="skip")  # null: a mask's absent parts


class PromptRows(Sequence[Prompt]):
    """The prompts of one video: rows of a ``PromptTable``, built as ``Prompt`` objects when read. Pickled (as it is
    sent to a worker) it becomes the plain tuple of prompts."""

    __slots__ = ("source", "rows")

    def __init__(self, source: PromptTable, rows: np.ndarray) -> None:
        self.source = source
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> Prompt: ...

    @overload
    def __getitem__(self, i: slice) -> tuple[Prompt, ...]: ...

    def __getitem__(self, i: int | slice) -> Prompt | tuple[Prompt, ...]:
        return self.source.prompts(self.rows)[i]

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.source.prompts(self.rows))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"PromptRows({len(self)} rows)"

    def __reduce__(self) -> tuple[Any, ...]:
        return tuple, (self.source.prompts(self.rows),)


@dataclass(frozen=True)
class VideoTask:
    """All prompts of one video; ``cost`` orders scheduling (``video_cost``) until the pool has fitted the
    seconds per byte of ``file_size``."""

    video_id: str
    video_uri: str
    prompts: Sequence[Prompt]  # a tuple, or PromptRows in the driver (a tuple again once sent to a worker)
    num_objects: int
    cost: float
    digest: str = ""  # of what produces the video's masklets (see ``task_digest``); kept in its done record
    object_batch: int | None = None  # most objects per batched step; set after the video ran out of memory
    auto: bool = False  # discover the video's (other) objects automatically (prompts=auto / manifest+auto)
    grid: FrameGrid = FrameGrid()  # the frames tracked: data.frame_step and the video's clip (start/end_frame)
    file_size: float = 1.0  # bytes of its file (the median of the others' when unknown; 1: none known)

    def with_smaller_batches(self, used: int | None = None) -> "VideoTask":
        """The same task with half the objects per batched step after an out-of-memory failure: half of ``used``
        (what the failed attempt batched, as its worker reported it: discovered objects count too), else of the
        task's cap, else of its manifest objects."""
        current = used or self.object_batch or max(self.num_objects, 1)
        return replace(self, object_batch=max(1, current // 2))


def task_digest(task: VideoTask, produced_by: dict) -> str:
    """sha256 of everything that determines a video's masklets: its URI, its prompt rows (manifest row numbers
    excluded: reordering a manifest changes nothing), ``produced_by`` (model identity and engine options) and the
    frames tracked (``grid``; recorded only when not every frame, so the digests of a job without a step or a clip
    are those earlier releases wrote)."""
    prompts = [[p.obj_id, p.frame_idx, p.points, p.point_labels, p.box, p.mask] for p in task.prompts]
    content = {"video_uri": task.video_uri, "prompts": prompts, "produced_by": produced_by}
    if not task.grid.every_frame:
        content["frames"] = task.grid.to_json()
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _grid_json(grid: FrameGrid) -> bytes:
    """How ``task_digest``'s JSON starts for ``grid``: its ``"frames"`` entry, nothing for every frame."""
    if grid.every_frame:
        return b"{"
    return ('{"frames":' + json.dumps(grid.to_json(), sort_keys=True, separators=(",", ":")) + ",").encode()


@without_cyclic_gc
def with_digests(tasks: Sequence[VideoTask], produced_by: dict) -> list[VideoTask]:
    """``tasks`` with their ``task_digest`` set. For prompts still in a ``PromptTable`` the bytes ``task_digest``
    hashes are streamed from its JSON columns (``PromptTable.prompt_json``), a batch of rows at a time in manifest
    order, without a Python object per prompt; tasks whose prompts are a plain tuple go through ``task_digest``."""
    head = ('"produced_by":' + json.dumps(produced_by, sort_keys=True, separators=(",", ":"), default=str)
            + ',"prompts":[').encode()
    digests: dict[int, str] = {}
    by_source: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(tasks):
        if isinstance(t.prompts, PromptRows):
            by_source[id(t.prompts.source)].append(i)
        else:
            digests[i] = task_digest(t, produced_by)
    for members in by_source.values():
        members.sort(key=lambda i: tasks[i].prompts.rows[0])  # batches of nearby rows: cheap to gather
        source = tasks[members[0]].prompts.source
        ends = np.cumsum([len(tasks[i].prompts) for i in members])
        start = 0
        while start < len(members):
            stop = max(int(np.searchsorted(ends, ends[start] - len(tasks[members[start]].prompts)
                                           + _DIGEST_BATCH_ROWS)), start + 1)
            batch = members[start:stop]
            fragments = source.prompt_json(np.concatenate([tasks[i].prompts.rows for i in batch]))
            text = memoryview(fragments.buffers()[2])
            offsets = np.frombuffer(fragments.buffers()[1], dtype=np.int32)[fragments.offset:]
            row = 0
            for i in batch:
                t = tasks[i]
                h = hashlib.sha256(_grid_json(t.grid) + head)
                h.update(text[offsets[row] + 1:offsets[row + len(t.prompts)]])  # without the first ","
                h.update(f'],"video_uri":{json.dumps(t.video_uri)}}}'.encode())
                digests[i] = h.hexdigest()
                row += len(t.prompts)
            start = stop
    return [_with_digest(t, digests[i]) for i, t in enumerate(tasks)]


def _with_digest(task: VideoTask, digest: str) -> VideoTask:
    """``replace(task, digest=digest)`` without re-running ``__init__`` (a tenth of the time, 51k times a job)."""
    new = object.__new__(VideoTask)
    new.__dict__.update(task.__dict__, digest=digest)
    return new


def _json_numbers(values: pa.Array) -> pa.Array:
    """Numbers (or booleans) as ``json.dumps`` writes them: floats through Python's repr, as json does."""
    if pa.types.is_floating(values.type):
        return pa.array(list(map(float.__repr__, values.cast(pa.float64()).to_pylist())), pa.string())
    if pa.types.is_boolean(values.type):
        return pc.if_else(values, "true", "false")
    return values.cast(pa.string())


def _json_lists(col: pa.Array) -> pa.Array:
    """A (nested) list column of numbers as JSON arrays (null where missing)."""
    if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type) \
            and not pa.types.is_fixed_size_list(col.type):
        return _json_numbers(col)
    lengths = np.asarray(pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int32)
    offsets = np.zeros(len(col) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), _json_lists(pc.list_flatten(col))), ",")
    return pc.if_else(col.is_valid(), pc.binary_join_element_wise("[", joined, "]", ""), pa.scalar(None, pa.string()))


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


def _mask_dicts(col: pa.ChunkedArray) -> list[dict | None]:
    """Mask prompts as COCO RLE dicts (built from the two child columns: much faster than struct to_pylist)."""
    col = col.combine_chunks()
    present = col.is_valid().to_pylist()
    sizes = pc.struct_field(col, "size").to_pylist()
    counts = pc.struct_field(col, "counts").to_pylist()
    return [{"size": s, "counts": c} if p else None for p, s, c in zip(present, sizes, counts)]


def _ints(col: pa.ChunkedArray, fill: int) -> np.ndarray:
    return np.asarray(col.fill_null(fill).to_numpy(), dtype=np.int64)


def build_tasks(table: pa.Table, data_root: str | None, storage_options: dict | None,
                mode: str = "manifest", frame_step: int = 1) -> list[VideoTask]:
    """One task per video from validated manifest rows (``__row`` holds each row's number), largest cost first.
    ``mode`` "auto": tasks without prompts (one per distinct video); "manifest+auto": prompts plus discovery, where
    a video listed only by video-only rows (null obj_id: see pipeline.plan.manifest) gets a task without prompts.
    A video's prompts are ordered by (frame, object); its cost is ``video_cost``; its grid is ``frame_step`` and its
    clip (start_frame/end_frame of its first row, which its other rows agree with)."""
    ids = pc.unique(table["video_id"])  # in order of first appearance
    video = _ints(pc.index_in(table["video_id"], value_set=ids), -1)
    _, first_row = np.unique(video, return_index=True)
    uris = table["video_uri"].take(pa.array(first_row)).to_pylist()
    starts, ends = (_clip_column(table, c)[first_row] for c in ("start_frame", "end_frame"))
    if mode == "auto" or "obj_id" not in table.column_names:
        rows = np.zeros(0, dtype=np.int64)
    else:
        rows = np.flatnonzero(_np_valid(table["obj_id"]))
    obj, frame = (_ints(table[c], -1)[rows] for c in ("obj_id", "frame_idx")) if rows.size else (rows, rows)
    order = rows[np.lexsort((obj, frame, video[rows]))]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(video[order], minlength=len(ids)), out=offsets[1:])
    by_object = np.lexsort((obj, video[rows]))
    v_sorted, o_sorted = video[rows][by_object], obj[by_object]
    new_object = np.ones(rows.size, dtype=bool)
    new_object[1:] = (v_sorted[1:] != v_sorted[:-1]) | (o_sorted[1:] != o_sorted[:-1])
    objects = np.bincount(v_sorted[new_object], minlength=len(ids))
    source = PromptTable(table) if rows.size else None
    root = _resolve_uri(data_root, None) if data_root else None  # once, not per video
    resolved = [_resolve_uri(u, root) for u in uris]
    sizes = _file_sizes(resolved, storage_options)
    fallback = float(np.median(list(sizes.values()))) if sizes else 1.0
    tasks = []
    grids: dict[tuple[int, int], FrameGrid] = {}  # one per clip (most videos: the whole video)
    for v, (video_id, uri) in enumerate(zip(ids.to_pylist(), resolved)):
        a, b = int(offsets[v]), int(offsets[v + 1])
        prompts: Sequence[Prompt] = PromptRows(source, order[a:b]) if b > a else ()
        n_obj = int(objects[v])
        clip = (int(starts[v]), int(ends[v]))
        grid = grids.get(clip)
        if grid is None:
            start, end = (None if c < 0 else c for c in clip)
            grid = grids[clip] = FrameGrid(frame_step, start, end)
        size = float(sizes.get(uri, fallback))
        tasks.append(VideoTask(video_id, uri, prompts, n_obj, video_cost(n_obj, size), auto=mode != "manifest",
                               grid=grid, file_size=size))
    return plan_order(tasks)


OBJECT_SHARE = 0.25  # one object's tracking per frame against the frame's image encoding: a prior (the engine
#                      benchmark's tiny model on CPU); the pool fits the real share from the videos it has done


def video_cost(num_objects: int, file_size: float) -> float:
    """A task's scheduling cost before any video is done: its file size (its frames) × (1 + ``OBJECT_SHARE`` ×
    objects), as the image encoder runs once per frame and the tracker once per object and frame; a video without
    prompts counts as one object (its objects are not known yet)."""
    return file_size * (1.0 + OBJECT_SHARE * max(num_objects, 1))


def plan_order(tasks: Iterable[VideoTask]) -> list[VideoTask]:
    """Largest cost first, ties by video_id: the order the driver queues tasks in."""
    return sorted(tasks, key=lambda t: (-t.cost, t.video_id))


def _clip_column(table: pa.Table, name: str) -> np.ndarray:
    """A validated clip column as int64, -1 where null (or when the column is absent)."""
    if name not in table.column_names or not pa.types.is_integer(table[name].type):
        return np.full(table.num_rows, -1, dtype=np.int64)
    return _ints(table[name], -1)


def _np_valid(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.is_valid().to_numpy(), dtype=bool)
