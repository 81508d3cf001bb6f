"""pipeline.plan.tasks: prompts kept in the manifest's columns until a task is sent, and digests computed from the
columns that equal ``task_digest`` byte for byte; the frames tracked (step, clip) in the digest."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.rle import encode_rle
from pipeline.plan.manifest import MANIFEST_SCHEMA, load_manifest
from pipeline.plan.tasks import Prompt, PromptRows, PromptTable, VideoTask, task_digest, with_digests

PRODUCED_BY = {"model": {"name": "sam2.1_hiera_tiny", "sha256": "ab\\cd"}, "options": {"b": [1.5, None], "a": "é"}}


def _mask_with_backslash() -> dict:
    """A COCO RLE whose counts hold a backslash (the one char of '0'..'o' JSON escapes): a first run of 44 pixels
    is written as the groups 12 (with "more") and 1, i.e. chars '\\' and '1'."""
    mask = np.zeros((31, 45), dtype=bool)
    mask.T.flat[44:300] = True  # column-major, as COCO counts
    rle = encode_rle(mask)
    assert rle["counts"].startswith("\\1")
    return rle


def _float_manifest(path) -> str:
    """Every prompt kind, floats JSON writes in several forms, prompts out of (frame, object) order."""
    mask = _mask_with_backslash()
    rows = [
        dict(video_id="v1", video_uri="videos/v1.mp4", obj_id=2, frame_idx=9, points=[[5.0, 0.1]], point_labels=[1]),
        dict(video_id="v1", video_uri="videos/v1.mp4", obj_id=0, frame_idx=9, box=[1e-05, -0.0, 1e16, 123.456]),
        dict(video_id="v1", video_uri="videos/v1.mp4", obj_id=1, frame_idx=0, mask=mask),
        dict(video_id="v2", video_uri='videos/vidé "o".mp4', obj_id=3, frame_idx=4,
             points=[[1 / 3, 2.5e-7], [1401.0, 7.0]], point_labels=[0, 1], box=[0.0, 0.0, 2.0, 2.0]),
        dict(video_id="v3", video_uri="videos/v3.mp4", obj_id=0, frame_idx=0, mask=mask),
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), path)
    return str(path)


def _other_types_manifest(path) -> str:
    """Integer points, boolean labels, a float32 fixed-size box, large lists, no mask column."""
    schema = pa.schema([("video_id", pa.string()), ("video_uri", pa.large_string()), ("obj_id", pa.int32()),
                        ("frame_idx", pa.int16()), ("points", pa.large_list(pa.list_(pa.int64()))),
                        ("point_labels", pa.list_(pa.bool_())), ("box", pa.list_(pa.float32(), 4))])
    rows = [dict(video_id="a", video_uri="a.mp4", obj_id=1, frame_idx=2, points=[[3, 4], [5, 6]],
                 point_labels=[True, False], box=None),
            dict(video_id="a", video_uri="a.mp4", obj_id=1, frame_idx=0, points=None, point_labels=None,
                 box=[0.1, 0.2, 3.3, 4.4]),
            dict(video_id="b", video_uri="b.mp4", obj_id=0, frame_idx=0, points=[[7, 8]], point_labels=[True],
                 box=[1.0, 1.0, 2.0, 2.0])]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def test_digests_from_the_columns_equal_task_digest(tmp_path):
    plans = [load_manifest(_float_manifest(tmp_path / "f.parquet"), str(tmp_path)),
             load_manifest(_other_types_manifest(tmp_path / "o.parquet"), str(tmp_path)),
             load_manifest(_float_manifest(tmp_path / "f.parquet"), str(tmp_path), mode="manifest+auto")]
    by_hand = VideoTask("h", "/x/h.mp4", (Prompt(0, 0, [[1.0, 2.0]], [1], None, None, 0),), 1, 1.0)
    for plan in plans:
        tasks = [*plan.tasks, by_hand]
        assert any(isinstance(t.prompts, PromptRows) for t in tasks)
        digested = with_digests(tasks, PRODUCED_BY)
        assert [t.digest for t in digested] == [task_digest(t, PRODUCED_BY) for t in tasks]
        assert [t.video_id for t in digested] == [t.video_id for t in tasks]
        assert len({t.digest for t in digested}) == len(tasks)
    v1 = next(t for t in plans[0].tasks if t.video_id == "v1")
    assert [(p.frame_idx, p.obj_id, p.row) for p in v1.prompts] == [(0, 1, 2), (9, 0, 1), (9, 2, 0)]
    assert with_digests([v1], {**PRODUCED_BY, "model": "other"})[0].digest != with_digests([v1], PRODUCED_BY)[0].digest


def test_prompts_stay_in_columns_until_a_task_is_sent(tmp_path):
    """The driver holds row numbers; a pickled task (what Ray sends a worker) carries its own prompts as a tuple,
    not the manifest's columns."""
    big = np.zeros((1080, 1920), dtype=bool)
    big[100:900:3, 50:1800] = True  # ~270 runs per column: a long counts string
    rle = encode_rle(big)
    rows = [dict(video_id=f"v{i}", video_uri=f"videos/v{i}.mp4", obj_id=0, frame_idx=0, mask=rle) for i in range(40)]
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), tmp_path / "m.parquet")
    task = load_manifest(str(tmp_path / "m.parquet"), str(tmp_path)).tasks[0]
    assert isinstance(task.prompts, PromptRows) and len(task.prompts) == 1
    sent = pickle.loads(pickle.dumps(task))
    assert type(sent.prompts) is tuple and sent.prompts == task.prompts and sent == task
    assert sent.prompts[0].mask == {"size": [1080, 1920], "counts": rle["counts"]}
    assert len(pickle.dumps(task)) < 3 * len(rle["counts"])  # one video's mask, not the 40 of the manifest


def test_rows_spread_over_record_batches_come_back_in_the_order_asked(tmp_path):
    """A large manifest is read in record batches; a task's rows (or a digest batch's) may span several."""
    plan = load_manifest(_float_manifest(tmp_path / "f.parquet"), str(tmp_path))
    one = next(t for t in plan.tasks if isinstance(t.prompts, PromptRows)).prompts.source
    table = pa.Table.from_batches(one.batches)
    split = PromptTable(pa.Table.from_batches([table.slice(0, 2).to_batches()[0], table.slice(2, 1).to_batches()[0],
                                               table.slice(3).to_batches()[0]]))
    assert len(split.batches) == 3
    rows = np.array([4, 0, 3, 1, 2])
    assert split.prompts(rows) == one.prompts(rows) and [p.row for p in split.prompts(rows)] == rows.tolist()
    assert split.prompt_json(rows).equals(one.prompt_json(rows))
    assert split.prompts(np.array([3, 4])) == one.prompts(np.array([3, 4]))  # within one batch


def test_the_digest_records_step_and_clip_and_keeps_every_frame_digests(tmp_path):
    rows = [dict(video_id="a", video_uri="a.mp4", obj_id=0, frame_idx=8, points=[[1.0, 2.0]], point_labels=[1]),
            dict(video_id="b", video_uri="b.mp4", obj_id=0, frame_idx=304, box=[0.0, 0.0, 2.0, 2.0],
                 start_frame=300, end_frame=900)]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), path)
    digests = {}
    for step in (1, 2, 4):
        tasks = load_manifest(str(path), str(tmp_path), frame_step=step).tasks
        digested = with_digests(tasks, PRODUCED_BY)
        assert [t.digest for t in digested] == [task_digest(t, PRODUCED_BY) for t in tasks]
        digests.update({(t.video_id, step): t.digest for t in digested})
    assert len(set(digests.values())) == 6  # the step and the clip each change a video's digest
    # every frame, no clip: the bytes earlier releases hashed, so their done videos stay done
    a = next(t for t in load_manifest(str(path), str(tmp_path)).tasks if t.video_id == "a")
    earlier = json.dumps({"video_uri": a.video_uri, "prompts": [[0, 8, [[1.0, 2.0]], [1], None, None]],
                          "produced_by": PRODUCED_BY}, sort_keys=True, separators=(",", ":"))
    assert digests[("a", 1)] == hashlib.sha256(earlier.encode()).hexdigest()
