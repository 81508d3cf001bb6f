"""Annotation readers: the real SA-V example JSON, DAVIS palette PNGs, SA-V per-object PNG folders, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset.annotations import (AnnotationError, find_annotations, read_annotation, read_png_video,
                                  read_sav_json)
from pipeline.io.rle import decode_rle
from tests.jobs.jobdata import SAV_EXAMPLE, write_png


def test_sav_json_frames_are_every_4th_video_frame() -> None:
    m = read_sav_json(str(SAV_EXAMPLE / "sav_000001_manual.json"))
    assert (m.video_id, m.frame_count, m.height, m.width) == ("sav_000001", 483, 848, 480)
    assert m.obj_ids == [0, 1, 2, 3, 4]
    assert m.frame_indices == [4 * i for i in range(121)]
    assert m.first_appeared == [0, 0, 0, 113, 0]
    raw = json.loads((SAV_EXAMPLE / "sav_000001_manual.json").read_text())
    assert m.rles[113][3] == raw["masklet"][113][3]


def test_manual_and_auto_merge_with_shifted_ids() -> None:
    found = find_annotations(str(SAV_EXAMPLE), kinds=["manual", "auto"])
    assert list(found) == ["sav_000001"]
    m = read_annotation(found["sav_000001"], "sav_000001")
    assert m.obj_ids == list(range(5 + 9))
    assert all(len(frame) == 14 for frame in m.rles)


def test_not_sav_json_is_named(tmp_path: Path) -> None:
    (tmp_path / "x_manual.json").write_text(json.dumps({"video_id": "x", "annotations": []}))
    with pytest.raises(AnnotationError, match=r"x_manual.json: not an SA-V annotation, missing keys"):
        read_sav_json(str(tmp_path / "x_manual.json"))
    (tmp_path / "y.json").write_text("[1, 2")
    with pytest.raises(AnnotationError, match=r"y.json: not JSON"):
        read_sav_json(str(tmp_path / "y.json"))
    d = json.loads((SAV_EXAMPLE / "sav_000001_manual.json").read_text())
    d["masklet"][7] = d["masklet"][7][:2]
    (tmp_path / "z_manual.json").write_text(json.dumps(d))
    with pytest.raises(AnnotationError, match=r"z_manual.json: masklet frame 7 must list 5 RLEs"):
        read_sav_json(str(tmp_path / "z_manual.json"))


def _labels(t: int) -> np.ndarray:
    lab = np.zeros((24, 32), dtype=np.uint8)
    lab[2 + t:8 + t, 3:9] = 1
    lab[12:20, 10 + t:20 + t] = 5
    return lab


def test_davis_palette_folder(tmp_path: Path) -> None:
    for t in (0, 4, 8):
        write_png(tmp_path / "vid" / f"{t:05d}.png", _labels(t))
    m = read_png_video(str(tmp_path / "vid"))
    assert (m.video_id, m.obj_ids, m.frame_indices, m.height, m.width) == ("vid", [1, 5], [0, 4, 8], 24, 32)
    for pos, t in enumerate((0, 4, 8)):
        assert (decode_rle(m.rles[pos][1]) == (_labels(t) == 5)).all()


def test_sav_object_folders_may_overlap(tmp_path: Path) -> None:
    a = np.zeros((16, 16), dtype=np.uint8)
    a[2:10, 2:10] = 1
    b = np.zeros((16, 16), dtype=np.uint8)
    b[5:14, 5:14] = 255
    for f in (0, 4):
        write_png(tmp_path / "v" / "000" / f"{f:05d}.png", a)
        write_png(tmp_path / "v" / "002" / f"{f:05d}.png", b, palette=False)
    m = read_png_video(str(tmp_path / "v"))
    assert m.obj_ids == [0, 2] and m.frame_indices == [0, 4]
    assert (decode_rle(m.rles[1][0]) == (a > 0)).all() and (decode_rle(m.rles[1][1]) == (b > 0)).all()


def test_png_sizes_must_agree(tmp_path: Path) -> None:
    write_png(tmp_path / "v" / "00000.png", np.ones((10, 12), dtype=np.uint8))
    write_png(tmp_path / "v" / "00004.png", np.ones((10, 14), dtype=np.uint8))
    with pytest.raises(AnnotationError, match=r"v/00004.png: mask is 10x14, earlier masks of the video are 10x12"):
        read_png_video(str(tmp_path / "v"))


def test_png_layout_errors(tmp_path: Path) -> None:
    write_png(tmp_path / "v" / "00000.png", np.ones((4, 4), dtype=np.uint8))
    write_png(tmp_path / "v" / "001" / "00000.png", np.ones((4, 4), dtype=np.uint8))
    with pytest.raises(AnnotationError, match="expected either frame PNGs"):
        read_png_video(str(tmp_path / "v"))
    write_png(tmp_path / "w" / "frame_a.png", np.ones((4, 4), dtype=np.uint8))
    with pytest.raises(AnnotationError, match="frame_a.png: PNG name is not a frame index"):
        read_png_video(str(tmp_path / "w"))
