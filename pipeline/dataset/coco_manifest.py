"""Image manifest from a COCO detection file: every box becomes a box prompt, its category carried.

Input: a COCO instances file (``images`` with ``id``/``file_name``, ``annotations`` with ``image_id``/``bbox`` XYWH/
``category_id``), ground truth or detections in that layout. Each annotation gives one row: ``image_id`` the image's
id as a string, ``image_uri`` its ``file_name`` under ``image_root`` (or as written when no root is given),
``obj_id`` the annotation's ``id`` (its position in the file when it has none), ``box`` ``[x, y, x + w, y + h]``,
``category_id`` carried. Crowd annotations (``iscrowd`` 1: already masks, not one object) and boxes without area are
skipped and counted; images without annotations give no rows.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.storage import join_uri, read_bytes
from pipeline.plan.image_manifest import IMAGE_MANIFEST_SCHEMA


@dataclass
class CocoRows:
    """Manifest rows made from a COCO file and what was skipped (reason → count)."""

    rows: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return len({r["image_id"] for r in self.rows})


def rows_from_coco(doc: dict, image_root: str | None) -> CocoRows:
    """The manifest rows of a parsed COCO instances file; ValueError when it is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(
            doc.get("annotations"), list):
        raise ValueError("not a COCO instances file (needs 'images' and 'annotations' lists)")
    files = {}
    for img in doc["images"]:
        if "id" not in img or "file_name" not in img:
            raise ValueError(f"image entry without id or file_name: {json.dumps(img)[:200]}")
        files[img["id"]] = img["file_name"]
    out = CocoRows([])
    for position, ann in enumerate(doc["annotations"]):
        reason = _skip_reason(ann, files)
        if reason:
            out.skipped[reason] = out.skipped.get(reason, 0) + 1
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        name = files[ann["image_id"]]
        out.rows.append({
            "image_id": str(ann["image_id"]),
            "image_uri": join_uri(image_root, name) if image_root else name,
            "obj_id": int(ann.get("id", position)),
            "points": None, "point_labels": None,
            "box": [x, y, x + w, y + h],
            "mask": None,
            "category_id": None if ann.get("category_id") is None else int(ann["category_id"]),
        })
    return out


def _skip_reason(ann: dict, files: dict) -> str | None:
    if ann.get("image_id") not in files:
        return "image_id not among the images"
    if ann.get("iscrowd", 0):
        return "crowd annotation"
    box = ann.get("bbox")
    if not isinstance(box, list) or len(box) != 4:
        return "no [x, y, w, h] bbox"
    if not (float(box[2]) > 0 and float(box[3]) > 0):
        return "box without area"
    return None


def coco_manifest(coco_uri: str, image_root: str | None, storage_options: dict | None = None) -> CocoRows:
    """Rows of the COCO file at ``coco_uri`` (any fsspec URI); ValueError names what is wrong with it."""
    try:
        doc = json.loads(read_bytes(coco_uri, storage_options))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{coco_uri} is not JSON ({exc})") from exc
    return rows_from_coco(doc, image_root)


def image_manifest_bytes(rows: list[dict]) -> bytes:
    """The image manifest as Parquet file bytes (the contract schema)."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=IMAGE_MANIFEST_SCHEMA), buf)
    return buf.getvalue()
