"""pipeline.plan.manifest: validation with row-level messages, drop_video, planning, S3 reads, sharding, frame
steps and clips."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.plan.manifest import MANIFEST_SCHEMA, ManifestError, ManifestReadError, load_manifest
from pipeline.plan.sampling import FrameGrid
from pipeline.plan.tasks import shard_of, video_cost
from pipeline.io.rle import encode_rle
from pipeline.io.storage import write_bytes

SCHEMA = MANIFEST_SCHEMA


def _row(video_id="v1", video_uri="videos/v1.mp4", obj_id=0, frame_idx=0, points=None, point_labels=None, box=None,
         mask=None):
    return dict(video_id=video_id, video_uri=video_uri, obj_id=obj_id, frame_idx=frame_idx, points=points,
                point_labels=point_labels, box=box, mask=mask)


def _write(path, rows, schema=SCHEMA):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def _mask_rle(h=6, w=8):
    m = np.zeros((h, w), dtype=bool)
    m[1:4, 2:5] = True
    return encode_rle(m)


def _valid_rows():
    return [
        _row(points=[[10, 20]], point_labels=[1]),
        _row(obj_id=1, frame_idx=3, box=[1, 2, 30, 40]),
        _row(obj_id=1, frame_idx=5, points=[[5, 5], [6, 7]], point_labels=[1, 0], box=[0, 0, 10, 10]),
        _row(video_id="v2", video_uri="/abs/frames/v2", obj_id=7, frame_idx=2, mask=_mask_rle()),
    ]


def test_valid_manifest_plans_one_task_per_video(tmp_path):
    uri = _write(tmp_path / "m.parquet", _valid_rows())
    plan = load_manifest(uri, data_root="/data/root")
    assert plan.dropped == {} and plan.num_rows == 4
    tasks = {t.video_id: t for t in plan.tasks}
    assert set(tasks) == {"v1", "v2"}
    v1 = tasks["v1"]
    assert v1.video_uri == "/data/root/videos/v1.mp4"
    assert v1.num_objects == 2 and [p.row for p in v1.prompts] == [0, 1, 2]
    assert v1.prompts[2].points == [[5.0, 5.0], [6.0, 7.0]]
    assert v1.prompts[2].point_labels == [1, 0] and v1.prompts[2].box == [0, 0, 10, 10]
    v2 = tasks["v2"]
    assert v2.video_uri == "/abs/frames/v2" and v2.prompts[0].mask == _mask_rle()
    assert [t.video_id for t in plan.tasks] == ["v1", "v2"]  # cost = objects x 1 when sizes are unknown


def test_every_invalid_row_reported_at_once(tmp_path):
    good = _mask_rle()
    rows = [
        _row(points=[[1, 2]], point_labels=[1]),                                  # 0 ok
        _row(video_id="../up", points=[[1, 2]], point_labels=[1]),                # 1 bad id
        _row(video_id="..", points=[[1, 2]], point_labels=[1]),                   # 2 bad id
        _row(obj_id=-1, frame_idx=1, box=[0, 0, 1, 1]),                           # 3 negative obj
        _row(frame_idx=-2, obj_id=3, box=[0, 0, 1, 1]),                           # 4 negative frame
        _row(obj_id=4, points=[[1, 2], [3, 4]], point_labels=[1]),                # 5 label count
        _row(obj_id=5, points=[[1, 2]], point_labels=[2]),                        # 6 label value
        _row(obj_id=6, box=[0, 0, 1]),                                            # 7 box len
        _row(obj_id=7, box=[5, 0, 1, 1]),                                         # 8 box order
        _row(obj_id=8, box=[0, float("nan"), 1, 1]),                              # 9 box nan
        _row(obj_id=9, mask={"size": [6, 8], "counts": good["counts"][:-2]}),     # 10 bad rle
        _row(obj_id=10, mask={"size": [6], "counts": good["counts"]}),            # 11 bad size
        _row(obj_id=11, mask=good, points=[[1, 1]], point_labels=[1]),            # 12 mask+points
        _row(obj_id=12),                                                          # 13 no prompt
        _row(obj_id=13, video_uri="other.mp4", box=[0, 0, 1, 1]),                 # 14 uri differs
        _row(obj_id=14, video_uri="", video_id="v9", box=[0, 0, 1, 1]),           # 15 empty uri
        _row(obj_id=15, points=[[1, 2, 3]], point_labels=[1]),                    # 16 point not [x, y]
        _row(obj_id=16, points=[[1, 2]]),                                         # 17 labels missing
        _row(points=[[3, 3]], point_labels=[0]),                                  # 18 duplicate of row 0
    ]
    uri = _write(tmp_path / "bad.parquet", rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(uri, data_root=str(tmp_path))
    errs = {(e.row, e.column) for e in info.value.errors}
    expected = {(1, "video_id"), (2, "video_id"), (3, "obj_id"), (4, "frame_idx"), (5, "point_labels"),
                (6, "point_labels"), (7, "box"), (8, "box"), (9, "box"), (10, "mask"), (11, "mask"), (12, "mask"),
                (13, "points"), (14, "video_uri"), (15, "video_uri"), (16, "points"), (17, "point_labels"),
                (18, "frame_idx")}
    assert errs == expected
    msg = str(info.value)
    assert "row 8, column 'box'" in msg and "x0 <= x1" in msg
    assert "row 14, column 'video_uri'" in msg and "other.mp4" in msg
    assert "first in row 0" in msg


def test_video_ids_that_output_keys_cannot_hold_are_refused_at_the_manifest(tmp_path):
    """A leading '.' (listings skip hidden files: the video would be recomputed on every run) and ids too long for
    a file name are refused before any work, each row named, like any other bad row."""
    rows = [_row(video_id=".hidden", points=[[1, 2]], point_labels=[1]),
            _row(video_id="x" * 300, video_uri="videos/long.mp4", points=[[1, 2]], point_labels=[1]),
            _row(video_id="y" * 200, video_uri="videos/ok.mp4", points=[[1, 2]], point_labels=[1]),
            _row(video_id="a.b-c_1", video_uri="videos/dots.mp4", points=[[1, 2]], point_labels=[1])]
    with pytest.raises(ManifestError) as info:
        load_manifest(_write(tmp_path / "ids.parquet", rows), data_root=str(tmp_path))
    assert {(e.row, e.column) for e in info.value.errors} == {(0, "video_id"), (1, "video_id")}
    msg = str(info.value)
    assert "'.hidden' is not usable in output keys" in msg and "not starting with '.'" in msg
    assert "(300 characters)" in msg and "at most 200 characters" in msg


def test_listed_videos_whose_file_names_give_unusable_ids_are_named(tmp_path):
    from pipeline.plan.manifest import list_videos

    (tmp_path / "clips").mkdir()
    for name in (".partial.mp4", "good.mp4"):
        (tmp_path / "clips" / name).write_bytes(b"x")
    with pytest.raises(ManifestError) as info:
        list_videos(str(tmp_path / "clips" / "*.mp4"))
    assert ".partial.mp4: its file name gives the id '.partial'" in str(info.value)


def test_missing_column_and_wrong_types(tmp_path):
    t = pa.table({"video_id": ["a"], "obj_id": [0], "frame_idx": [0.5]})
    pq.write_table(t, tmp_path / "m.parquet")
    with pytest.raises(ManifestError) as info:
        load_manifest(str(tmp_path / "m.parquet"), on_invalid="drop_video")
    assert {(e.row, e.column) for e in info.value.errors} == {(-1, "video_uri")}
    t = pa.table({"video_id": ["a"], "video_uri": ["a.mp4"], "obj_id": [0], "frame_idx": [0.5],
                  "box": [[0.0, 0.0, 1.0, 1.0]]})
    pq.write_table(t, tmp_path / "m2.parquet")
    with pytest.raises(ManifestError, match="frame_idx.*integer"):
        load_manifest(str(tmp_path / "m2.parquet"))


def test_drop_video_keeps_valid_videos(tmp_path):
    rows = _valid_rows() + [_row(video_id="v3", video_uri="v3.mp4", box=[3, 0, 1, 1]),
                            _row(video_id="v3", video_uri="v3.mp4", obj_id=2, box=[0, 0, 1, 1]),
                            _row(video_id="v1", obj_id=5, points=[[1, 1]], point_labels=[3]),
                            _row(video_id=None, box=[0, 0, 1, 1])]
    uri = _write(tmp_path / "m.parquet", rows)
    plan = load_manifest(uri, data_root=str(tmp_path), on_invalid="drop_video")
    assert [t.video_id for t in plan.tasks] == ["v2"]
    assert set(plan.dropped) == {"v1", "v3", ""}
    assert [(e.row, e.column) for e in plan.dropped[""]] == [(7, "video_id")]
    assert [(e.row, e.column) for e in plan.dropped["v3"]] == [(4, "box")]


def test_cost_uses_file_sizes_from_one_listing(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "big.mp4").write_bytes(b"x" * 5000)
    (tmp_path / "videos" / "small.mp4").write_bytes(b"x" * 100)
    rows = [_row(video_id="big", video_uri="videos/big.mp4", box=[0, 0, 1, 1]),
            _row(video_id="small", video_uri="videos/small.mp4", box=[0, 0, 1, 1]),
            _row(video_id="small", video_uri="videos/small.mp4", obj_id=1, box=[0, 0, 1, 1]),
            _row(video_id="small", video_uri="videos/small.mp4", obj_id=2, box=[0, 0, 1, 1])]
    plan = load_manifest(_write(tmp_path / "m.parquet", rows), data_root=str(tmp_path))
    assert [(t.video_id, t.file_size, t.cost) for t in plan.tasks] == [("big", 5000.0, video_cost(1, 5000.0)),
                                                                       ("small", 100.0, video_cost(3, 100.0))]
    assert video_cost(3, 100.0) == 100.0 * (1 + 3 / 4)  # an object's tracking: a quarter of a frame's encoding


def test_manifest_on_s3(s3_server, s3_bucket, tmp_path):
    so = s3_server["storage_options"]
    path = _write(tmp_path / "m.parquet", _valid_rows())
    write_bytes(f"s3://{s3_bucket}/manifests/m.parquet", open(path, "rb").read(), so)
    write_bytes(f"s3://{s3_bucket}/data/videos/v1.mp4", b"0" * 1234, so)
    plan = load_manifest(f"s3://{s3_bucket}/manifests/m.parquet", data_root=f"s3://{s3_bucket}/data",
                         storage_options=so)
    v1 = next(t for t in plan.tasks if t.video_id == "v1")
    assert v1.video_uri == f"s3://{s3_bucket}/data/videos/v1.mp4"
    assert v1.file_size == 1234.0 and v1.cost == video_cost(2, 1234.0)


def test_all_null_optional_columns_written_by_pandas(tmp_path):
    t = pa.table({"video_id": ["a", "a"], "video_uri": ["a.mp4", "a.mp4"], "obj_id": [0, 1], "frame_idx": [0, 0],
                  "points": pa.nulls(2), "box": [[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]], "mask": pa.nulls(2)})
    pq.write_table(t, tmp_path / "m.parquet")
    plan = load_manifest(str(tmp_path / "m.parquet"), data_root="/r")
    assert [p.box for p in plan.tasks[0].prompts] == [[0, 0, 2, 2], [1, 1, 3, 3]]


def test_folder_of_parquet_files(tmp_path):
    folder = tmp_path / "manifest"
    folder.mkdir()
    rows = _valid_rows()
    _write(folder / "part-0.parquet", rows[:2])
    _write(folder / "part-1.parquet", rows[2:])
    plan = load_manifest(str(folder), data_root="/r")
    assert sorted(p.row for t in plan.tasks for p in t.prompts) == [0, 1, 2, 3]


def test_missing_manifest_names_uri(tmp_path):
    with pytest.raises(ManifestReadError, match="nope.parquet not found"):
        load_manifest(str(tmp_path / "nope.parquet"))


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    (tmp_path / "m.parquet").write_text("video_id,video_uri\n")
    with pytest.raises(ManifestReadError, match="m.parquet is not a Parquet file"):
        load_manifest(str(tmp_path / "m.parquet"))


def test_video_uri_protocols_are_an_allow_list(tmp_path):
    rows = [_row(video_id="a", video_uri="http://example.invalid/a.mp4", box=[0, 0, 4, 4]),
            _row(video_id="b", video_uri="simplecache::https://example.invalid/b.mp4", box=[0, 0, 4, 4]),
            _row(video_id="c", video_uri="c.mp4", box=[0, 0, 4, 4])]
    _write(tmp_path / "m.parquet", rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(str(tmp_path / "m.parquet"), data_root="/r")
    assert [(e.row, e.column) for e in info.value.errors] == [(0, "video_uri"), (1, "video_uri")]
    assert "protocol http is not allowed" in str(info.value.errors[0])
    assert "protocol https, simplecache is not allowed" in str(info.value.errors[1])
    plan = load_manifest(str(tmp_path / "m.parquet"), data_root="/r", protocols=("file", "http", "https",
                                                                                   "simplecache"))
    assert len(plan.tasks) == 3


def test_manifest_auto_plans_video_only_rows_as_prompt_less_tasks(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "v1.mp4").write_bytes(b"x" * 100)
    (tmp_path / "videos" / "v2.mp4").write_bytes(b"x" * 1000)
    listed = dict(obj_id=None, frame_idx=None)
    rows = [_row(points=[[10, 20]], point_labels=[1]),
            _row(video_id="v2", video_uri="videos/v2.mp4", **listed),
            _row(**listed),                                              # adds nothing to v1's prompts
            _row(obj_id=1, frame_idx=3, box=[1, 2, 30, 40]),
            _row(video_id="v2", video_uri="videos/v2.mp4", **listed)]    # not a second prompt
    uri = _write(tmp_path / "m.parquet", rows)
    plan = load_manifest(uri, data_root=str(tmp_path), mode="manifest+auto")
    assert plan.dropped == {} and plan.num_rows == 5
    assert [t.video_id for t in plan.tasks] == ["v2", "v1"]  # v2: 1000 bytes; v1: 2 objects in 100
    v2, v1 = plan.tasks
    assert v1.auto and [p.row for p in v1.prompts] == [0, 3] and v1.num_objects == 2 and v1.cost == video_cost(2, 100)
    assert v2.auto and v2.prompts == () and v2.num_objects == 0 and v2.cost == video_cost(1, 1000)
    assert v2.video_uri == str(tmp_path / "videos" / "v2.mp4")


def test_manifest_auto_without_prompt_columns_lists_every_video(tmp_path):
    pq.write_table(pa.table({"video_id": ["a", "b", "a"], "video_uri": ["a.mp4", "b.mp4", "a.mp4"]}),
                   tmp_path / "m.parquet")
    # as pandas writes all-None columns: Arrow type null
    pq.write_table(pa.table({"video_id": ["a", "b"], "video_uri": ["a.mp4", "b.mp4"], "obj_id": pa.nulls(2),
                             "frame_idx": pa.nulls(2), "box": pa.nulls(2)}), tmp_path / "pandas.parquet")
    for name in ("m.parquet", "pandas.parquet"):
        plan = load_manifest(str(tmp_path / name), data_root="/r", mode="manifest+auto")
        assert sorted(t.video_id for t in plan.tasks) == ["a", "b"]
        assert all(t.auto and t.prompts == () and t.num_objects == 0 for t in plan.tasks)


def test_manifest_auto_partly_filled_rows_are_errors(tmp_path):
    rows = [_row(points=[[1, 2]], point_labels=[1]),                     # 0 ok
            _row(obj_id=1, frame_idx=None, box=[0, 0, 1, 1]),            # 1 frame missing
            _row(video_id="v2", obj_id=None, box=[0, 0, 1, 1]),          # 2 box without object
            _row(video_id="v3", obj_id=None, frame_idx=None, points=[[1, 2]], point_labels=[1]),  # 3 no ids
            _row(video_id="v4", obj_id=4, frame_idx=None),               # 4 object only
            _row(video_id="v5", obj_id=None, frame_idx=None),            # 5 video-only: fine
            _row(video_id="v6", video_uri="", obj_id=None, frame_idx=None)]  # 6 video columns still checked
    uri = _write(tmp_path / "m.parquet", rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(uri, data_root="/r", mode="manifest+auto")
    assert {(e.row, e.column) for e in info.value.errors} == {
        (1, "frame_idx"), (2, "obj_id"), (3, "obj_id"), (3, "frame_idx"), (4, "frame_idx"), (4, "points"),
        (6, "video_uri")}
    assert "row 1, column 'frame_idx': missing" in str(info.value)
    plan = load_manifest(uri, data_root="/r", mode="manifest+auto", on_invalid="drop_video")
    assert [(t.video_id, t.prompts == ()) for t in plan.tasks] == [("v5", True)]
    assert set(plan.dropped) == {"v1", "v2", "v3", "v4", "v6"}
    pq.write_table(pa.table({"video_id": ["a", "b"], "video_uri": ["a.mp4", "b.mp4"],
                             "box": [None, [0.0, 0.0, 1.0, 1.0]]}), tmp_path / "no_ids.parquet")
    with pytest.raises(ManifestError) as info:
        load_manifest(str(tmp_path / "no_ids.parquet"), mode="manifest+auto")
    assert {(e.row, e.column) for e in info.value.errors} == {(1, "obj_id"), (1, "frame_idx")}


def test_video_only_rows_need_a_mixed_or_auto_mode(tmp_path):
    rows = [_row(points=[[1, 2]], point_labels=[1]), _row(video_id="v2", obj_id=None, frame_idx=None)]
    uri = _write(tmp_path / "m.parquet", rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(uri, data_root="/r")
    assert [(e.row, e.column) for e in info.value.errors] == [(1, "obj_id")]  # one error, not one per column
    assert ("row 1, column 'obj_id': no prompt (obj_id/frame_idx missing); video-only rows need "
            "prompts=manifest+auto or prompts=auto") in str(info.value)
    pq.write_table(pa.table({"video_id": ["a"], "video_uri": ["a.mp4"]}), tmp_path / "videos.parquet")
    with pytest.raises(ManifestError, match="obj_id.*required column missing.*prompts=manifest\\+auto"):
        load_manifest(str(tmp_path / "videos.parquet"))


def test_auto_mode_ignores_prompt_columns_even_partly_filled(tmp_path):
    rows = [_row(points=[[1, 2]], point_labels=[1]), _row(obj_id=None, box=[0, 0, 1, 1]),
            _row(video_id="v2", obj_id=None, frame_idx=None), _row(video_id="v2", obj_id=-3, box=[5, 0, 1, 1])]
    plan = load_manifest(_write(tmp_path / "m.parquet", rows), data_root="/r", mode="auto")
    assert plan.dropped == {} and sorted(t.video_id for t in plan.tasks) == ["v1", "v2"]
    assert all(t.auto and t.prompts == () and t.num_objects == 0 and t.cost == video_cost(0, 1.0) for t in plan.tasks)


def test_shard_of_is_stable_and_balanced():
    assert shard_of("sav_000001", 8) == shard_of("sav_000001", 8)
    assert shard_of("sav_000001", 1) == 0
    counts = np.bincount([shard_of(f"sav_{i:06d}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 800
    with pytest.raises(ValueError):
        shard_of("x", 0)


def test_twenty_thousand_row_manifest_plans(tmp_path):
    """A vectorised-path smoke test at scale: ~1.6k videos, 20k rows, mixed prompt kinds (no timing assert)."""
    rng = np.random.default_rng(0)
    n = 20_000
    vid = rng.integers(0, n // 12, n)
    obj = np.arange(n) % 1000
    rle = _mask_rle(48, 64)
    kind = np.arange(n) % 3
    table = pa.table({
        "video_id": pa.array([f"sav_{v:06d}" for v in vid]),
        "video_uri": pa.array([f"videos/sav_{v:06d}.mp4" for v in vid]),
        "obj_id": pa.array(obj, pa.int64()),
        "frame_idx": pa.array(rng.integers(0, 100, n), pa.int64()),
        "points": pa.array([[[1.0, 2.0], [3.0, 4.0]] if k == 0 else None for k in kind],
                           pa.list_(pa.list_(pa.float32()))),
        "point_labels": pa.array([[1, 0] if k == 0 else None for k in kind], pa.list_(pa.int32())),
        "box": pa.array([[0.0, 0.0, 5.0, 5.0] if k == 1 else None for k in kind], pa.list_(pa.float32())),
        "mask": pa.array([rle if k == 2 else None for k in kind], SCHEMA.field("mask").type),
    })
    # make (video, obj, frame) unique
    table = table.set_column(2, "obj_id", pa.array(np.arange(n), pa.int64()))
    pq.write_table(table, tmp_path / "big.parquet")
    plan = load_manifest(str(tmp_path / "big.parquet"), data_root=str(tmp_path))
    assert sum(len(t.prompts) for t in plan.tasks) == n
    assert len(plan.tasks) == len(set(vid.tolist()))
    assert all(t.num_objects == len(t.prompts) for t in plan.tasks)


def test_each_repeated_prompt_names_the_first_row_of_its_key(tmp_path):
    """(video, object, frame) repeated: every later row is an error naming the first; a missing id is a key of its
    own (reported missing as well); the same object and frame in another video is no repeat."""
    box = {"box": [0, 0, 1, 1]}
    rows = [_row(**box), _row(obj_id=1, **box), _row(**box), _row(video_id="v2", video_uri="v2.mp4", **box),
            _row(obj_id=None, frame_idx=4, **box), _row(**box), _row(obj_id=None, frame_idx=4, **box)]
    with pytest.raises(ManifestError) as info:
        load_manifest(_write(tmp_path / "m.parquet", rows), data_root=str(tmp_path))
    assert [(e.row, e.column, e.reason) for e in info.value.errors] == [
        (2, "frame_idx", "second prompt for video 'v1' object 0 frame 0 (first in row 0)"),
        (4, "obj_id", "missing"),
        (5, "frame_idx", "second prompt for video 'v1' object 0 frame 0 (first in row 0)"),
        (6, "obj_id", "missing"),
        (6, "frame_idx", "second prompt for video 'v1' object None frame 4 (first in row 4)")]


def _clipped(video_id="v1", frame_idx=0, start=None, end=None, **kw):
    return {**_row(video_id=video_id, video_uri=f"videos/{video_id}.mp4", frame_idx=frame_idx,
                   points=[[1, 1]], point_labels=[1], **kw), "start_frame": start, "end_frame": end}


def test_frame_step_and_clips_plan_into_task_grids(tmp_path):
    rows = [_clipped(frame_idx=8), _clipped(obj_id=1, frame_idx=0),
            _clipped("v2", frame_idx=304, start=301, end=900), _clipped("v2", obj_id=1, frame_idx=900, start=301,
                                                                        end=900),
            _clipped("v3", frame_idx=12, end=12)]
    plan = load_manifest(_write(tmp_path / "m.parquet", rows), data_root="/r", frame_step=4)
    grids = {t.video_id: t.grid for t in plan.tasks}
    assert grids == {"v1": FrameGrid(4), "v2": FrameGrid(4, 301, 900), "v3": FrameGrid(4, None, 12)}
    every = load_manifest(_write(tmp_path / "e.parquet", _valid_rows()), data_root="/r")
    assert all(t.grid.every_frame for t in every.tasks)
    # prompts=auto: only the videos and their clips, as pandas writes them: all-null columns are none, integers
    # with missing values are whole floats
    pq.write_table(pa.table({"video_id": ["a", "b", "b"], "video_uri": ["a.mp4", "b.mp4", "b.mp4"],
                             "start_frame": pa.array([None, 8.0, 8.0]), "end_frame": pa.nulls(3)}),
                   tmp_path / "auto.parquet")
    auto = load_manifest(str(tmp_path / "auto.parquet"), data_root="/r", mode="auto", frame_step=2)
    assert {t.video_id: t.grid for t in auto.tasks} == {"a": FrameGrid(2), "b": FrameGrid(2, 8, None)}


def test_prompts_off_the_tracked_frames_and_bad_clips_are_refused_with_their_rows(tmp_path):
    rows = [_clipped(frame_idx=6),                                            # 0: between 4 and 8
            _clipped(frame_idx=8),
            _clipped("v2", frame_idx=300, start=301, end=900),                # 2: before its clip
            _clipped("v2", obj_id=1, frame_idx=904, start=301, end=900),      # 3: after its clip (inclusive end)
            _clipped("v3", frame_idx=304, start=301, end=303),                # 4: no frame of the grid in the clip
            _clipped("v4", frame_idx=304, start=300),
            _clipped("v4", obj_id=1, frame_idx=304, start=304),               # 5's video, another clip
            _clipped("v5", frame_idx=400, start=400, end=300),                # 7: end before start
            _clipped("v6", frame_idx=4, start=-4)]                            # 8: negative
    with pytest.raises(ManifestError) as err:
        load_manifest(_write(tmp_path / "m.parquet", rows), frame_step=4)
    found = {(e.row, e.column): e.reason for e in err.value.errors}
    assert found == {
        (0, "frame_idx"): "frame 6 is not sampled (data.frame_step=4); nearest sampled frames: 4, 8",
        (2, "frame_idx"): "frame 300 is outside the clip (data.frame_step=4, clip 301–900 inclusive); nearest "
                          "sampled frames: 304",
        (3, "frame_idx"): "frame 904 is outside the clip (data.frame_step=4, clip 301–900 inclusive); nearest "
                          "sampled frames: 900",
        (4, "end_frame"): "the clip 301–303 (end_frame inclusive) holds no frame of the data.frame_step=4 grid "
                          "(frames 0, 4, 8, …): nothing to track",
        (6, "start_frame"): "video 'v4' has start_frame 304, end_frame null here but start_frame 300, end_frame "
                            "null in row 5 (a video's rows must agree on its clip)",
        (7, "end_frame"): "end_frame 300 is before start_frame 400 (the clip is start_frame..end_frame, both "
                          "inclusive)",
        (8, "start_frame"): "start_frame -4 must be >= 0",
    }
    pq.write_table(pa.table({"video_id": ["a"], "video_uri": ["a.mp4"], "obj_id": [0], "frame_idx": [0],
                             "box": [[0.0, 0.0, 2.0, 2.0]], "end_frame": ["9"]}), tmp_path / "s.parquet")
    with pytest.raises(ManifestError, match="column 'end_frame': must be an integer column"):
        load_manifest(str(tmp_path / "s.parquet"))
    pq.write_table(pa.table({"video_id": ["a"], "video_uri": ["a.mp4"], "obj_id": [0], "frame_idx": [0],
                             "box": [[0.0, 0.0, 2.0, 2.0]], "end_frame": [9.5]}), tmp_path / "f.parquet")
    with pytest.raises(ManifestError, match=r"column 'end_frame': must be an integer column \(or null; floats only "
                                            r"when whole\), got double"):
        load_manifest(str(tmp_path / "f.parquet"))
