"""``jobs.make_manifest coco=…``: an image manifest from a COCO detection file (the bundled sample's is remade)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from tests.jobs.jobdata import REPO


def test_coco_file_gives_the_sample_image_manifest(run_job, tmp_path: Path) -> None:
    made = tmp_path / "images.parquet"
    proc = run_job("make_manifest", f"coco={REPO / 'data/sample_images/instances.json'}", f"manifest={made}")
    assert "wrote" in proc.stdout and "4 objects, 4 images" in proc.stdout
    assert pq.read_table(made).equals(pq.read_table(REPO / "data/sample_images/manifest.parquet"))


def test_exactly_one_source(run_job, tmp_path: Path) -> None:
    proc = run_job("make_manifest", "coco=x.json", "annotations=y", f"manifest={tmp_path / 'm.parquet'}",
                   check=False)
    assert proc.returncode == 2 and "give exactly one of" in proc.stdout + proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": 1}')
    proc = run_job("make_manifest", f"coco={bad}", f"manifest={tmp_path / 'm.parquet'}", check=False)
    assert proc.returncode == 2 and "not a COCO instances file" in proc.stdout + proc.stderr
