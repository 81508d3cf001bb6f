"""Image manifest (Parquet, one row per object): read, validate every row, and plan the valid ones as image tasks.

Checked as the video manifest is (``pipeline.plan.manifest``, whose column checks it shares): vectorised with
pyarrow/numpy, every bad row named at once (row, column, reason) before any model work. Image rows differ from video
rows in three ways: there is no frame; a mask may come with points or a box (it is a dense prompt beside them, not
the output); and ``category_id`` is carried to the COCO output. With ``prompts=auto`` only ``image_id`` and
``image_uri`` are read (one row per image is enough; prompt columns are ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.storage import uri_protocols
from pipeline.plan.image_tasks import ImageTask, plan_image_tasks
from pipeline.plan.manifest import (DEFAULT_PROTOCOLS, RETRY_S, ManifestError, ManifestReadError, RowError, _check_box,
                                    _check_mask, _check_points, _Errors, _np, check_protocols, read_manifest_table)

MODES = ("manifest", "auto")
# The contract types (DESIGN.md, "Image manifest"); readers also accept other int/float widths and large types.
IMAGE_MANIFEST_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("image_uri", pa.string()),
    ("obj_id", pa.int64()),
    ("points", pa.list_(pa.list_(pa.float64()))),
    ("point_labels", pa.list_(pa.int32())),
    ("box", pa.list_(pa.float64())),
    ("mask", pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])),
    ("category_id", pa.int64()),
])

__all__ = ["IMAGE_MANIFEST_SCHEMA", "ImagePlan", "ManifestError", "ManifestReadError", "load_image_manifest",
           "validate_images"]


@dataclass
class ImagePlan:
    """The manifest's images as tasks (``images_per_task`` images each, in image_id order)."""

    tasks: list[ImageTask]
    num_images: int
    num_objects: int


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _check_ids(table: pa.Table, errors: _Errors) -> None:
    """image_id / image_uri present and non-empty; one image_uri per image_id."""
    for col in ("image_id", "image_uri"):
        arr = table[col]
        if not _is_string(arr.type):
            errors.add(-1, col, f"must be string, got {arr.type}")
            continue
        errors.add_mask(_np(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0), True), col,
                        "missing or empty")
    if not (_is_string(table["image_id"].type) and _is_string(table["image_uri"].type)):
        return
    first: dict[str, tuple[str, int]] = {}
    ids, uris = table["image_id"].to_pylist(), table["image_uri"].to_pylist()
    for row, (i, u) in enumerate(zip(ids, uris)):
        if i is None or u is None:
            continue
        seen = first.setdefault(i, (u, row))
        if seen[0] != u:
            errors.add(row, "image_uri", f"image {i!r} has image_uri {u!r} here but {seen[0]!r} in row {seen[1]}")


def _check_objects(table: pa.Table, errors: _Errors) -> None:
    """obj_id: an integer >= 0, once per image; category_id (optional): an integer >= 0."""
    if "obj_id" not in table.column_names:
        errors.add(-1, "obj_id", "required column missing (a manifest of images only needs prompts=auto)")
        return
    arr = table["obj_id"]
    if not pa.types.is_integer(arr.type):
        errors.add(-1, "obj_id", f"must be an integer column, got {arr.type}")
        return
    null = _np(arr.is_null(), True)
    errors.add_mask(null, "obj_id", "missing")
    errors.add_mask(~null & _np(pc.less(arr, 0), False), "obj_id", lambda r: f"obj_id {arr[r].as_py()} must be >= 0")
    if "category_id" in table.column_names:
        cat = table["category_id"]
        if not pa.types.is_integer(cat.type):
            errors.add(-1, "category_id", f"must be an integer column, got {cat.type}")
        else:
            errors.add_mask(_np(pc.less(cat, 0), False), "category_id",
                            lambda r: f"category_id {cat[r].as_py()} must be >= 0")
    if not _is_string(table["image_id"].type):
        return
    seen: dict[tuple[str, int], int] = {}
    for row, key in enumerate(zip(table["image_id"].to_pylist(), arr.to_pylist())):
        if key[0] is None or key[1] is None:
            continue
        if key in seen:
            errors.add(row, "obj_id", f"second row for image {key[0]!r} object {key[1]} (first in row {seen[key]})")
        else:
            seen[key] = row


def validate_images(table: pa.Table, mode: str = "manifest") -> list[RowError]:
    """Every problem of every row; ``mode`` "auto" checks only the image columns."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    errors = _Errors()
    missing = [c for c in ("image_id", "image_uri") if c not in table.column_names]
    for c in missing:
        errors.add(-1, c, "required column missing")
    if missing:
        return errors.items
    _check_ids(table, errors)
    if mode == "manifest":
        _check_objects(table, errors)
        has_points, _ = _check_points(table, errors)
        has_box = _check_box(table, errors)
        has_mask = _check_mask(table, errors)
        errors.add_mask(~has_points & ~has_box & ~has_mask, "points",
                        "row has no prompt (needs points, a box or a mask, or any of them together)")
    errors.items.sort(key=lambda e: e.row)
    return errors.items


def load_image_manifest(uri: str, data_root: str | None = None, storage_options: dict | None = None,
                        images_per_task: int = 64, protocols: Sequence[str] = DEFAULT_PROTOCOLS,
                        retry_s: float = RETRY_S, mode: str = "manifest") -> ImagePlan:
    """Read, validate and plan an image manifest; ManifestError lists every bad row, ManifestReadError when it
    cannot be read at all."""
    table = read_manifest_table(uri, storage_options, retry_s)
    if "category_id" in table.column_names and pa.types.is_null(table.schema.field("category_id").type):
        table = table.drop_columns(["category_id"])
    errors = _Errors()
    errors.items = validate_images(table, mode)
    if "image_uri" in table.column_names:
        check_protocols(table, "image_uri", data_root, protocols, errors)
    if errors.items:
        raise ManifestError(uri, sorted(errors.items, key=lambda e: e.row))
    if mode == "auto":
        table = table.select(["image_id", "image_uri"]).group_by(["image_id", "image_uri"]).aggregate([])
    tasks = plan_image_tasks(table, data_root, images_per_task, mode)
    num_objects = 0 if mode == "auto" else table.num_rows
    return ImagePlan(tasks, int(np.sum([t.num_images for t in tasks])), num_objects)
