"""Render (mp4 + contact sheet) and export (DAVIS / SA-V PNGs): sizes, frame counts, round trips, bad inputs."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.dataset.annotations import read_png_video
from pipeline.dataset.export import davis_palette, export_masklets
from pipeline.masklets import Masklets, decode_rle, encode_rles, masklets_to_bytes
from pipeline.dataset.render import object_color, overlay, render_video
from tests.helpers import make_video, synthetic_frames

H, W, T = 48, 64, 12


def _masklets(video_id: str = "clip", obj_ids: tuple[int, ...] = (1, 3, 7), overlap: bool = False) -> Masklets:
    rles = []
    for t in range(T):
        masks = np.zeros((len(obj_ids), H, W), dtype=bool)
        for k in range(len(obj_ids)):
            if k == 2 and t < 3:
                continue                                   # the last object appears on frame 3
            y, x = 4 + 12 * k, 2 + 3 * t + k
            masks[k, y:y + 10, x:x + 14] = True
        if overlap:
            masks[0, 16:20, :] = True                      # overlaps object 3
        rles.append(encode_rles(masks))
    return Masklets(video_id, T, H, W, list(obj_ids), list(range(T)), rles, [[1.0] * len(obj_ids)] * T,
                    [0, 0, 3], {"model": "test"})


def _decode_mp4(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_colours_are_stable_and_distinct() -> None:
    assert object_color(5) == object_color(5)
    assert len({object_color(i) for i in range(20)}) == 20


def test_overlay_paints_only_the_mask() -> None:
    frame = np.full((H, W, 3), 100, dtype=np.uint8)
    mask = np.zeros((H, W), dtype=bool)
    mask[10:20, 10:30] = True
    out = overlay(frame, [mask], [(255, 0, 0)], alpha=0.5)
    assert (out[~mask & ~np.roll(mask, -1, 0) & ~np.roll(mask, -1, 1) & ~np.roll(np.roll(mask, -1, 0), -1, 1)]
            == 100).all()
    assert tuple(out[15, 20]) == (178, 50, 50)


def test_render_video_frame_count_and_sizes() -> None:
    m = _masklets()
    frames = synthetic_frames(T, H, W)
    mp4, sheet = render_video(m, frames, fps=24, sheet_frames=6, sheet_columns=4, thumb_width=32)
    decoded = _decode_mp4(mp4)
    assert len(decoded) == T and decoded[0].shape == (H, W, 3)
    img = Image.open(io.BytesIO(sheet))
    assert img.size == (4 * 32, 2 * 24)                    # 6 thumbnails of 32x24 in rows of 4
    with pytest.raises(ValueError, match="video clip: the video gave 5 frames for 12 masklet frames"):
        render_video(m, frames[:5], fps=24)
    with pytest.raises(ValueError, match="video clip frame 0: frame is 40x64, masklets are 48x64"):
        render_video(m, synthetic_frames(T, 40, W), fps=24)


def test_export_round_trips(tmp_path: Path) -> None:
    m = _masklets()
    assert export_masklets(m, str(tmp_path / "sav"), "sav_png") == 3 * T
    back = read_png_video(str(tmp_path / "sav" / "clip"))
    assert back.obj_ids == m.obj_ids and back.frame_indices == m.frame_indices and back.rles == m.rles
    assert export_masklets(m, str(tmp_path / "davis"), "davis") == T
    img = Image.open(tmp_path / "davis" / "clip" / "00005.png")
    assert img.mode == "P" and img.size == (W, H) and img.getpalette()[:6] == davis_palette()[:6]
    back = read_png_video(str(tmp_path / "davis" / "clip"))
    assert back.obj_ids == m.obj_ids and back.rles == m.rles and back.first_appeared == [0, 0, 3]


def test_davis_export_lower_id_wins_and_rejects_id_0(tmp_path: Path) -> None:
    m = _masklets(overlap=True)
    export_masklets(m, str(tmp_path), "davis")
    labels = np.asarray(Image.open(tmp_path / "clip" / "00000.png"))
    assert (labels[16:20, :] == 1).all()
    with pytest.raises(ValueError, match=r"video clip: object ids \[0\] cannot be DAVIS palette indices"):
        export_masklets(_masklets(obj_ids=(0, 1, 2)), str(tmp_path / "x"), "davis")


def test_render_and_export_jobs(tmp_path: Path, run_job) -> None:
    data = tmp_path / "data"
    make_video(data / "clip.mp4", synthetic_frames(T, H, W), fps=24)
    prefix = tmp_path / "run"
    (prefix / "masklets").mkdir(parents=True)
    (prefix / "masklets" / "clip.json").write_bytes(masklets_to_bytes(_masklets(), "sav_json"))
    (prefix / "masklets" / "gone.json").write_bytes(masklets_to_bytes(_masklets("gone"), "sav_json"))

    proc = run_job("render", f"prefix={prefix}", f"data_root={data}", "sheet.width=32", check=False)
    assert proc.returncode == 1                             # gone.mp4 does not exist: named, the other rendered
    assert "video gone: render failed" in proc.stdout and "rendered 1 videos" in proc.stdout
    decoded = _decode_mp4((prefix / "render" / "clip.mp4").read_bytes())
    assert len(decoded) == T and decoded[0].shape == (H, W, 3)
    assert Image.open(prefix / "render" / "clip_sheet.png").size == (4 * 32, 2 * 24)

    run_job("export", f"prefix={prefix}", "format=davis", f"out={tmp_path / 'png'}", "videos=[clip]")
    back = read_png_video(str(tmp_path / "png" / "clip"))
    assert back.rles == _masklets().rles
    proc = run_job("export", f"prefix={prefix}", "videos=[nope]", check=False)
    assert proc.returncode != 0 and "no predictions for videos ['nope']" in proc.stderr


def test_decoded_masks_match(tmp_path: Path) -> None:
    m = _masklets()
    export_masklets(m, str(tmp_path), "sav_png")
    png = np.asarray(Image.open(tmp_path / "clip" / "003" / "00004.png"))
    assert (png.astype(bool) == decode_rle(m.rles[4][1])).all() and png.max() == 1
