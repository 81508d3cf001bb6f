"""A synthetic prompt manifest at SA-V scale (~51k videos, ~643k rows), built with vectorised pyarrow in seconds.

Each row prompts one object on its first-appearance frame, with either a COCO RLE mask at SA-V's typical
resolution or one positive click, the mix SA-V-style densification jobs feed the pipeline. Masks are drawn from a
small pool of real RLE strings (ellipses of varied size, encoded with pycocotools), so validation decodes
realistic run lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from pipeline.plan.manifest import MANIFEST_SCHEMA

_MASK_POOL = 64


@dataclass(frozen=True)
class ManifestShape:
    """How many videos and rows, the share of mask prompts, and the video size masks are drawn at."""

    videos: int
    rows: int
    mask_fraction: float
    height: int
    width: int
    seed: int


def _rle_pool(height: int, width: int, rng: np.random.Generator) -> list[str]:
    """RLE ``counts`` strings of ellipses covering roughly 0.1% to 20% of the frame."""
    yy, xx = np.ogrid[0:height, 0:width]
    pool = []
    for _ in range(_MASK_POOL):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        area = rng.uniform(0.001, 0.2) * height * width
        ry = np.sqrt(area / np.pi) * rng.uniform(0.6, 1.6)
        rx = area / (np.pi * ry)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        pool.append(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode())
    return pool


def _objects_per_video(shape: ManifestShape, rng: np.random.Generator) -> np.ndarray:
    """At least one object per video, ``rows`` in total, spread multinomially (mean rows/videos)."""
    if shape.rows < shape.videos:
        raise ValueError(f"need at least one row per video: {shape.rows} rows for {shape.videos} videos")
    return 1 + rng.multinomial(shape.rows - shape.videos, np.full(shape.videos, 1.0 / shape.videos))


def _nullable_lists(values: pa.Array, lengths: np.ndarray, valid: np.ndarray) -> pa.Array:
    """A list array whose row i holds the next ``lengths[i]`` of ``values`` (null where not ``valid``)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(np.where(valid, lengths, 0), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~valid))


def build_table(shape: ManifestShape) -> pa.Table:
    """The manifest as an Arrow table with the contract's column types."""
    rng = np.random.default_rng(shape.seed)
    counts = _objects_per_video(shape, rng)
    n = int(counts.sum())
    video = np.repeat(np.arange(shape.videos), counts)
    ids = np.char.add("sav_", np.char.zfill(np.arange(shape.videos).astype(str), 6))
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    obj_id = np.arange(n) - starts
    frame_idx = np.where(rng.random(n) < 0.8, 0, 4 * rng.integers(1, 75, n))
    is_mask = rng.random(n) < shape.mask_fraction
    is_point = ~is_mask
    npts = int(is_point.sum())
    xy = np.column_stack([rng.uniform(0, shape.width, npts), rng.uniform(0, shape.height, npts)]).ravel()
    points = _nullable_lists(_nullable_lists(pa.array(xy), np.full(npts, 2), np.ones(npts, bool)),
                             np.ones(n, np.int64), is_point)
    labels = _nullable_lists(pa.array(np.ones(npts, np.int32)), np.ones(n, np.int64), is_point)
    pool = pa.array(_rle_pool(shape.height, shape.width, rng))
    size = pa.array(np.tile(np.array([shape.height, shape.width], np.int32), n))
    mask = pa.StructArray.from_arrays(
        [pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), size),
         pool.take(pa.array(rng.integers(0, _MASK_POOL, n)))],
        fields=list(MANIFEST_SCHEMA.field("mask").type), mask=pa.array(~is_mask))
    columns = {
        "video_id": pa.array(ids[video]),
        "video_uri": pa.array(np.char.add(np.char.add("videos/", ids), ".mp4")[video]),
        "obj_id": pa.array(obj_id, pa.int64()),
        "frame_idx": pa.array(frame_idx, pa.int64()),
        "points": points,
        "point_labels": labels,
        "box": pa.nulls(n, MANIFEST_SCHEMA.field("box").type),
        "mask": mask,
        "start_frame": pa.nulls(n, pa.int64()),  # no clips: every video whole
        "end_frame": pa.nulls(n, pa.int64()),
    }
    return pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)


def write_manifest(path: Path, shape: ManifestShape) -> Path:
    """Build and write the manifest as one Parquet file; returns ``path``."""
    pq.write_table(build_table(shape), path)
    return path
