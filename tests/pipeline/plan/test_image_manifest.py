"""Image manifest: every bad row named at once, tasks of many images, digests that notice changed prompts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.rle import encode_rle
from pipeline.plan.image_manifest import IMAGE_MANIFEST_SCHEMA, ManifestError, load_image_manifest
from pipeline.plan.manifest import ManifestReadError


def _row(image_id: str, obj_id: int, **kw) -> dict:
    row = {"image_id": image_id, "image_uri": f"{image_id}.jpg", "obj_id": obj_id, "points": None,
           "point_labels": None, "box": None, "mask": None, "category_id": None}
    row.update(kw)
    return row


def _write(tmp_path, rows, schema=IMAGE_MANIFEST_SCHEMA):
    path = tmp_path / "images.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def test_every_bad_row_is_named_at_once(tmp_path):
    mask = encode_rle(np.ones((4, 4), dtype=bool))
    rows = [
        _row("a", 0, box=[1.0, 2.0, 10.0, 12.0], category_id=3),           # good
        _row("a", 1, points=[[1.0, 2.0]], point_labels=[1], mask=mask),    # good: a mask beside a click
        _row("a", 1, box=[0.0, 0.0, 5.0, 5.0]),                            # 2: second row for object 1
        _row("b", 0),                                                      # 3: no prompt
        _row("b", 1, points=[[1.0, 2.0]], point_labels=[1, 0]),            # 4: labels for points
        _row("b", 2, box=[5.0, 5.0, 1.0, 1.0]),                            # 5: unordered box
        {**_row("b", 3, box=[0.0, 0.0, 1.0, 1.0]), "image_uri": "other.jpg"},  # 6: second uri for b
        _row("", 0, box=[0.0, 0.0, 1.0, 1.0]),                             # 7: empty image_id
        _row("c", -1, box=[0.0, 0.0, 1.0, 1.0], category_id=-2),           # 8: negative ids
        _row("d", 0, mask={"size": [4, 4], "counts": "zz"}),               # 9: counts that do not decode
    ]
    with pytest.raises(ManifestError) as exc:
        load_image_manifest(_write(tmp_path, rows))
    found = {(e.row, e.column) for e in exc.value.errors}
    assert found == {(2, "obj_id"), (3, "points"), (4, "point_labels"), (5, "box"), (6, "image_uri"),
                     (7, "image_id"), (8, "obj_id"), (8, "category_id"), (9, "mask")}, exc.value.errors
    assert "row 4, column 'point_labels': 2 labels for 1 points" in str(exc.value)


def test_required_columns_and_protocols(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"image_id": ["a"], "box": [[0.0, 0.0, 1.0, 1.0]]}), path)
    with pytest.raises(ManifestError, match="image_uri.*required column missing"):
        load_image_manifest(str(path))
    rows = [{**_row("a", 0, box=[0.0, 0.0, 1.0, 1.0]), "image_uri": "http://example.com/a.jpg"}]
    with pytest.raises(ManifestError, match="protocol http is not allowed"):
        load_image_manifest(_write(tmp_path, rows))
    with pytest.raises(ManifestReadError, match="not found"):
        load_image_manifest(str(tmp_path / "missing.parquet"))


def test_tasks_hold_many_images_in_id_order(tmp_path):
    rows = [_row(f"img{i:02d}", o, box=[0.0, 0.0, 5.0 + o, 5.0], category_id=o + 1)
            for i in reversed(range(7)) for o in range(3)]
    plan = load_image_manifest(_write(tmp_path, rows), data_root=str(tmp_path), images_per_task=3)
    assert [t.key for t in plan.tasks] == ["images-000000", "images-000001", "images-000002"]
    assert [t.num_images for t in plan.tasks] == [3, 3, 1] and plan.num_images == 7 and plan.num_objects == 21
    first = plan.tasks[0].images()
    assert [i.image_id for i in first] == ["img00", "img01", "img02"]
    assert [o.obj_id for o in first[0].objects] == [0, 1, 2] and first[0].objects[2].category_id == 3
    assert first[0].uri == str(tmp_path / "img00.jpg")
    assert first[0].objects[1].prompt().box.tolist() == [0.0, 0.0, 6.0, 5.0]


def test_digest_notices_changed_prompts_only_where_they_changed(tmp_path):
    rows = [_row(f"img{i}", 0, box=[0.0, 0.0, 5.0, 5.0]) for i in range(4)]
    before = load_image_manifest(_write(tmp_path, rows), images_per_task=2).tasks
    rows[3]["box"] = [0.0, 0.0, 6.0, 5.0]
    after = load_image_manifest(_write(tmp_path, list(reversed(rows))), images_per_task=2).tasks
    produced_by = {"model": "m"}
    a = [t.with_digest(produced_by).digest for t in before]
    b = [t.with_digest(produced_by).digest for t in after]
    assert a[0] == b[0] and a[1] != b[1]
    assert before[0].with_digest({"model": "other"}).digest != a[0]


def test_auto_mode_needs_only_images(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"image_id": ["b", "a", "a"], "image_uri": ["b.jpg", "a.jpg", "a.jpg"]}), path)
    plan = load_image_manifest(str(path), mode="auto")
    images = plan.tasks[0].images()
    assert [i.image_id for i in images] == ["a", "b"] and images[0].objects == () and plan.num_objects == 0
    with pytest.raises(ManifestError, match="obj_id"):
        load_image_manifest(str(path))


def test_an_empty_manifest_plans_no_task(tmp_path):
    assert load_image_manifest(_write(tmp_path, [])).tasks == []


def test_out_of_memory_halves_the_encoder_batch(tmp_path):
    rows = [_row(f"img{i}", 0, box=[0.0, 0.0, 5.0, 5.0]) for i in range(6)]
    task = load_image_manifest(_write(tmp_path, rows), images_per_task=6).tasks[0]
    assert task.video_id == task.key and task.cost == 12.0
    assert task.with_smaller_batches(8).image_batch == 4 and task.with_smaller_batches().image_batch == 3
    assert task.with_smaller_batches(1).image_batch == 1
