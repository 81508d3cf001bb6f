"""Image manifest from a COCO detection file: boxes become box prompts, categories and ids carried."""

from __future__ import annotations

import json

import pytest

from pipeline.dataset.coco_manifest import coco_manifest, image_manifest_bytes
from pipeline.plan.image_manifest import load_image_manifest

COCO_DOC = {
    "images": [{"id": 42, "file_name": "a.jpg", "height": 40, "width": 50},
               {"id": 7, "file_name": "sub/b.jpg", "height": 30, "width": 30},
               {"id": 9, "file_name": "empty.jpg", "height": 30, "width": 30}],
    "annotations": [
        {"id": 100, "image_id": 42, "bbox": [5, 6, 10, 20], "category_id": 3, "iscrowd": 0},
        {"id": 101, "image_id": 42, "bbox": [1, 1, 0, 4], "category_id": 3},
        {"id": 102, "image_id": 7, "bbox": [2.5, 3, 4, 5], "category_id": 1},
        {"id": 103, "image_id": 7, "bbox": [0, 0, 30, 30], "category_id": 1, "iscrowd": 1},
        {"id": 104, "image_id": 8, "bbox": [0, 0, 3, 3], "category_id": 1},
    ],
    "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
}


def test_boxes_become_prompts(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(COCO_DOC))
    made = coco_manifest(str(path), "s3://bucket/images")
    assert made.rows[0] == {"image_id": "42", "image_uri": "s3://bucket/images/a.jpg", "obj_id": 100,
                            "points": None, "point_labels": None, "box": [5.0, 6.0, 15.0, 26.0], "mask": None,
                            "category_id": 3}
    assert made.rows[1]["image_uri"] == "s3://bucket/images/sub/b.jpg" and made.rows[1]["box"] == [2.5, 3.0, 6.5, 8.0]
    assert made.num_images == 2
    assert made.skipped == {"box without area": 1, "crowd annotation": 1, "image_id not among the images": 1}
    manifest = tmp_path / "images.parquet"
    manifest.write_bytes(image_manifest_bytes(made.rows))
    plan = load_image_manifest(str(manifest), protocols=("file", "s3"))
    assert plan.num_images == 2 and plan.num_objects == 2


def test_not_coco_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a COCO instances file"):
        coco_manifest(str(path), None)
    path.write_text("{nope")
    with pytest.raises(ValueError, match="is not JSON"):
        coco_manifest(str(path), None)
