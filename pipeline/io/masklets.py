"""Masklets of one video (one mask per object per output frame) and their file formats.

Masks are held as COCO RLE (``{"size": [H, W], "counts": str}``, pycocotools' compressed string form) so a
masklet costs a few hundred bytes per object-frame, never a bitmap. Frames keep the video's numbering whatever was
tracked: with ``data.frame_step=4`` and a clip from frame 300, ``frame_indices`` is 300, 304, … and ``frame_count``
(``video_frame_count``) the whole video's count: the frames that decode, and ``header_frame_count``
(``video_header_frame_count``, written only then) what the container's header claimed when that differs. Two on-disk
forms:

* SA-V JSON (``to_sav_json``): the SA-V annotation layout plus ``frame_indices``, ``object_scores`` and
  ``provenance``; ``masklet_first_appeared_frame`` follows SA-V and is a position in the ``masklet`` list
  (equal to the frame index when every frame is output), -1 for an object whose mask is never non-empty.
  Masklets with ``types`` (the automatic modes) also carry SA-V's auto-layout fields: per frame and object
  ``masklet_stability_score``, and per object ``masklet_type`` ("auto" or "manual"), ``masklet_size_abs`` (mean
  area over the frames where it is visible), ``masklet_size_rel`` (that over the frame area), ``masklet_size_bucket``
  (COCO's small < 32², medium < 96², large), ``masklet_frame_count`` (frames in ``masklet``),
  ``masklet_visibility_changes`` (visible ↔ invisible transitions) and ``masklet_edited_frame_count`` (0).
* Parquet (``to_parquet_table``): one row per object-frame; video-level fields live in the schema metadata.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.rle import encode_rles, rle_areas
from pipeline.io.storage import read_bytes

_PARQUET_META_KEY = b"sam2.masklets"


class MaskletFormatError(ValueError):
    """Bytes that are not a masklet file (SA-V JSON or ours, Parquet of ours): the message says what is wrong."""


_SAV_FIELDS = ("video_id", "video_frame_count", "video_height", "video_width", "masklet_id", "masklet")


@dataclass
class Masklets:
    """Dense masklets of one video: ``rles[i][j]`` is object ``obj_ids[j]`` on frame ``frame_indices[i]`` (the
    video's frame numbers, increasing; every tracked frame), ``frame_count`` the video's frames."""

    video_id: str
    frame_count: int
    height: int
    width: int
    obj_ids: list[int]
    frame_indices: list[int]
    rles: list[list[dict]]
    scores: list[list[float]]
    first_appeared: list[int]
    provenance: dict = field(default_factory=dict)
    stability: list[list[float]] | None = None  # per frame and object, SA-V's masklet_stability_score
    types: list[str] | None = None  # per object "auto" | "manual" (automatic modes); None: a prompted job
    header_frame_count: int | None = None  # the header's claim, when it is not the frames that decode


def masklet_statistics(m: Masklets) -> dict:
    """SA-V's per-object masklet statistics (size, frame count, visibility changes), from the RLEs frame by frame."""
    n = len(m.obj_ids)
    total = np.zeros(n, dtype=np.float64)
    visible = np.zeros(n, dtype=np.int64)
    changes = np.zeros(n, dtype=np.int64)
    last: np.ndarray | None = None
    for frame in m.rles:
        areas = rle_areas(frame).astype(np.float64)
        seen = areas > 0
        total += areas
        visible += seen
        if last is not None:
            changes += seen != last
        last = seen
    size_abs = np.divide(total, visible, out=np.zeros(n), where=visible > 0)
    size_rel = size_abs / float(m.height * m.width)
    buckets = ["small" if a < 32 ** 2 else "medium" if a < 96 ** 2 else "large" for a in size_abs]
    return {"masklet_size_rel": size_rel.tolist(), "masklet_size_abs": size_abs.tolist(),
            "masklet_size_bucket": buckets, "masklet_visibility_changes": changes.tolist(),
            "masklet_frame_count": [len(m.rles)] * n, "masklet_edited_frame_count": [0] * n}


class MaskletBuilder:
    """Collects per-frame masks of a video in any frame order and builds ``Masklets`` sorted by frame.

    Masks are RLE-encoded as they arrive, so memory holds only the compressed masklets.
    """

    def __init__(self, video_id: str, frame_count: int, height: int, width: int, obj_ids: Sequence[int],
                 provenance: dict | None = None) -> None:
        self.video_id = video_id
        self.frame_count = frame_count
        self.height = height
        self.width = width
        self.obj_ids = [int(o) for o in obj_ids]
        self.provenance = dict(provenance or {})
        self._frames: dict[int, tuple[list[dict], list[float], list[bool]]] = {}

    def add_frame(self, frame_idx: int, masks: np.ndarray, scores: Sequence[float]) -> None:
        """Record boolean masks [n_obj, H, W] (order of ``obj_ids``) and object scores of one frame."""
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (len(self.obj_ids), self.height, self.width):
            raise ValueError(f"video {self.video_id} frame {frame_idx}: masks of shape {masks.shape}, expected "
                             f"{(len(self.obj_ids), self.height, self.width)}")
        present = masks.reshape(len(self.obj_ids), -1).any(axis=1)
        self.add_rles(frame_idx, encode_rles(masks), scores, present.tolist())

    def add_rles(self, frame_idx: int, rles: Sequence[dict], scores: Sequence[float],
                 present: Sequence[bool]) -> None:
        """Record one frame already encoded: COCO RLEs, object scores and whether each mask is non-empty."""
        if not len(rles) == len(scores) == len(present) == len(self.obj_ids):
            raise ValueError(f"video {self.video_id} frame {frame_idx}: {len(rles)} masks, {len(scores)} scores "
                             f"for {len(self.obj_ids)} objects")
        self._frames[int(frame_idx)] = (list(rles), [float(s) for s in scores], list(present))

    def build(self) -> Masklets:
        """The masklets over every frame added so far, in increasing frame order."""
        order = sorted(self._frames)
        first = [-1] * len(self.obj_ids)
        for pos, f in enumerate(order):
            for j, seen in enumerate(self._frames[f][2]):
                if seen and first[j] < 0:
                    first[j] = pos
        return Masklets(
            video_id=self.video_id, frame_count=self.frame_count, height=self.height, width=self.width,
            obj_ids=list(self.obj_ids), frame_indices=order, rles=[self._frames[f][0] for f in order],
            scores=[self._frames[f][1] for f in order], first_appeared=first, provenance=self.provenance,
        )


def to_sav_json(m: Masklets) -> dict:
    """SA-V annotation dict of the masklets (JSON-serialisable)."""
    d = {
        "video_id": m.video_id,
        "video_frame_count": m.frame_count,
        "video_height": m.height,
        "video_width": m.width,
        "masklet_id": list(m.obj_ids),
        "masklet": m.rles,
        "masklet_first_appeared_frame": list(m.first_appeared),
        "masklet_num": len(m.obj_ids),
        "frame_indices": list(m.frame_indices),
        "object_scores": m.scores,
        "provenance": m.provenance,
    }
    if m.types is not None:
        d.update(masklet_statistics(m), masklet_type=list(m.types), masklet_stability_score=m.stability)
    if m.header_frame_count is not None:
        d["video_header_frame_count"] = m.header_frame_count
    return d


def from_sav_json(d: dict) -> Masklets:
    """Masklets from an SA-V style dict; official SA-V files (no frame_indices/scores) load too.
    MaskletFormatError says which field is missing or does not fit."""
    if not isinstance(d, dict):
        raise MaskletFormatError(f"not an SA-V masklet file: the JSON holds a {type(d).__name__}, not an object")
    missing = [k for k in _SAV_FIELDS if k not in d]
    if missing:
        raise MaskletFormatError(f"not an SA-V masklet file: no {', '.join(repr(k) for k in missing)} field"
                                 f"{'s' if len(missing) > 1 else ''}")
    rles = d["masklet"]
    if not isinstance(rles, list) or not isinstance(d["masklet_id"], list):
        raise MaskletFormatError("'masklet' and 'masklet_id' must be lists (per frame, per object)")
    bad = next((i for i, frame in enumerate(rles) if not isinstance(frame, list)
                or len(frame) != len(d["masklet_id"])), None)
    if bad is not None:
        raise MaskletFormatError(f"'masklet' frame {bad} does not hold one mask per object of 'masklet_id' "
                                 f"({len(d['masklet_id'])} objects)")
    if d.get("frame_indices") is not None and len(d["frame_indices"]) != len(rles):
        raise MaskletFormatError(f"'frame_indices' has {len(d['frame_indices'])} entries for {len(rles)} frames "
                                 "of 'masklet'")
    obj_ids = [int(o) for o in d["masklet_id"]]
    frame_indices = d.get("frame_indices")
    if frame_indices is None:
        frame_indices = list(range(len(rles)))
    scores = d.get("object_scores")
    if scores is None:
        scores = [[float("nan")] * len(obj_ids) for _ in rles]
    return Masklets(
        video_id=str(d["video_id"]), frame_count=int(d["video_frame_count"]), height=int(d["video_height"]),
        width=int(d["video_width"]), obj_ids=obj_ids, frame_indices=[int(f) for f in frame_indices], rles=rles,
        scores=scores, first_appeared=[int(f) for f in d.get("masklet_first_appeared_frame", [-1] * len(obj_ids))],
        provenance=d.get("provenance") or {}, stability=d.get("masklet_stability_score"),
        types=d.get("masklet_type"), header_frame_count=d.get("video_header_frame_count"),
    )


def to_parquet_table(m: Masklets) -> pa.Table:
    """One row per object-frame (video_id, frame_idx, obj_id, height, width, counts, score), zstd-friendly."""
    n_obj, n_frames = len(m.obj_ids), len(m.frame_indices)
    counts = [rle["counts"] for frame in m.rles for rle in frame]
    scores = [s for frame in m.scores for s in frame]
    table = pa.table({
        "video_id": pa.array([m.video_id] * (n_obj * n_frames), pa.string()),
        "frame_idx": pa.array(np.repeat(np.asarray(m.frame_indices, dtype=np.int64), n_obj)),
        "obj_id": pa.array(np.tile(np.asarray(m.obj_ids, dtype=np.int64), n_frames)),
        "height": pa.array(np.full(n_obj * n_frames, m.height, dtype=np.int32)),
        "width": pa.array(np.full(n_obj * n_frames, m.width, dtype=np.int32)),
        "counts": pa.array(counts, pa.string()),
        "score": pa.array(scores, pa.float32()),
    })
    if m.stability is not None:
        table = table.append_column("stability", pa.array([s for frame in m.stability for s in frame], pa.float32()))
    meta = {"video_id": m.video_id, "frame_count": m.frame_count, "height": m.height, "width": m.width,
            "obj_ids": m.obj_ids, "frame_indices": m.frame_indices, "first_appeared": m.first_appeared,
            "provenance": m.provenance, "types": m.types}
    if m.header_frame_count is not None:
        meta["header_frame_count"] = m.header_frame_count
    return table.replace_schema_metadata({_PARQUET_META_KEY: json.dumps(meta).encode()})


def from_parquet_table(table: pa.Table) -> Masklets:
    """Masklets from a table written by ``to_parquet_table`` (needs its schema metadata)."""
    raw = (table.schema.metadata or {}).get(_PARQUET_META_KEY)
    if raw is None:
        raise MaskletFormatError("a Parquet table without masklet metadata (not written by this tool)")
    meta = json.loads(raw)
    obj_ids, frame_indices = meta["obj_ids"], meta["frame_indices"]
    h, w = meta["height"], meta["width"]
    pos_f = {f: i for i, f in enumerate(frame_indices)}
    pos_o = {o: j for j, o in enumerate(obj_ids)}
    rles: list[list[Any]] = [[None] * len(obj_ids) for _ in frame_indices]
    scores: list[list[float]] = [[float("nan")] * len(obj_ids) for _ in frame_indices]
    has_stability = "stability" in table.column_names
    stability = [[float("nan")] * len(obj_ids) for _ in frame_indices] if has_stability else None
    cols = table.select(["frame_idx", "obj_id", "counts", "score"] + ["stability"] * has_stability).to_pydict()
    for k, (f, o, c, s) in enumerate(zip(cols["frame_idx"], cols["obj_id"], cols["counts"], cols["score"])):
        i, j = pos_f[f], pos_o[o]
        rles[i][j] = {"size": [h, w], "counts": c}
        scores[i][j] = float(s)
        if stability is not None:
            stability[i][j] = float(cols["stability"][k])
    missing = [(frame_indices[i], obj_ids[j]) for i, row in enumerate(rles) for j, r in enumerate(row) if r is None]
    if missing:
        raise MaskletFormatError(f"video {meta['video_id']}: Parquet masklets lack (frame, obj) rows {missing[:5]}")
    return Masklets(video_id=meta["video_id"], frame_count=meta["frame_count"], height=h, width=w, obj_ids=obj_ids,
                    frame_indices=frame_indices, rles=rles, scores=scores, first_appeared=meta["first_appeared"],
                    provenance=meta["provenance"], stability=stability, types=meta.get("types"),
                    header_frame_count=meta.get("header_frame_count"))


def masklets_to_bytes(m: Masklets, fmt: str) -> bytes:
    """Serialise for a whole-object put: ``sav_json`` → UTF-8 JSON, ``parquet`` → zstd Parquet file."""
    if fmt == "sav_json":
        return json.dumps(to_sav_json(m), separators=(",", ":")).encode()
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(to_parquet_table(m), buf, compression="zstd")
        return buf.getvalue()
    raise ValueError(f"unknown masklet format {fmt!r} (expected 'sav_json' or 'parquet')")


def masklets_from_bytes(data: bytes, fmt: str) -> Masklets:
    """Inverse of ``masklets_to_bytes``; MaskletFormatError says what is wrong with bytes that are not one."""
    if fmt == "sav_json":
        try:
            parsed = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MaskletFormatError(f"not a JSON file ({e})") from None
        return from_sav_json(parsed)
    if fmt == "parquet":
        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowException, OSError) as e:
            raise MaskletFormatError(f"not a Parquet file ({e})") from None
        return from_parquet_table(table)
    raise ValueError(f"unknown masklet format {fmt!r} (expected 'sav_json' or 'parquet')")


def read_masklets(uri: str, storage_options: dict | None = None) -> Masklets:
    """Read a masklet file (``.json`` SA-V or ``.parquet``) from any fsspec URI."""
    if uri.endswith(".json"):
        fmt = "sav_json"
    elif uri.endswith(".parquet"):
        fmt = "parquet"
    else:
        raise ValueError(f"{uri}: masklet file must end in .json or .parquet")
    try:
        return masklets_from_bytes(read_bytes(uri, storage_options), fmt)
    except MaskletFormatError as e:
        raise MaskletFormatError(f"{uri}: {e}") from None
