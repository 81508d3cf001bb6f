"""pipeline.io.masklets: RLE round trips, builder ordering, SA-V JSON and Parquet forms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipeline.io.masklets import (MaskletBuilder, MaskletFormatError, from_parquet_table, from_sav_json,
                                  masklets_from_bytes, masklets_to_bytes, read_masklets, to_parquet_table, to_sav_json)
from pipeline.io.rle import decode_rle, encode_rle, encode_rles
from pipeline.io.storage import write_bytes

SAV_EXAMPLE = Path("/work/shared/data/sav_example/sav_000001_manual.json")


def _masks(n_obj, h, w, seed):
    rng = np.random.default_rng(seed)
    m = np.zeros((n_obj, h, w), dtype=bool)
    for j in range(n_obj):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        m[j, y:y + 4 + j, x:x + 3] = True
    return m


def _built(frame_order=(2, 0, 1, 3), n_obj=3, h=20, w=30):
    b = MaskletBuilder("vid_1", frame_count=4, height=h, width=w, obj_ids=[5, 1, 9], provenance={"model": "t"})
    masks = {f: _masks(n_obj, h, w, f) for f in range(4)}
    masks[0][2] = False  # object 9 absent on frames 0 and 1
    masks[1][2] = False
    for f in frame_order:
        b.add_frame(f, masks[f], [0.5 + f, -1.0, 2.0])
    return b.build(), masks


def test_rle_roundtrip_matches_pycocotools():
    m = _masks(4, 17, 23, 0)
    rles = encode_rles(m)
    for j, rle in enumerate(rles):
        assert rle["size"] == [17, 23] and isinstance(rle["counts"], str)
        np.testing.assert_array_equal(decode_rle(rle), m[j])
        ref = mask_utils.encode(np.asfortranarray(m[j].astype(np.uint8)))
        assert rle["counts"] == ref["counts"].decode()
    assert encode_rle(m[1]) == rles[1]
    assert decode_rle({"size": [2, 3], "counts": [1, 2, 3]}).tolist() == [[False, True, False],
                                                                           [True, False, False]]
    with pytest.raises(ValueError, match="N, H, W"):
        encode_rles(m[0])


def test_builder_sorts_frames_and_finds_first_appearance():
    m, masks = _built()
    assert m.frame_indices == [0, 1, 2, 3]
    assert m.obj_ids == [5, 1, 9]
    assert m.first_appeared == [0, 0, 2]
    assert m.scores[2] == [2.5, -1.0, 2.0]
    for f in range(4):
        for j in range(3):
            np.testing.assert_array_equal(decode_rle(m.rles[f][j]), masks[f][j])


def test_builder_rejects_wrong_shapes():
    b = MaskletBuilder("v", 2, 8, 8, [0, 1])
    with pytest.raises(ValueError, match="video v frame 1"):
        b.add_frame(1, np.zeros((1, 8, 8), bool), [0.0])
    with pytest.raises(ValueError, match="scores"):
        b.add_frame(1, np.zeros((2, 8, 8), bool), [0.0])


def test_sav_json_layout_and_roundtrip():
    m, _ = _built()
    d = json.loads(json.dumps(to_sav_json(m)))
    assert d["video_id"] == "vid_1" and d["video_frame_count"] == 4
    assert (d["video_height"], d["video_width"]) == (20, 30)
    assert d["masklet_id"] == [5, 1, 9] and d["masklet_num"] == 3
    assert len(d["masklet"]) == 4 and len(d["masklet"][0]) == 3
    assert d["masklet_first_appeared_frame"] == [0, 0, 2]
    assert d["frame_indices"] == [0, 1, 2, 3] and d["provenance"] == {"model": "t"}
    assert from_sav_json(d) == m


def test_official_sav_file_loads():
    d = json.loads(SAV_EXAMPLE.read_text())
    m = from_sav_json(d)
    assert m.obj_ids == [0, 1, 2, 3, 4] and len(m.frame_indices) == 121
    assert m.frame_count == 483 and (m.height, m.width) == (848, 480)
    assert decode_rle(m.rles[0][1]).shape == (848, 480)


def test_parquet_one_row_per_object_frame():
    m, _ = _built()
    t = to_parquet_table(m)
    assert t.num_rows == 12
    assert t.column("frame_idx").to_pylist()[:4] == [0, 0, 0, 1]
    assert t.column("obj_id").to_pylist()[:4] == [5, 1, 9, 5]
    back = from_parquet_table(t)
    assert back.rles == m.rles and back.first_appeared == m.first_appeared
    np.testing.assert_allclose(np.array(back.scores), np.array(m.scores))
    with pytest.raises(ValueError, match="metadata"):
        from_parquet_table(t.replace_schema_metadata(None))


@pytest.mark.parametrize("fmt,ext", [("sav_json", "json"), ("parquet", "parquet")])
def test_read_masklets_from_s3(s3_server, s3_bucket, fmt, ext):
    m, _ = _built()
    uri = f"s3://{s3_bucket}/out/masklets/vid_1.{ext}"
    write_bytes(uri, masklets_to_bytes(m, fmt), s3_server["storage_options"])
    back = read_masklets(uri, s3_server["storage_options"])
    assert back.rles == m.rles and back.obj_ids == m.obj_ids and back.provenance == m.provenance
    assert masklets_from_bytes(masklets_to_bytes(m, fmt), fmt).frame_indices == m.frame_indices
    with pytest.raises(ValueError, match="csv"):
        read_masklets(f"s3://{s3_bucket}/x.csv", s3_server["storage_options"])


@pytest.mark.parametrize("name,content,reason", [
    ("missing.json", {"video_id": "v", "video_frame_count": 1, "video_height": 2, "video_width": 2,
                      "masklet_id": [1]}, "not an SA-V masklet file: no 'masklet' field"),
    ("list.json", [1, 2], "the JSON holds a list, not an object"),
    ("ragged.json", {"video_id": "v", "video_frame_count": 2, "video_height": 2, "video_width": 2,
                     "masklet_id": [1, 2], "masklet": [[{"size": [2, 2], "counts": "04"}]]},
     "'masklet' frame 0 does not hold one mask per object of 'masklet_id' (2 objects)"),
    ("garbage.json", b"\xff\x00 not json", "not a JSON file"),
    ("garbage.parquet", b"PAR1 not parquet", "not a Parquet file"),
])
def test_a_file_that_is_not_masklets_says_what_is_wrong(tmp_path, name, content, reason):
    """Tools name the file and the reason, never a bare KeyError like 'masklet'."""
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    with pytest.raises(MaskletFormatError) as err:
        read_masklets(str(path))
    assert str(err.value).startswith(f"{path}: ") and reason in str(err.value)


@pytest.mark.parametrize("fmt", ["sav_json", "parquet"])
def test_strided_masklets_keep_the_video_numbering_in_both_formats(fmt):
    """data.frame_step=4 with a clip from frame 8: frames 8, 12, 16 of a 19-frame video, first appearance as a
    position in ``masklet`` (SA-V's convention)."""
    b = MaskletBuilder("strided", frame_count=19, height=12, width=16, obj_ids=[3, 1])
    masks = {f: _masks(2, 12, 16, f) for f in (8, 12, 16)}
    masks[8][1] = False
    for f in (16, 8, 12):
        b.add_frame(f, masks[f], [0.25, -0.5])
    m = b.build()
    assert (m.frame_indices, m.frame_count, m.first_appeared) == ([8, 12, 16], 19, [0, 1])
    back = masklets_from_bytes(masklets_to_bytes(m, fmt), fmt)
    assert (back.frame_indices, back.frame_count, back.first_appeared, back.rles) == (
        [8, 12, 16], 19, [0, 1], m.rles)
    if fmt == "sav_json":
        d = to_sav_json(m)
        assert (d["frame_indices"], d["video_frame_count"], len(d["masklet"])) == ([8, 12, 16], 19, 3)
    else:
        assert sorted(set(to_parquet_table(m).column("frame_idx").to_pylist())) == [8, 12, 16]
