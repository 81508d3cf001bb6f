"""COCO instances files: the image job's output (``annotations.json``) and its per-task parts.

An annotation holds ``image_id``, ``obj_id``, ``category_id``, ``segmentation`` (COCO RLE), ``bbox`` (the mask's
tight box, XYWH, pycocotools' ``toBbox``), ``area`` (its pixel count), ``score`` (the predicted IoU of the kept mask),
``stability_score`` and ``iscrowd`` 0, so the file loads with ``pycocotools.COCO`` both as ground truth (pseudo-labels)
and, through ``loadRes``, as detections for ``COCOeval``.

Image ids: the manifest's ``image_id`` is a string; a decimal integer one (as ``jobs.make_manifest`` writes from a
COCO file) is written as that integer, so the output evaluates against the source dataset's ground truth; any other
stays a string (pycocotools keys images by any hashable id). Rows without ``category_id`` get category 1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from pycocotools import mask as mask_utils

from pipeline.io.rle import coco_form, rle_areas

DEFAULT_CATEGORY = 1
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,17}")


def coco_image_id(image_id: str) -> int | str:
    """The COCO ``id`` of a manifest image: the integer a decimal string spells, else the string."""
    return int(image_id) if _DECIMAL.fullmatch(image_id) else image_id


def image_record(image_id: str, file_name: str, height: int, width: int) -> dict:
    """One entry of ``images``."""
    return {"id": coco_image_id(image_id), "file_name": file_name, "height": int(height), "width": int(width)}


def annotation_records(image_id: str, obj_ids: Sequence[int], category_ids: Sequence[int | None],
                       rles: Sequence[dict], scores: Sequence[float], stability: Sequence[float]) -> list[dict]:
    """The annotations of one image (no ``id`` yet: :func:`instances` numbers them), bbox and area from the RLEs."""
    if not rles:
        return []
    boxes = mask_utils.toBbox([coco_form(r) for r in rles]).reshape(-1, 4).tolist()
    areas = rle_areas(rles).tolist()
    cid = coco_image_id(image_id)
    return [{"image_id": cid, "obj_id": int(o), "category_id": DEFAULT_CATEGORY if c is None else int(c),
             "segmentation": r, "bbox": [float(v) for v in b], "area": int(a), "score": float(s),
             "stability_score": float(t), "iscrowd": 0}
            for o, c, r, b, a, s, t in zip(obj_ids, category_ids, rles, boxes, areas, scores, stability)]


def instances(images: Iterable[dict], annotations: Iterable[dict], info: dict | None = None) -> dict:
    """A COCO instances file: images sorted by id, annotations numbered 1.. in image order, one category per id
    used (named by its number)."""
    imgs = sorted(images, key=lambda i: (isinstance(i["id"], str), i["id"]))
    anns = sorted(annotations, key=lambda a: (isinstance(a["image_id"], str), a["image_id"], a["obj_id"]))
    for number, ann in enumerate(anns, start=1):
        ann["id"] = number
    categories = [{"id": c, "name": str(c)} for c in sorted({a["category_id"] for a in anns})]
    out = {"images": imgs, "annotations": anns, "categories": categories}
    if info:
        out["info"] = info
    return out


def instances_bytes(doc: dict) -> bytes:
    """The file's bytes (compact JSON)."""
    return json.dumps(doc, separators=(",", ":")).encode()

