"""Export formats for other tools: YOLO-seg polygons traced from masks (exact pixel coverage), YouTube-VIS JSON,
and the export job over a prefix whose ids are the bundled sample's (0 and 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from pipeline.dataset.export import joined_polygon, mask_polygons, yolo_lines, ytvis_video
from pipeline.io.masklets import Masklets, masklets_to_bytes
from pipeline.io.rle import decode_rle, encode_rles

H, W = 24, 32


def _inside(poly: list[tuple[int, int]], h: int, w: int) -> np.ndarray:
    """Pixel centres inside ``poly`` by the even-odd rule (a horizontal ray to the right)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    inside = np.zeros((h, w), dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1]):
        if y0 == y1:
            continue
        crosses = ((y0 > ys) != (y1 > ys)) & (xs < x0 + (ys - y0) * (x1 - x0) / (y1 - y0))
        inside ^= crosses
    return inside


def _covered(polys: list[list[tuple[int, int]]], h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w), dtype=bool)
    for p in polys:
        out |= _inside(p, h, w)
    return out


def test_polygons_cover_the_mask_exactly() -> None:
    mask = np.zeros((H, W), dtype=bool)
    mask[2:10, 3:12] = True
    mask[4:7, 5:8] = False                   # a hole: filled by the outer polygon
    mask[15:20, 20:30] = True                # a second part, smaller
    mask[12, 14] = mask[13, 15] = True       # two pixels touching at a corner: two parts
    polys = mask_polygons(mask)
    assert len(polys) == 4
    assert [len(p) for p in polys[:2]] == [4, 4]                       # rectangles keep only their corners
    assert sorted(polys[1]) == sorted([(20, 15), (30, 15), (30, 20), (20, 20)])
    assert (_covered(polys, H, W) == ndimage.binary_fill_holes(mask, structure=np.ones((3, 3)))).all()


@pytest.mark.parametrize("seed", range(6))
def test_polygons_of_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((H, W)) < 0.55) if seed % 2 else rng.random((H, W)) < 0.4
    polys = mask_polygons(mask)
    assert (_covered(polys, H, W) == ndimage.binary_fill_holes(mask, structure=np.ones((3, 3)))).all()
    assert mask_polygons(np.zeros((H, W), bool)) == [] and joined_polygon([]) == []


def _clip(obj_ids: tuple[int, ...] = (0, 1)) -> Masklets:
    rles, scores = [], []
    for t in range(3):
        masks = np.zeros((len(obj_ids), H, W), dtype=bool)
        masks[0, 2:6, 2 + t:8 + t] = True
        if t > 0:
            masks[1, 10:20, 10:14] = True
            masks[1, 10:12, 20:22] = True    # the second object has two parts
        rles.append(encode_rles(masks))
        scores.append([0.5 + t, 2.0])
    return Masklets("clip", 3, H, W, list(obj_ids), [0, 1, 2], rles, scores, [0, 1], {"checkpoint": "random"})


def test_yolo_lines_normalised_one_line_per_present_object() -> None:
    m = _clip()
    assert yolo_lines(m, 0).count("\n") == 1                           # object 1 is absent on frame 0
    lines = yolo_lines(m, 1).splitlines()
    assert len(lines) == 2 and all(line.startswith("0 ") for line in lines)
    first = [float(v) for v in lines[0].split()[1:]]
    assert first == pytest.approx([3 / W, 2 / H, 9 / W, 2 / H, 9 / W, 6 / H, 3 / W, 6 / H], abs=1e-6)
    second = [float(v) for v in lines[1].split()[1:]]
    assert len(second) == 2 * (4 + 1 + 4 + 1)                          # two rectangles joined by a bridge
    assert all(0.0 <= v <= 1.0 for v in first + second)


def test_ytvis_video_layout() -> None:
    m = _clip()
    video, anns = ytvis_video(m, 7, 11)
    assert video["id"] == 7 and video["length"] == 3 and video["file_names"][2] == "clip/00002.jpg"
    assert [a["id"] for a in anns] == [11, 12] and [a["sam2_obj_id"] for a in anns] == [0, 1]
    a1 = anns[1]
    assert a1["segmentations"][0] is None and a1["bboxes"][0] is None and a1["areas"][0] is None
    assert a1["bboxes"][1] == [10.0, 10.0, 12.0, 10.0] and a1["areas"][1] == 44
    assert (decode_rle(a1["segmentations"][2]) == decode_rle(m.rles[2][1])).all()
    assert anns[0]["score"] == pytest.approx(1.5)


def test_export_job_every_format_on_sample_ids(tmp_path: Path, run_job) -> None:
    prefix = tmp_path / "run"
    (prefix / "masklets").mkdir(parents=True)
    (prefix / "masklets" / "clip.json").write_bytes(masklets_to_bytes(_clip(), "sav_json"))
    run_job("export", f"prefix={prefix}", "format=davis")
    ids = json.loads((prefix / "export_davis" / "clip" / "object_ids.json").read_text())
    assert ids == {"palette_index": {"1": 0, "2": 1}}
    run_job("export", f"prefix={prefix}", "format=ytvis")
    doc = json.loads((prefix / "export_ytvis" / "annotations.json").read_text())
    assert [v["name"] for v in doc["videos"]] == ["clip"] and len(doc["annotations"]) == 2
    assert doc["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    run_job("export", f"prefix={prefix}", "format=yolo")
    assert sorted(p.name for p in (prefix / "export_yolo" / "clip").iterdir()) == ["00000.txt", "00001.txt",
                                                                                   "00002.txt"]
    proc = run_job("export", f"prefix={prefix}", "format=coco", check=False)
    assert proc.returncode == 2 and "format: must be one of davis, sav_png, ytvis, yolo, got 'coco'" in proc.stdout
