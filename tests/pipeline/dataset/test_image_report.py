"""The image run's report: a labelled contact sheet of its images with their masks, the banner for random weights,
failed images listed; ``jobs.report`` picks it for an image run's prefix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from jobs.report import report
from pipeline.dataset.image_report import coco_files, image_report
from pipeline.dataset.render import BANNER, SheetOptions, object_color
from pipeline.dataset.specs import ReportSpec, SheetSpec
from pipeline.io.coco import annotation_records, image_record, instances, instances_bytes
from pipeline.io.rle import encode_rles


def _prefix(tmp_path: Path, random: bool) -> tuple[Path, Path]:
    root, prefix = tmp_path / "data", tmp_path / "run"
    (root / "sub").mkdir(parents=True)
    prefix.mkdir()
    images, anns = [], []
    for i in range(3):
        Image.fromarray(np.full((40, 60, 3), 90, dtype=np.uint8)).save(root / "sub" / f"{i}.png")
        images.append(image_record(str(i + 1), f"sub/{i}.png", 40, 60))
        masks = np.zeros((2, 40, 60), dtype=bool)
        masks[0, 5:20, 5:25] = True
        masks[1, 22:38, 30:58] = True
        anns += annotation_records(str(i + 1), [7, 8], [3, None], encode_rles(masks), [0.9, 0.8], [0.9, 0.9])
    images.append(image_record("4", "sub/missing.png", 40, 60))
    (prefix / "annotations.json").write_bytes(instances_bytes(instances(images, anns, {"random_weights": random})))
    (prefix / "summary.json").write_text(json.dumps({"model": "sam2.1_hiera_tiny",
                                                     "failed_images": {"5": "5.png: not a readable image"}}))
    (prefix / "config.yaml").write_text(yaml.safe_dump({"data": {"root": str(root)}}))
    return prefix, root


def test_sheet_labels_banner_and_failures(tmp_path):
    prefix, _ = _prefix(tmp_path, random=True)
    assert coco_files(str(prefix)) == ["annotations.json"] and coco_files(str(tmp_path / "nothing")) == []
    out = tmp_path / "report"
    opts = SheetOptions(columns=2, width=120, alpha=1.0)
    index, images, annotations = image_report(str(prefix), str(out), None, opts, count=10)
    assert (images, annotations) == (4, 6)
    html = Path(index).read_text()
    assert "RANDOM WEIGHTS" in html and "5.png: not a readable image" in html and 'src="images.png"' in html
    sheet = np.asarray(Image.open(out / "images.png"))
    assert tuple(sheet[2, 2]) == BANNER  # the banner strip across the top
    # image 1's first mask, opaque in object 7's colour, at its place in the first tile (scale 2: 60 px -> 120 px)
    colors = {tuple(c) for c in sheet[:160, :130].reshape(-1, 3)}
    assert object_color(7) in colors and object_color(8) in colors
    assert sheet.shape[1] == 6 + 2 * (120 + 6)


def test_no_banner_with_a_checkpoint_and_jobs_report_picks_it(tmp_path, capsys):
    prefix, root = _prefix(tmp_path, random=False)
    assert report(ReportSpec(prefix=str(prefix), data_root=str(root), sheet=SheetSpec(frames=2, width=60))) == 0
    assert "report of 4 images (6 annotations)" in capsys.readouterr().out
    html = (prefix / "report" / "index.html").read_text()
    assert "RANDOM WEIGHTS" not in html and "the first 2 images" in html
    sheet = np.asarray(Image.open(prefix / "report" / "images.png"))
    assert tuple(sheet[2, 2]) == (255, 255, 255)
