"""The image job's prefix: parts behind done markers, the COCO file per shard, and an overwrite that clears them."""

from __future__ import annotations

import json

import pytest

from pipeline.io.image_prefix import ImageSink, annotations_name
from pipeline.records import ProvenanceError, WorkerResult
from pipeline.specs import OutputSpec

PROV = {"model": "sam2.1_hiera_tiny", "image_size": 128, "checkpoint": "random", "checkpoint_sha256": None,
        "session": {"images": True}}


def _part(image_id: str) -> dict:
    rle = {"size": [2, 2], "counts": "04"}
    return {"images": [{"id": image_id, "file_name": f"{image_id}.png", "height": 2, "width": 2}],
            "annotations": [{"image_id": image_id, "obj_id": 0, "category_id": 1, "segmentation": rle,
                             "bbox": [0.0, 0.0, 2.0, 2.0], "area": 4, "score": 0.5, "stability_score": 1.0,
                             "iscrowd": 0}], "failed": {}}


def test_parts_markers_and_annotations(tmp_path):
    sink = ImageSink(str(tmp_path / "out"), None, OutputSpec.retry_s)
    sink.claim(PROV)
    sink.write_part("images-000000", _part("b"))
    sink.mark_done(WorkerResult("images-000000", frames=1, objects=1, digest="d0"))
    sink.write_part("images-000001", _part("a"))
    assert sink.read_part("images-000000") == _part("b")
    assert sink.read_done("images-000000").masklets.endswith("_state/parts/images-000000.json")
    assert set(sink.done_records()) == {"images-000000"}  # a part without its marker is not done
    uri = sink.write_annotations([sink.read_part("images-000000"), sink.read_part("images-000001")], (0, 1), {})
    doc = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert uri.endswith("annotations.json") and [i["id"] for i in doc["images"]] == ["a", "b"]
    assert [a["id"] for a in doc["annotations"]] == [1, 2] and doc["annotations"][0]["image_id"] == "a"
    assert annotations_name((1, 4)) == "annotations-1-of-4.json" and annotations_name((0, 1)) == "annotations.json"


def test_another_model_is_refused_unless_overwrite_which_clears_everything(tmp_path):
    out = tmp_path / "out"
    sink = ImageSink(str(out), None, OutputSpec.retry_s)
    sink.claim(PROV)
    sink.write_part("images-000000", _part("a"))
    sink.mark_done(WorkerResult("images-000000", digest="d0"))
    sink.write_annotations([_part("a")], (0, 2), {})
    (out / "notes.txt").write_text("mine")
    other = {**PROV, "model": "sam2.1_hiera_small"}
    with pytest.raises(ProvenanceError, match="another model"):
        sink.claim(other)
    sink.claim(other, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["_state", "notes.txt"]
    assert not sink.done_records() and not (out / "_state" / "parts").exists()
