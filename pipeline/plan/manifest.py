"""Prompt manifest: read a Parquet manifest, validate every row, and plan the valid ones as tasks (pipeline.plan.tasks).

All checks are vectorised with pyarrow/numpy so that an SA-V sized manifest (~50k videos, ~650k rows) is read,
validated and planned in seconds. Every invalid row is reported at once (row, column, reason) before any model
work; ``on_invalid="drop_video"`` instead drops the videos those rows belong to and plans the rest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io.keys import MAX_VIDEO_ID_CHARS, VIDEO_ID_PATTERN, VIDEO_ID_RULE, usable_video_id
from pipeline.io.rle import rle_run_totals
from pipeline.io.storage import filesystem, is_transient, retrying, uri_protocols
from pipeline.plan.sampling import FrameGrid
from pipeline.plan.tasks import VideoTask, build_tasks, without_cyclic_gc

REQUIRED = ("video_id", "video_uri", "obj_id", "frame_idx")
# all null (or absent) in a video-only row: it lists its video for discovery (prompts=manifest+auto), no prompt
PROMPT_COLUMNS = ("obj_id", "frame_idx", "points", "point_labels", "box", "mask")
# a video's clip (nullable; the same on every row of a video): its first and last tracked frame, both inclusive
CLIP_COLUMNS = ("start_frame", "end_frame")
MODES = ("manifest", "auto", "manifest+auto")
_VIDEO_ONLY = "no prompt (obj_id/frame_idx missing); video-only rows need prompts=manifest+auto or prompts=auto"
# local files and the object stores fsspec/s3fs serve, and tar members of those (SA-V's shards); http(s) only when
# a config allows it (data.protocols)
DEFAULT_PROTOCOLS = ("file", "local", "s3", "s3a", "gs", "gcs", "abfs", "az", "tar")
RETRY_S = 30.0  # how long transient storage errors on reading a manifest are retried (data.retry_s)
# The contract types (DESIGN.md, "Prompt manifest"). Readers also accept other int/float widths, large_string/large_list and
# fixed-size lists; writers should use this schema.
MANIFEST_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("video_uri", pa.string()),
    ("obj_id", pa.int64()),
    ("frame_idx", pa.int64()),
    ("points", pa.list_(pa.list_(pa.float64()))),
    ("point_labels", pa.list_(pa.int32())),
    ("box", pa.list_(pa.float64())),
    ("mask", pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])),
    ("start_frame", pa.int64()),
    ("end_frame", pa.int64()),
])
_MAX_MESSAGE_ERRORS = 200


@dataclass
class RowError:
    """Why a manifest row is invalid; ``row`` is the 0-based row number, -1 for a whole-column problem."""

    row: int
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row >= 0 else "manifest"
        return f"{where}, column {self.column!r}: {self.reason}"


class ManifestError(ValueError):
    """Invalid manifest; ``errors`` holds every row error (the message shows the first 200)."""

    def __init__(self, uri: str, errors: list[RowError]) -> None:
        self.errors = errors
        lines = [str(e) for e in errors[:_MAX_MESSAGE_ERRORS]]
        if len(errors) > _MAX_MESSAGE_ERRORS:
            lines.append(f"... and {len(errors) - _MAX_MESSAGE_ERRORS} more (see ManifestError.errors)")
        super().__init__(f"invalid manifest {uri}: {len(errors)} error(s)\n  " + "\n  ".join(lines))


@dataclass
class ManifestPlan:
    """Tasks largest cost first; ``dropped`` maps video_id → its errors (key "" for rows without a video_id)."""

    tasks: list[VideoTask]
    dropped: dict[str, list[RowError]] = field(default_factory=dict)
    num_rows: int = 0


class ManifestReadError(ValueError):
    """The manifest could not be read at all (missing, not Parquet, storage unreachable); one line naming it."""


def read_manifest_table(uri: str, storage_options: dict | None = None, retry_s: float = RETRY_S) -> pa.Table:
    """The manifest as one Arrow table (a Parquet file or a folder of Parquet files, any fsspec URI); transient
    storage errors are retried for ``retry_s`` seconds.

    Optional prompt and clip columns of Arrow type null (all values missing, as pandas writes them) are dropped, and
    clip columns of whole floats (pandas' integers with missing values) become int64.
    """
    fs, path = filesystem(uri, storage_options)
    try:
        table = retrying(lambda: _read_parquet(fs, path), f"reading manifest {uri}", retry_s)
    except FileNotFoundError as e:
        raise ManifestReadError(f"manifest {uri} not found") from e
    except pa.ArrowInvalid as e:
        raise ManifestReadError(f"manifest {uri} is not a Parquet file ({e})") from e
    except Exception as e:  # noqa: BLE001 - storage errors of any fsspec backend
        what = "unreachable" if is_transient(e) else "not readable"
        raise ManifestReadError(f"manifest {uri} is {what}: {type(e).__name__}: {e}") from e
    empty = [c for c in ("points", "point_labels", "box", "mask", *CLIP_COLUMNS)
             if c in table.column_names and pa.types.is_null(table.schema.field(c).type)]
    table = table.drop_columns(empty) if empty else table
    for c in CLIP_COLUMNS:
        if c in table.column_names and pa.types.is_floating(table.schema.field(c).type):
            try:  # a safe cast: a fractional frame stays float and is refused by the checks
                table = table.set_column(table.column_names.index(c), c, pc.cast(table[c], pa.int64()))
            except pa.ArrowInvalid:
                pass
    return table


def _read_parquet(fs: Any, path: str) -> pa.Table:
    """A Parquet file batch by batch on one thread (at SA-V scale: a third of ``pq.read_table``'s peak memory and
    time), or a folder of them as one dataset. The file's buffers come from the system allocator: in the driver's
    fresh process, mimalloc's first touch of them (~300 MB for SA-V) costs about a second more."""
    if fs.isdir(path):
        return pq.read_table(path, filesystem=fs)
    default = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            return pa.Table.from_batches(parquet.iter_batches(batch_size=1 << 16, use_threads=False),
                                         schema=parquet.schema_arrow)
    finally:
        pa.set_memory_pool(default)


class _Errors:
    """Accumulates row errors; vectorised checks add whole boolean masks at once, limited to ``rows`` when given."""

    def __init__(self, rows: np.ndarray | None = None) -> None:
        self.items: list[RowError] = []
        self.rows = rows

    def add_mask(self, bad: np.ndarray, column: str, reason) -> None:
        for r in np.flatnonzero(bad if self.rows is None else bad & self.rows):
            self.items.append(RowError(int(r), column, reason(int(r)) if callable(reason) else reason))

    def add(self, row: int, column: str, reason: str) -> None:
        self.items.append(RowError(row, column, reason))


def _np(arr: pa.Array, fill) -> np.ndarray:
    return np.asarray(arr.fill_null(fill).to_numpy(zero_copy_only=False))


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _list_values(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Flattened values of a list column and the row each value belongs to."""
    return pc.list_flatten(col), np.asarray(pc.list_parent_indices(col).to_numpy(zero_copy_only=False))


def _any_per_row(n: int, rows: np.ndarray, flags: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[rows[flags]] = True
    return out


def _check_numbers(values: pa.Array, parents: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: any null/non-finite value; and the values as float64 (nan for null)."""
    nums = np.asarray(values.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=float)
    return _any_per_row(n, parents, ~np.isfinite(nums)), nums


def _shown(video_id: str, limit: int = 60) -> str:
    """A video_id for an error line: quoted, a long one cut with its length."""
    return repr(video_id) if len(video_id) <= limit else f"{video_id[:limit]!r}... ({len(video_id)} characters)"


def _check_ids(table: pa.Table, errors: _Errors) -> np.ndarray:
    """video_id / video_uri checks; returns the rows whose video_id is usable."""
    n = table.num_rows
    vid = table["video_id"]
    ok_vid = np.ones(n, dtype=bool)
    if not pa.types.is_string(vid.type) and not pa.types.is_large_string(vid.type):
        errors.add(-1, "video_id", f"must be string, got {vid.type}")
        return np.zeros(n, dtype=bool)
    vid_null = _np(vid.is_null(), True)
    errors.add_mask(vid_null, "video_id", "missing")
    pattern_ok = _np(pc.match_substring_regex(vid, VIDEO_ID_PATTERN), False)
    too_long = _np(pc.greater(pc.utf8_length(vid), MAX_VIDEO_ID_CHARS), False)
    bad_pattern = ~vid_null & (~pattern_ok | too_long)
    errors.add_mask(bad_pattern, "video_id", lambda r: f"{_shown(vid[r].as_py())} is not usable in output keys: "
                                                       f"{VIDEO_ID_RULE}")
    ok_vid &= ~vid_null
    uri = table["video_uri"]
    if not pa.types.is_string(uri.type) and not pa.types.is_large_string(uri.type):
        errors.add(-1, "video_uri", f"must be string, got {uri.type}")
    else:
        empty = _np(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(uri)), 0), True)
        errors.add_mask(empty, "video_uri", "missing or empty")
    return ok_vid


def _check_prompt_ids(table: pa.Table, errors: _Errors) -> None:
    """obj_id / frame_idx: integers >= 0 (an absent column counts as all null)."""
    for col in ("obj_id", "frame_idx"):
        if col not in table.column_names:
            errors.add_mask(np.ones(table.num_rows, dtype=bool), col, "missing")
            continue
        arr = table[col]
        if not pa.types.is_integer(arr.type):
            errors.add(-1, col, f"must be an integer column, got {arr.type}")
            continue
        null = _np(arr.is_null(), True)
        errors.add_mask(null, col, "missing")
        neg = ~null & _np(pc.less(arr, 0), False)
        errors.add_mask(neg, col, lambda r, a=arr, c=col: f"{c} {a[r].as_py()} must be >= 0")


def video_only_rows(table: pa.Table) -> np.ndarray:
    """Per row: every prompt column (PROMPT_COLUMNS) null or absent, i.e. the row only lists its video."""
    out = np.ones(table.num_rows, dtype=bool)
    for c in PROMPT_COLUMNS:
        if c in table.column_names:
            out &= _np(table[c].is_null(), True)
    return out


def _check_uri_consistency(table: pa.Table, ok_vid: np.ndarray, errors: _Errors) -> None:
    """Every row of a video must name the same video_uri."""
    sub = table.select(["video_id", "video_uri"]).append_column("row", pa.array(np.arange(table.num_rows)))
    sub = sub.filter(pa.array(ok_vid))
    counts = sub.group_by("video_id").aggregate([("video_uri", "count_distinct")])
    multi = counts.filter(pc.greater(counts["video_uri_count_distinct"], 1))["video_id"]
    if len(multi) == 0:
        return
    rows = sub.filter(pc.is_in(sub["video_id"], value_set=multi)).to_pydict()
    seen: dict[str, str] = {}
    for r, v, u in zip(rows["row"], rows["video_id"], rows["video_uri"]):
        first = seen.setdefault(v, u)
        if u != first:
            errors.add(r, "video_uri", f"video {v!r} has video_uri {u!r} here but {first!r} in an earlier row")


def _check_points(table: pa.Table, errors: _Errors) -> tuple[np.ndarray, np.ndarray]:
    """points / point_labels checks; returns (has_points, has_labels) per row."""
    n = table.num_rows
    has_points = np.zeros(n, dtype=bool)
    has_labels = np.zeros(n, dtype=bool)
    npts = np.zeros(n, dtype=np.int64)
    if "points" in table.column_names:
        col = table["points"].combine_chunks()
        if not _is_list(col.type) or not _is_list(col.type.value_type) or not _is_numeric(
                col.type.value_type.value_type):
            errors.add(-1, "points", f"must be list<list<float>>, got {col.type}")
        else:
            has_points = _np(col.is_valid(), False)
            npts = _np(pc.list_value_length(col), 0).astype(np.int64)
            errors.add_mask(has_points & (npts == 0), "points", "empty list of points")
            inner, parents = _list_values(col)
            inner_len = _np(pc.list_value_length(inner), -1)
            errors.add_mask(_any_per_row(n, parents, inner_len != 2), "points", "each point must be [x, y]")
            values, vparents_inner = _list_values(inner)
            bad_num, _ = _check_numbers(values, parents[vparents_inner], n)
            errors.add_mask(bad_num, "points", "coordinates must be finite numbers")
    if "point_labels" in table.column_names:
        col = table["point_labels"].combine_chunks()
        if not _is_list(col.type) or not (pa.types.is_integer(col.type.value_type)
                                          or pa.types.is_boolean(col.type.value_type)):
            errors.add(-1, "point_labels", f"must be list<int>, got {col.type}")
        else:
            has_labels = _np(col.is_valid(), False)
            nlab = _np(pc.list_value_length(col), 0)
            errors.add_mask(has_labels & has_points & (nlab != npts), "point_labels",
                            lambda r: f"{nlab[r]} labels for {npts[r]} points")
            values, parents = _list_values(col)
            vals = _np(values.cast(pa.int64()), -1)
            errors.add_mask(_any_per_row(n, parents, (vals != 0) & (vals != 1)), "point_labels",
                            "labels must be 0 (negative) or 1 (positive)")
    errors.add_mask(has_points & ~has_labels, "point_labels", "points need point_labels")
    errors.add_mask(has_labels & ~has_points, "point_labels", "point_labels given without points")
    return has_points, has_labels


def _check_box(table: pa.Table, errors: _Errors) -> np.ndarray:
    n = table.num_rows
    if "box" not in table.column_names:
        return np.zeros(n, dtype=bool)
    col = table["box"].combine_chunks()
    if not _is_list(col.type) or not _is_numeric(col.type.value_type):
        errors.add(-1, "box", f"must be list<float> of 4, got {col.type}")
        return np.zeros(n, dtype=bool)
    has_box = _np(col.is_valid(), False)
    blen = _np(pc.list_value_length(col), 0)
    wrong_len = has_box & (blen != 4)
    errors.add_mask(wrong_len, "box", lambda r: f"box must have 4 numbers [x0, y0, x1, y1], got {blen[r]}")
    values, parents = _list_values(col)
    bad_num, nums = _check_numbers(values, parents, n)
    errors.add_mask(has_box & ~wrong_len & bad_num, "box", "box coordinates must be finite numbers")
    rows4 = np.flatnonzero(has_box & ~wrong_len)
    if rows4.size:
        quads = nums[np.isin(parents, rows4)].reshape(-1, 4)
        unordered = (quads[:, 0] > quads[:, 2]) | (quads[:, 1] > quads[:, 3])
        bad = np.zeros(n, dtype=bool)
        bad[rows4[unordered]] = True
        errors.add_mask(bad, "box", lambda r: f"box {col[r].as_py()} needs x0 <= x1 and y0 <= y1")
    return has_box


def _check_mask(table: pa.Table, errors: _Errors) -> np.ndarray:
    n = table.num_rows
    if "mask" not in table.column_names:
        return np.zeros(n, dtype=bool)
    col = table["mask"]  # chunks kept: the counts strings are most of an SA-V manifest
    t = col.type
    if (not pa.types.is_struct(t) or t.get_field_index("size") < 0 or t.get_field_index("counts") < 0
            or not _is_list(t.field("size").type) or not pa.types.is_integer(t.field("size").type.value_type)
            or not (pa.types.is_string(t.field("counts").type) or pa.types.is_large_string(t.field("counts").type))):
        errors.add(-1, "mask", f"must be struct<size: list<int>, counts: string>, got {t}")
        return np.zeros(n, dtype=bool)
    has_mask = _np(col.is_valid(), False)
    size = pc.struct_field(col, "size").combine_chunks()
    counts = pc.struct_field(col, "counts")
    slen = _np(pc.list_value_length(size), 0)
    hw = np.zeros((n, 2), dtype=np.int64)
    values, parents = _list_values(size)
    two = slen[parents] == 2
    vals = _np(values.cast(pa.int64()), 0)
    hw[parents[two], np.tile([0, 1], int(two.sum()) // 2)] = vals[two]
    bad_size = has_mask & ((slen != 2) | (hw[:, 0] <= 0) | (hw[:, 1] <= 0))
    errors.add_mask(bad_size, "mask", lambda r: f"mask size must be [H, W] of positive ints, got "
                                                f"{size[r].as_py()}")
    ok_rle, totals = rle_run_totals(counts)
    bad_counts = has_mask & ~bad_size & (~ok_rle | (totals != hw[:, 0] * hw[:, 1]))
    errors.add_mask(bad_counts, "mask", lambda r: f"mask counts do not decode to a {hw[r, 0]}x{hw[r, 1]} COCO RLE")
    return has_mask


def _check_kinds(table: pa.Table, has_points, has_box, has_mask, errors: _Errors) -> None:
    none = ~has_points & ~has_box & ~has_mask
    errors.add_mask(none, "points", "row has no prompt (needs points, box, mask, or points with box)")
    errors.add_mask(has_mask & (has_points | has_box), "mask", "a mask prompt cannot be combined with points or box")


def _check_duplicates(table: pa.Table, ok_vid: np.ndarray, errors: _Errors) -> None:
    """One prompt per (video, object, frame) among the ``ok_vid`` rows: a second row would silently replace the
    first. Rows are sorted by that key (numpy: no hash table over the whole manifest)."""
    if not all(c in table.column_names and pa.types.is_integer(table[c].type) for c in ("obj_id", "frame_idx")):
        return
    rows = np.flatnonzero(ok_vid)
    vid = table["video_id"]
    keys = [_np(pc.index_in(vid, value_set=pc.unique(vid)), -1)[rows]]
    for c in ("obj_id", "frame_idx"):  # a null is a key of its own; uint64 wraps, equal stays equal
        keys += [_np(table[c].is_null(), True)[rows], _np(pc.cast(table[c], pa.int64(), safe=False), 0)[rows]]
    order = np.lexsort(keys[::-1])  # stable: each key's rows ascending, the first of a group is its lowest row
    same = np.ones(rows.size - 1 if rows.size else 0, dtype=bool)
    for k in keys:
        s = k[order]
        same &= s[1:] == s[:-1]
    if not same.any():
        return
    first = np.maximum.accumulate(np.where(np.r_[True, ~same], np.arange(rows.size), 0))
    for i in np.flatnonzero(same) + 1:
        r, r0 = int(rows[order[i]]), int(rows[order[first[i]]])
        v, o, f = (table[c][r].as_py() for c in ("video_id", "obj_id", "frame_idx"))
        errors.add(r, "frame_idx", f"second prompt for video {v!r} object {o} frame {f} (first in row {r0})")


def _has_clips(table: pa.Table) -> bool:
    """Some row gives a clip (a start_frame or end_frame column holding a value)."""
    return any(c in table.column_names and table[c].null_count < table.num_rows for c in CLIP_COLUMNS)


def clip_bounds(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per row: start_frame and end_frame as int64, -1 where null, absent, negative or not an integer column."""
    out = []
    for col in CLIP_COLUMNS:
        arr = table[col] if col in table.column_names else None
        if arr is None or not pa.types.is_integer(arr.type):
            out.append(np.full(table.num_rows, -1, dtype=np.int64))
            continue
        vals = _np(pc.cast(arr, pa.int64(), safe=False), -1).astype(np.int64)
        out.append(np.where(vals < 0, -1, vals))
    return out[0], out[1]


def _clip_text(start: int, end: int) -> str:
    return f"start_frame {start if start >= 0 else 'null'}, end_frame {end if end >= 0 else 'null'}"


def _check_clips(table: pa.Table, ok_vid: np.ndarray, frame_step: int, errors: _Errors) -> np.ndarray:
    """start_frame / end_frame: integers >= 0 or null, start <= end, holding a frame of the ``frame_step`` grid,
    the same on every row of a video. Returns the rows whose clip is usable."""
    n = table.num_rows
    usable = np.ones(n, dtype=bool)
    if not _has_clips(table):
        return usable
    for col in CLIP_COLUMNS:
        if col not in table.column_names or pa.types.is_null(table[col].type):
            continue
        arr = table[col]
        if not pa.types.is_integer(arr.type):
            errors.add(-1, col, f"must be an integer column (or null; floats only when whole), got {arr.type}")
            return np.zeros(n, dtype=bool)
        neg = _np(pc.less(pc.cast(arr, pa.int64(), safe=False), 0), False)
        errors.add_mask(neg, col, lambda r, a=arr, c=col: f"{c} {a[r].as_py()} must be >= 0")
        usable &= ~neg
    start, end = clip_bounds(table)
    both = (start >= 0) & (end >= 0)
    reversed_ = both & (start > end)
    errors.add_mask(reversed_, "end_frame", lambda r: f"end_frame {end[r]} is before start_frame {start[r]} (the clip "
                                                      f"is start_frame..end_frame, both inclusive)")
    first = -(-np.maximum(start, 0) // frame_step) * frame_step
    empty = usable & ~reversed_ & (end >= 0) & (first > end)
    errors.add_mask(empty, "end_frame", lambda r: f"the clip {start[r] if start[r] >= 0 else 0}–{end[r]} (end_frame "
                                                  f"inclusive) holds no frame of the data.frame_step={frame_step} grid "
                                                  f"(frames 0, {frame_step}, {2 * frame_step}, …): nothing to track")
    usable &= ~reversed_ & ~empty
    rows = np.flatnonzero(ok_vid)
    if rows.size:
        video = _np(pc.index_in(table["video_id"], value_set=pc.unique(table["video_id"])), -1)[rows]
        videos, first_pos = np.unique(video, return_index=True)
        lead = rows[first_pos[np.searchsorted(videos, video)]]  # the first row of each row's video
        differ = (start[rows] != start[lead]) | (end[rows] != end[lead])
        vid = table["video_id"]
        for r, r0 in zip(rows[differ], lead[differ]):
            errors.add(int(r), "start_frame", f"video {vid[int(r)].as_py()!r} has {_clip_text(start[r], end[r])} here "
                                              f"but {_clip_text(start[r0], end[r0])} in row {r0} (a video's rows must "
                                              f"agree on its clip)")
            usable[r] = False
    return usable


def _check_on_grid(table: pa.Table, rows: np.ndarray, frame_step: int, errors: _Errors) -> None:
    """A prompt (the ``rows``) must be on a tracked frame: on the ``frame_step`` grid and inside its row's clip; the
    refusal names the nearest tracked frames."""
    if "frame_idx" not in table.column_names or not pa.types.is_integer(table["frame_idx"].type) or (
            frame_step == 1 and not _has_clips(table)):
        return
    frame = table["frame_idx"]
    rows = rows & _np(frame.is_valid(), False) & _np(pc.greater_equal(frame, 0), False)
    frames = _np(pc.cast(frame, pa.int64(), safe=False), 0).astype(np.int64)
    start, end = clip_bounds(table)
    first = -(-np.maximum(start, 0) // frame_step) * frame_step
    off = rows & ((frames % frame_step != 0) | (frames < first) | ((end >= 0) & (frames > end)))

    def reason(r: int) -> str:
        grid = FrameGrid(frame_step, int(start[r]) if start[r] >= 0 else None, int(end[r]) if end[r] >= 0 else None)
        near = ", ".join(str(f) for f in grid.nearest(int(frames[r])))
        where = "outside the clip" if frames[r] < first[r] or (end[r] >= 0 and frames[r] > end[r]) else "not sampled"
        return f"frame {frames[r]} is {where} ({grid.describe()}); nearest sampled frames: {near}"

    errors.add_mask(off, "frame_idx", reason)


def validate(table: pa.Table, mode: str = "manifest", frame_step: int = 1) -> tuple[list[RowError], np.ndarray]:
    """Every problem of every row, and the per-row usable-video_id flags. ``mode`` (``data.prompts``): "manifest":
    every row is a prompt; "auto": only the video columns are required and checked, prompt columns are ignored;
    "manifest+auto": a video-only row (``video_only_rows``) lists its video for discovery, every other row is a
    prompt checked as in "manifest", and obj_id/frame_idx are not required columns. In every mode a video's clip
    (``CLIP_COLUMNS``) is checked, and prompts must lie on the frames tracked with ``frame_step`` (``data.frame_step``)
    inside their clip."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    errors = _Errors()
    required = REQUIRED if mode == "manifest" else REQUIRED[:2]
    missing = [c for c in required if c not in table.column_names]
    for c in missing:
        hint = "" if c in REQUIRED[:2] else " (a manifest of videos only needs prompts=manifest+auto or prompts=auto)"
        errors.add(-1, c, "required column missing" + hint)
    if missing:
        return errors.items, np.zeros(table.num_rows, dtype=bool)
    if mode == "manifest+auto":  # all-null id columns (as pandas writes them) are as good as absent there
        table = table.drop_columns([c for c in REQUIRED[2:] if c in table.column_names
                                    and pa.types.is_null(table.schema.field(c).type)])
    ok_vid = _check_ids(table, errors)
    if pa.types.is_string(table["video_uri"].type) or pa.types.is_large_string(table["video_uri"].type):
        _check_uri_consistency(table, ok_vid, errors)
    clip_ok = _check_clips(table, ok_vid, frame_step, errors)
    if mode != "auto":
        listed = video_only_rows(table)
        if mode == "manifest":
            errors.add_mask(listed, "obj_id", _VIDEO_ONLY)
        prompt_errors = _Errors(rows=~listed)  # a video-only row is not a prompt: its empty prompt is no error
        _check_prompt_ids(table, prompt_errors)
        has_points, _ = _check_points(table, prompt_errors)
        has_box = _check_box(table, prompt_errors)
        has_mask = _check_mask(table, prompt_errors)
        _check_kinds(table, has_points, has_box, has_mask, prompt_errors)
        _check_duplicates(table, ok_vid & ~listed, prompt_errors)
        _check_on_grid(table, clip_ok & ~listed, frame_step, prompt_errors)
        errors.items += prompt_errors.items
    errors.items.sort(key=lambda e: e.row)
    return errors.items, ok_vid


def check_protocols(table: pa.Table, column: str, data_root: str | None, protocols: Sequence[str],
                    errors: _Errors) -> None:
    """Every URI of ``column`` (relative ones under ``data_root``) may only use the allowed fsspec protocols: a
    manifest must not make the job fetch arbitrary URLs with its own network and credentials."""
    col = table[column]
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return
    root = uri_protocols(data_root) if data_root else ["file"]
    bad = {}
    for u in pc.unique(col).to_pylist():
        if not u:
            continue
        used = uri_protocols(u) if "://" in u else root
        refused = sorted({p for p in used if p not in protocols})
        if refused:
            bad[u] = refused
    if bad:
        hit = _np(pc.is_in(col, value_set=pa.array(sorted(bad), col.type)), False)
        errors.add_mask(hit, column, lambda r: f"protocol {', '.join(bad[col[r].as_py()])} is not allowed "
                        f"(allowed: {', '.join(protocols)}; see data.protocols)")


@without_cyclic_gc
def load_manifest(uri: str, data_root: str | None = None, storage_options: dict | None = None,
                  on_invalid: str = "fail", protocols: Sequence[str] = DEFAULT_PROTOCOLS,
                  retry_s: float = RETRY_S, mode: str = "manifest", frame_step: int = 1) -> ManifestPlan:
    """Read, validate and plan a manifest. ``mode`` (``data.prompts``): "manifest" needs prompt rows; "auto" only
    video_id/video_uri (any prompt columns are ignored; objects are discovered); "manifest+auto" both, and a video
    listed only by video-only rows (every prompt column null) is planned as in "auto".
    ``on_invalid``: "fail" raises ManifestError listing every bad row;
    "drop_video" drops the videos with bad rows (see ``plan.dropped``) and plans the rest. ``protocols``: the
    fsspec protocols video URIs may use. ``frame_step`` (``data.frame_step``): every k-th frame is tracked, so
    prompts must lie on that grid (and in their video's clip). ManifestReadError when it cannot be read at all."""
    if on_invalid not in ("fail", "drop_video"):
        raise ValueError(f"on_invalid must be 'fail' or 'drop_video', got {on_invalid!r}")
    table = read_manifest_table(uri, storage_options, retry_s)
    pool = pa.default_memory_pool()
    pool.release_unused()  # decoding's scratch memory: numpy's arrays below cannot reuse Arrow's free pages
    errors, ok_vid = validate(table, mode, frame_step)
    pool.release_unused()
    if "video_uri" in table.column_names:
        extra = _Errors()
        check_protocols(table, "video_uri", data_root, protocols, extra)
        errors = sorted(errors + extra.items, key=lambda e: e.row)
    dropped: dict[str, list[RowError]] = {}
    keep = np.ones(table.num_rows, dtype=bool)
    if errors:
        if on_invalid == "fail" or any(e.row < 0 for e in errors):
            raise ManifestError(uri, errors)
        vids = table["video_id"].to_pylist()
        bad_vids = set()
        for e in errors:
            key = vids[e.row] or ""
            dropped.setdefault(key, []).append(e)
            bad_vids.add(key)
        bad_set = pa.array(sorted(bad_vids), table["video_id"].type)
        keep = ok_vid & ~_np(pc.is_in(table["video_id"], value_set=bad_set), True)
    table = table.append_column("__row", pa.array(np.arange(table.num_rows)))
    if not keep.all():
        table = table.filter(pa.array(keep))
    return ManifestPlan(tasks=build_tasks(table, data_root, storage_options, mode, frame_step), dropped=dropped,
                        num_rows=int(keep.size))


_GLOB_CHARS = "*?["


def list_videos(pattern: str, storage_options: dict | None = None, protocols: Sequence[str] = DEFAULT_PROTOCOLS,
                frame_step: int = 1) -> ManifestPlan:
    """``data.videos`` (``prompts=auto`` without a manifest): one prompt-less task per video file matching a glob
    (``s3://bucket/clips/*.mp4``) or under a prefix (``s3://bucket/clips/``: every file there). A video's id is its
    file name without the extension; two files with the same id are refused (ManifestError), as is a protocol
    outside ``protocols``. Every ``frame_step``-th frame is tracked. ManifestReadError when nothing can be listed or
    nothing matches."""
    glob = pattern if any(c in pattern for c in _GLOB_CHARS) else pattern.rstrip("/") + "/*"
    try:
        fs, path = filesystem(glob, storage_options)
        found = sorted(p for p in fs.glob(path) if not fs.isdir(p))
    except Exception as exc:  # noqa: BLE001 - any backend's error: one line naming the pattern
        raise ManifestReadError(f"data.videos={pattern}: cannot list ({type(exc).__name__}: {exc})") from exc
    if not found:
        raise ManifestReadError(f"data.videos={pattern}: no video files match")
    uris = [p if "://" not in pattern else fs.unstrip_protocol(p) for p in found]
    ids = [re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(p))[0]) for p in found]
    table = pa.table({"video_id": pa.array(ids, pa.string()), "video_uri": pa.array(uris, pa.string())})
    errors = _Errors()
    first: dict[str, str] = {}
    for row, (v, u) in enumerate(zip(ids, uris)):
        if first.setdefault(v, u) != u:
            errors.add(row, "video_id", f"{u} and {first[v]} both name video {v!r}")
        if not usable_video_id(v):
            errors.add(row, "video_id", f"{u}: its file name gives the id {_shown(v)}, not usable in output keys: "
                                        f"{VIDEO_ID_RULE}")
    check_protocols(table, "video_uri", None, protocols, errors)
    if errors.items:
        raise ManifestError(pattern, errors.items)
    table = table.append_column("__row", pa.array(np.arange(table.num_rows)))
    return ManifestPlan(tasks=build_tasks(table, None, storage_options, "auto", frame_step), num_rows=table.num_rows)
