"""The HTML report: its pages from a prefix with done and failed videos, then opened in a real headless Chromium
(no console errors, no failed loads, every image decoded, a screenshot with the random-weights banner)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.dataset.manifest_maker import manifest_bytes
from pipeline.dataset.render import RANDOM_WARNING
from pipeline.dataset.report import areas, scores_svg, timeline_svg
from pipeline.io.masklets import Masklets, masklets_to_bytes
from pipeline.io.rle import encode_rles
from tests.helpers import make_video, synthetic_frames
from tests.jobs.browser import check_page, chromium_path

H, W, T = 48, 64, 10

needs_chromium = pytest.mark.skipif(chromium_path() is None and os.environ.get("CI") != "true",
                                    reason="no chromium installed (apt-get install chromium; CI always has it)")


def _masklets(video_id: str, random: bool, data: dict) -> Masklets:
    rles = []
    for t in range(T):
        masks = np.zeros((2, H, W), dtype=bool)
        masks[0, 5:20, 2 + 3 * t:14 + 3 * t] = True
        if 3 <= t < 7:
            masks[1, 25:40, 30:50] = True                 # object 4 is there on frames 3..6 only
        rles.append(encode_rles(masks))
    scores = [[2.0 + 0.1 * t, 1.0 if 3 <= t < 7 else -3.0] for t in range(T)]
    prov = {"model": "sam2.1_hiera_tiny", "checkpoint": "random" if random else "/ckpt/sam2.1_hiera_tiny.pt",
            "config": {"data": data}}
    return Masklets(video_id, T, H, W, [1, 4], list(range(T)), rles, scores, [0, 3], prov)


def _prefix(tmp_path: Path, random: bool = True) -> Path:
    """A job prefix: two videos done, one failed (marker + summary), videos and manifest where its config says."""
    data = tmp_path / "data"
    rows = []
    for v in ("alpha", "beta", "broken"):
        make_video(data / f"{v}.mp4", synthetic_frames(T, H, W, seed=len(v)), fps=24)
        rows += [{"video_id": v, "video_uri": f"{v}.mp4", "obj_id": 1, "frame_idx": 0, "box": [2.0, 5.0, 14.0, 20.0]},
                 {"video_id": v, "video_uri": f"{v}.mp4", "obj_id": 4, "frame_idx": 3, "box": [30.0, 25, 50, 40]}]
    manifest = tmp_path / "manifest.parquet"
    manifest.write_bytes(manifest_bytes(rows))
    prefix = tmp_path / "run"
    (prefix / "masklets").mkdir(parents=True)
    (prefix / "_state" / "failed").mkdir(parents=True)
    cfg = {"manifest": str(manifest), "root": str(data)}
    for v in ("alpha", "beta"):
        (prefix / "masklets" / f"{v}.json").write_bytes(masklets_to_bytes(_masklets(v, random, cfg), "sav_json"))
    reason = "VideoError: broken.mp4: corrupt frame 7 <&>"
    (prefix / "_state" / "failed" / "broken.json").write_text(json.dumps({"video_id": "broken", "reason": reason}))
    (prefix / "summary.json").write_text(json.dumps({
        "model": "sam2.1_hiera_tiny", "checkpoint": "random" if random else "/ckpt/x.pt", "done": 2, "failed": 1,
        "frames_per_second": 3.5, "seconds": 6.0, "failures": {"broken": reason}}))
    return prefix


def test_timeline_and_scores_svg() -> None:
    m = _masklets("alpha", True, {})
    area = areas(m)
    assert area.shape == (2, T) and (area[1] > 0).tolist() == [3 <= t < 7 for t in range(T)]
    svg = timeline_svg(m, area, {4: [3]})
    assert svg.count("<title>id 4: frames 3-6</title>") == 1 and "id 4: prompt on frame 3" in svg
    assert svg.count("<title>id 1: frames 0-9</title>") == 1
    assert scores_svg(m).count("<polyline") == 2
    m.scores = [[float("nan")] * 2 for _ in range(T)]
    assert "no object scores" in scores_svg(m)


def test_report_job_pages(tmp_path: Path, run_job) -> None:
    prefix = _prefix(tmp_path)
    proc = run_job("report", f"prefix={prefix}")
    assert "report of 3 videos (1 failed)" in proc.stdout
    out = prefix / "report"
    assert sorted(p.name for p in out.iterdir()) == ["alpha.html", "alpha_sheet.png", "beta.html", "beta_sheet.png",
                                                     "index.html"]
    index = (out / "index.html").read_text()
    assert RANDOM_WARNING in index and "Failures (1)" in index
    assert "VideoError: broken.mp4: corrupt frame 7 &lt;&amp;&gt;" in index and "<script" not in index
    page = (out / "alpha.html").read_text()
    assert RANDOM_WARNING in page and 'src="alpha_sheet.png"' in page
    # object 4: first on frame 3, present on 4 of 10 frames, 15x20 px, mean score -1.4, prompted on frame 3
    assert "</span>4</td><td>3</td><td>4 / 10</td><td>300</td><td>-1.400</td><td>3</td></tr>" in page
    assert Image.open(out / "alpha_sheet.png").size[0] == 4 * 240 + 5 * 6

    real = _prefix(tmp_path / "real", random=False)
    run_job("report", f"prefix={real}", "videos=[beta]", "sheet.frames=[0,9]")
    assert RANDOM_WARNING not in (real / "report" / "index.html").read_text()
    assert sorted(p.name for p in (real / "report").iterdir()) == ["beta.html", "beta_sheet.png", "index.html"]
    (tmp_path / "real" / "manifest.parquet").unlink()                   # the job's manifest is gone: no sheets
    run_job("report", f"prefix={real}", f"out={tmp_path / 'nosheets'}")
    page = (tmp_path / "nosheets" / "alpha.html").read_text()
    assert "no contact sheet: the job&#x27;s manifest cannot be read" in page and "<img" not in page
    proc = run_job("report", f"prefix={tmp_path / 'nothing'}", check=False)
    assert proc.returncode == 2 and "not the output prefix of a jobs.propagate run" in proc.stdout


@needs_chromium
def test_report_in_headless_chromium(tmp_path: Path, run_job) -> None:
    prefix = _prefix(tmp_path)
    run_job("report", f"prefix={prefix}")
    for page, images in (("index.html", 2), ("alpha.html", 1)):
        seen = check_page((prefix / "report" / page).as_uri())
        (tmp_path / f"{page}.png").write_bytes(seen.screenshot)
        assert seen.errors == [] and seen.broken_images == [] and seen.images == images, page
        shot = np.asarray(Image.open(io.BytesIO(seen.screenshot)).convert("RGB")).astype(int)
        assert shot.shape[1] == 1280 and shot.shape[0] >= 600
        red = (np.abs(shot - (200, 30, 30)).sum(axis=2) < 30)
        assert red[:200].sum() > 5000, page                       # the random-weights banner near the top
        assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 200, page   # the contact sheet's pixels, not a blank


@needs_chromium
def test_browser_check_sees_errors(tmp_path: Path) -> None:
    """The checker itself: a page with a missing image, a console error and an uncaught exception."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><img src="missing.png">'
                    '<script>console.error("boom"); nope();</script></body></html>')
    seen = check_page(page.as_uri(), 400, 300)
    assert seen.broken_images == ["missing.png"] and len(seen.errors) == 3
    assert any("ERR_FILE_NOT_FOUND" in e for e in seen.errors) and "boom" in seen.errors
    assert any("nope is not defined" in e for e in seen.errors)


def _strided_prefix(tmp_path: Path) -> Path:
    """A run that tracked every 4th frame of a 320-frame video (JSON) and a clip 300, 304, … of another (Parquet),
    prompted on frames 0 and 300."""
    data, long = tmp_path / "data", 320
    rows = []
    runs = (("step", list(range(0, long, 4)), "sav_json"), ("clip", list(range(300, long, 4)), "parquet"))
    for v, frames, _ in runs:
        make_video(data / f"{v}.mp4", synthetic_frames(long, H, W), fps=24)
        rows.append({"video_id": v, "video_uri": f"{v}.mp4", "obj_id": 1, "frame_idx": frames[0],
                     "box": [2.0, 5.0, 14.0, 20.0]})
    manifest = tmp_path / "manifest.parquet"
    manifest.write_bytes(manifest_bytes(rows))
    prefix = tmp_path / "run"
    (prefix / "masklets").mkdir(parents=True)
    for v, frames, fmt in runs:
        m = _masklets(v, False, {"manifest": str(manifest), "root": str(data)})
        pick = list(range(len(frames))) if len(frames) <= T else [k * T // len(frames) for k in range(len(frames))]
        m = Masklets(v, long, H, W, m.obj_ids, frames, [m.rles[p] for p in pick], [m.scores[p] for p in pick],
                     m.first_appeared, m.provenance)
        name = f"{v}.json" if fmt == "sav_json" else f"{v}.parquet"
        (prefix / "masklets" / name).write_bytes(masklets_to_bytes(m, fmt))
    return prefix


@needs_chromium
def test_report_of_strided_and_clipped_runs(tmp_path: Path, run_job) -> None:
    """The pages say which frames were tracked and label them with their original numbers; they load cleanly."""
    prefix = _strided_prefix(tmp_path)
    run_job("report", f"prefix={prefix}", "sheet.width=64")
    out = prefix / "report"
    index = (out / "index.html").read_text()
    assert "<td>80 of 320 frames: every 4th, 0-316</td>" in index
    assert "<td>5 of 320 frames: every 4th, 300-316</td>" in index
    step, clip = (out / "step.html").read_text(), (out / "clip.html").read_text()
    assert "80 of 320 frames: every 4th, 0-316" in step and "id 1: prompt on frame 0" in step
    assert "5 of 320 frames: every 4th, 300-316" in clip and "id 1: prompt on frame 300" in clip
    assert "<title>id 4: frames 312-316</title>" in clip                  # object 4 shows from the clip's 4th frame
    assert ">300</text>" in clip and ">316</text>" in clip and "frame 300</text>" in clip    # axis and score labels
    assert "</span>4</td><td>312</td><td>2 / 5</td>" in clip            # first frame by number; 2 of 5 tracked
    seen = check_page((out / "clip.html").as_uri())
    assert seen.errors == [] and seen.broken_images == [] and seen.images == 1
