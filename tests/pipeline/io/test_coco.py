"""COCO instances output: pycocotools loads it as ground truth and as results, and COCOeval (segm) runs on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline.io.coco import annotation_records, coco_image_id, image_record, instances, instances_bytes
from pipeline.io.rle import encode_rles


def _masks(h: int, w: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    out = np.zeros((len(boxes), h, w), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        out[i, y0:y1, x0:x1] = True
    return out


def test_image_ids_keep_coco_integers():
    assert coco_image_id("397133") == 397133 and coco_image_id("0") == 0
    assert coco_image_id("007") == "007" and coco_image_id("cat_1") == "cat_1"


def test_annotations_bbox_area_and_scores():
    masks = _masks(20, 30, [(3, 4, 10, 9), (0, 0, 0, 0)])
    anns = annotation_records("5", [7, 8], [3, None], encode_rles(masks), [0.9, 0.1], [0.95, 0.0])
    assert anns[0]["bbox"] == [3.0, 4.0, 7.0, 5.0] and anns[0]["area"] == 35
    assert anns[0]["image_id"] == 5 and anns[0]["obj_id"] == 7 and anns[0]["category_id"] == 3
    assert anns[0]["score"] == pytest.approx(0.9) and anns[0]["stability_score"] == pytest.approx(0.95)
    assert anns[1]["area"] == 0 and anns[1]["bbox"] == [0.0, 0.0, 0.0, 0.0] and anns[1]["category_id"] == 1


def test_pycocotools_loads_it_and_cocoeval_runs(tmp_path):
    """Ground truth of two images, predictions a pixel off: loaded by COCO (as a file), evaluated by COCOeval."""
    sizes = {"1": (40, 50), "2": (30, 30)}
    gt_boxes = {"1": [(5, 5, 20, 25), (25, 10, 45, 35)], "2": [(2, 3, 20, 28)]}
    gt_images, gt_anns, pred_anns = [], [], []
    for image_id, (h, w) in sizes.items():
        gt_images.append(image_record(image_id, f"{image_id}.jpg", h, w))
        masks = _masks(h, w, gt_boxes[image_id])
        gt_anns += annotation_records(image_id, range(len(masks)), [1, 2][:len(masks)], encode_rles(masks),
                                      [1.0] * len(masks), [1.0] * len(masks))
        shifted = _masks(h, w, [(x0 + 1, y0, x1 + 1, y1) for x0, y0, x1, y1 in gt_boxes[image_id]])
        pred_anns += annotation_records(image_id, range(len(masks)), [1, 2][:len(masks)], encode_rles(shifted),
                                        [0.9] * len(masks), [0.8] * len(masks))
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "annotations.json"
    gt_path.write_bytes(instances_bytes(instances(gt_images, gt_anns)))
    pred_path.write_bytes(instances_bytes(instances(list(gt_images), pred_anns)))

    predicted = COCO(str(pred_path))  # our output loads as a dataset (pseudo-labels) ...
    assert len(predicted.getAnnIds()) == 3 and sorted(predicted.getImgIds()) == [1, 2]
    assert {c["id"] for c in json.loads(pred_path.read_text())["categories"]} == {1, 2}
    ground_truth = COCO(str(gt_path))
    results = ground_truth.loadRes(json.loads(pred_path.read_text())["annotations"])  # ... and as results
    evaluation = COCOeval(ground_truth, results, iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[1] == pytest.approx(1.0)  # AP@0.5: every mask matched
    assert 0.0 < evaluation.stats[0] <= 1.0
