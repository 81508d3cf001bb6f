"""Render (mp4 + contact sheet) and export (DAVIS / SA-V PNGs): sizes, frame counts, round trips, bad inputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.dataset.annotations import read_png_video
from pipeline.dataset.export import YtvisWriter, davis_palette, export_files, export_masklets
from pipeline.dataset.manifest_maker import manifest_bytes
from pipeline.io.masklets import Masklets, masklets_to_bytes
from pipeline.io.rle import decode_rle, encode_rles
from pipeline.dataset.render import SheetOptions, object_color, overlay, pick_positions, render_sheet, render_video
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
    assert img.size[0] == 4 * 32 + 5 * 6                   # 4 columns of 32-pixel thumbnails, 6-pixel gaps
    m.provenance = {"checkpoint": "random"}
    first = _decode_mp4(render_video(m, frames, fps=24, thumb_width=32)[0])[0].astype(int)
    assert (np.abs(first[1:8, 40:] - (200, 30, 30)).sum(axis=2) < 60).mean() > 0.5      # the banner on the frames
    assert (np.abs(decoded[0][1:8, 40:].astype(int) - (200, 30, 30)).sum(axis=2) < 60).mean() < 0.1
    with pytest.raises(ValueError, match="video clip: the video gave 5 frames for 12 masklet frames"):
        render_video(m, frames[:5], fps=24)
    with pytest.raises(ValueError, match="video clip frame 0: frame is 40x64, masklets are 48x64"):
        render_video(m, synthetic_frames(T, 40, W), fps=24)


def test_sheet_frames_key_and_random_banner() -> None:
    m = _masklets()
    frames = synthetic_frames(T, H, W)
    assert pick_positions(m, 4) == [0, 4, 7, 11] and pick_positions(m, [7, 2]) == [2, 7]
    with pytest.raises(ValueError, match=r"video clip: sheet.frames \[12, 30\] have no masklets \(masklet frames "
                                         r"0..11, 12 in all\)"):
        pick_positions(m, [3, 12, 30])
    with pytest.raises(ValueError, match="sheet.frames: must be a count >= 1"):
        pick_positions(m, 0)
    opts = SheetOptions(frames=[0, 5], columns=4, width=64, gap=4)
    plain = np.asarray(Image.open(io.BytesIO(render_sheet(m, [frames[0], frames[5]], opts))))
    m.provenance = {"model": "sam2.1_hiera_tiny", "checkpoint": "random"}
    random = np.asarray(Image.open(io.BytesIO(render_sheet(m, [frames[0], frames[5]], opts))))
    assert plain.shape[1] == random.shape[1] == 2 * 64 + 3 * 4 and random.shape[0] > plain.shape[0]
    banner = (random[..., 0] > 150) & (random[..., 1] < 60) & (random[..., 2] < 60)
    assert banner[:12].mean() > 0.5 and not ((plain[..., 0] > 150) & (plain[..., 1] < 60) & (plain[..., 2] < 60))[
        :12].any()
    empty = encode_rles(np.zeros((3, H, W), dtype=bool))
    m.rles = [empty] * T                                    # no masks: an id's colour can only be in the key
    keyed = np.asarray(Image.open(io.BytesIO(render_sheet(m, [frames[0], frames[5]], opts)))).astype(int)
    for obj in m.obj_ids:
        assert (np.abs(keyed - object_color(obj)).sum(axis=2) < 8).sum() >= 25
    with pytest.raises(ValueError, match="video clip: 1 of the sheet's 2 frames were decoded"):
        render_sheet(m, [frames[0]], opts)


def test_export_round_trips(tmp_path: Path) -> None:
    m = _masklets()
    assert export_masklets(m, str(tmp_path / "sav"), "sav_png") == 3 * T
    back = read_png_video(str(tmp_path / "sav" / "clip"))
    assert back.obj_ids == m.obj_ids and back.frame_indices == m.frame_indices and back.rles == m.rles
    assert export_masklets(m, str(tmp_path / "davis"), "davis") == T + 1             # + the id mapping (1, 3, 7)
    img = Image.open(tmp_path / "davis" / "clip" / "00005.png")
    assert img.mode == "P" and img.size == (W, H) and img.getpalette()[:6] == davis_palette()[:6]
    back = read_png_video(str(tmp_path / "davis" / "clip"))
    assert back.obj_ids == [1, 2, 3] and back.rles == m.rles and back.first_appeared == [0, 0, 3]
    dense = _masklets(obj_ids=(1, 2, 3))
    assert export_masklets(dense, str(tmp_path / "dense"), "davis") == T                 # 1..N: ids kept, no map
    assert read_png_video(str(tmp_path / "dense" / "clip")).obj_ids == [1, 2, 3]


def test_davis_export_lower_id_wins_and_remaps_other_ids(tmp_path: Path) -> None:
    m = _masklets(obj_ids=(1, 2, 3), overlap=True)
    export_masklets(m, str(tmp_path), "davis")
    labels = np.asarray(Image.open(tmp_path / "clip" / "00000.png"))
    assert (labels[16:20, :] == 1).all()
    assert not (tmp_path / "clip" / "object_ids.json").exists()
    odd = _masklets(obj_ids=(0, 300, 12))
    assert export_masklets(odd, str(tmp_path / "x"), "davis") == T + 1
    mapping = json.loads((tmp_path / "x" / "clip" / "object_ids.json").read_text())
    assert mapping == {"palette_index": {"1": 0, "2": 12, "3": 300}}
    back = read_png_video(str(tmp_path / "x" / "clip"))
    by_id = {mapping["palette_index"][str(i)]: k for k, i in enumerate(back.obj_ids)}
    for pos in range(T):
        for j, obj in enumerate(odd.obj_ids):
            assert (decode_rle(back.rles[pos][by_id[obj]]) == decode_rle(odd.rles[pos][j])).all()
    many = Masklets("big", 1, 4, 4, list(range(1, 257)), [0], [encode_rles(np.zeros((256, 4, 4), bool))],
                    [[1.0] * 256], [-1] * 256)
    with pytest.raises(ValueError, match="video big: 256 objects do not fit a DAVIS palette"):
        export_masklets(many, str(tmp_path / "y"), "davis")


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
    assert Image.open(prefix / "render" / "clip_sheet.png").size[0] == 4 * 32 + 5 * 6

    run_job("export", f"prefix={prefix}", "format=davis", f"out={tmp_path / 'png'}", "videos=[clip]")
    back = read_png_video(str(tmp_path / "png" / "clip"))
    assert back.rles == _masklets().rles
    proc = run_job("export", f"prefix={prefix}", "videos=[nope]", check=False)
    assert proc.returncode == 2 and "no predictions for videos ['nope']" in proc.stdout


@pytest.mark.slow  # ~13 s; the render job runs end to end in test_render_and_export_jobs
def test_render_job_finds_the_videos_from_the_prefix(tmp_path: Path, run_job) -> None:
    """Given the prefix alone, render reads the manifest and data root the job recorded: in the masklets'
    provenance, else in the prefix's config.yaml."""
    data = tmp_path / "data"
    make_video(data / "vids" / "clip.mp4", synthetic_frames(T, H, W), fps=24)
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(manifest_bytes([{"video_id": "clip", "video_uri": "vids/clip.mp4", "obj_id": 1,
                                          "frame_idx": 0, "box": [2.0, 4.0, 16.0, 14.0]}]))
    data_cfg = {"manifest": str(manifest), "root": str(data)}
    m = _masklets()
    m.provenance = {"model": "sam2.1_hiera_tiny", "checkpoint": "random", "config": {"data": data_cfg}}
    prefix = tmp_path / "run"
    (prefix / "masklets").mkdir(parents=True)
    (prefix / "masklets" / "clip.json").write_bytes(masklets_to_bytes(m, "sav_json"))
    proc = run_job("render", f"prefix={prefix}", "mp4=false", "sheet.frames=[1,4]", "sheet.width=40")
    assert f"videos from manifest {manifest} (from the job's config)" in proc.stdout
    assert not (prefix / "render" / "clip.mp4").exists()
    assert Image.open(prefix / "render" / "clip_sheet.png").size[0] == 2 * 40 + 3 * 6

    m.provenance = {"model": "sam2.1_hiera_tiny"}
    (prefix / "masklets" / "clip.json").write_bytes(masklets_to_bytes(m, "sav_json"))
    (prefix / "config.yaml").write_text(f"data:\n  manifest: {manifest}\n  root: {data}\n")
    run_job("render", f"prefix={prefix}", "sheet.width=32")
    assert len(_decode_mp4((prefix / "render" / "clip.mp4").read_bytes())) == T
    proc = run_job("render", f"prefix={prefix}", "sheet.frames=[40]", check=False)
    assert proc.returncode == 1 and "sheet.frames [40] have no masklets" in proc.stdout
    proc = run_job("render", f"prefix={prefix}", "sheet.frames=abc", check=False)
    assert proc.returncode == 2 and "sheet.frames: a count or a list of frame indices, got 'abc'" in proc.stdout


def test_decoded_masks_match(tmp_path: Path) -> None:
    m = _masklets()
    export_masklets(m, str(tmp_path), "sav_png")
    png = np.asarray(Image.open(tmp_path / "clip" / "003" / "00004.png"))
    assert (png.astype(bool) == decode_rle(m.rles[4][1])).all() and png.max() == 1


LONG = 320                                                  # frames of the video a strided run tracked


def _tracked(video_id: str, frames: list[int]) -> Masklets:
    """Masklets of a run that tracked only ``frames`` of a ``LONG``-frame video (original numbers): object 2 a
    box in the lower right, object 5 absent from the first tracked frame."""
    rles = []
    for k in range(len(frames)):
        masks = np.zeros((2, H, W), dtype=bool)
        masks[0, 30:44, 40:60] = True
        masks[1, 30:40, 24:36] = k > 0
        rles.append(encode_rles(masks))
    return Masklets(video_id, LONG, H, W, [2, 5], frames, rles, [[1.0, 0.5]] * len(frames), [0, 1],
                    {"model": "test"})


def test_strided_and_clipped_runs_render_and_export_their_own_frames(tmp_path: Path, run_job) -> None:
    """Every 4th frame (JSON) and a clip 300, 304, … (Parquet): the mp4 holds exactly the tracked frames, each the
    video's frame of that number, at the video's rate over the step; sheets and exports use the original numbers."""
    video = synthetic_frames(LONG, H, W)
    video[:, :6, :, 2] = (np.arange(LONG) * 255 // LONG)[:, None, None]    # frames the square's period repeats differ
    make_video(tmp_path / "data" / "step.mp4", video, fps=24)
    make_video(tmp_path / "data" / "clip.mp4", video, fps=24)
    step, clip = _tracked("step", list(range(0, LONG, 4))), _tracked("clip", list(range(300, LONG, 4)))
    prefix = tmp_path / "run"
    (prefix / "masklets").mkdir(parents=True)
    (prefix / "masklets" / "step.json").write_bytes(masklets_to_bytes(step, "sav_json"))
    (prefix / "masklets" / "clip.parquet").write_bytes(masklets_to_bytes(clip, "parquet"))

    run_job("render", f"prefix={prefix}", f"data_root={tmp_path / 'data'}", "sheet.width=32")
    for m in (step, clip):
        data = (prefix / "render" / f"{m.video_id}.mp4").read_bytes()
        with av.open(io.BytesIO(data)) as container:
            assert container.streams.video[0].average_rate == 6          # 24 fps over a step of 4
        decoded = _decode_mp4(data)
        assert len(decoded) == len(m.frame_indices)
        for k, f in enumerate(m.frame_indices):
            top = decoded[k][:28].astype(int)                              # above the masks and the frame number
            diff = {g: np.abs(top - video[g][:28]).mean() for g in {f - 1, f, min(f + 1, LONG - 1), k}}
            assert min(diff, key=diff.get) == f, (m.video_id, k, diff)
    first = _decode_mp4((prefix / "render" / "clip.mp4").read_bytes())[0].astype(int)
    assert (np.abs(first[-8:, :8] - (32, 32, 36)).sum(axis=2) < 40).mean() > 0.3   # the frame number's box
    assert pick_positions(clip, [308, 300]) == [0, 2]
    sheet = render_sheet(clip, [video[300], video[308]], SheetOptions(frames=[300, 308], width=32))
    assert Image.open(io.BytesIO(sheet)).size[0] == 2 * 32 + 3 * 6
    with pytest.raises(ValueError, match=r"sheet.frames \[302\] have no masklets \(masklet frames 300..316, 5 in all"):
        pick_positions(clip, [302])

    run_job("export", f"prefix={prefix}", "format=davis")
    export = prefix / "export_davis"
    assert sorted(p.name for p in (export / "clip").glob("*.png")) == [f"{f:05d}.png" for f in clip.frame_indices]
    assert len(list((export / "step").glob("*.png"))) == 80                # no file for an untracked frame
    for m in (step, clip):
        back = read_png_video(str(export / m.video_id))
        assert back.frame_indices == m.frame_indices and back.rles == m.rles
        export_masklets(m, str(tmp_path / "sav_png"), "sav_png")
        sav = read_png_video(str(tmp_path / "sav_png" / m.video_id))
        assert sav.obj_ids == [2, 5] and sav.frame_indices == m.frame_indices and sav.rles == m.rles
    assert [name for name, _ in export_files(clip, "yolo")] == [
        "clip/00300.txt", "clip/00304.txt", "clip/00308.txt", "clip/00312.txt", "clip/00316.txt"]
    writer = YtvisWriter(str(tmp_path / "ytvis"))
    writer.add(step)
    writer.add(clip)
    doc = json.loads(Path(writer.finish()).read_text())
    videos = {v["name"]: v for v in doc["videos"]}
    assert videos["clip"]["frame_indices"] == clip.frame_indices and videos["clip"]["length"] == 5
    assert videos["clip"]["file_names"][0] == "clip/00300.jpg" and videos["step"]["file_names"][1] == "step/00004.jpg"
    obj5 = next(a for a in doc["annotations"] if a["video_id"] == videos["clip"]["id"] and a["sam2_obj_id"] == 5)
    assert obj5["segmentations"][0] is None and len(obj5["segmentations"]) == 5
