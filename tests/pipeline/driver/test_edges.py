"""The job edge's path rule, without a job (the job itself: tests/jobs/test_configs.py, marked slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.driver.edges import with_absolute_paths
from tests.pipeline.driver.propagate_support import job_spec


def test_relative_paths_are_the_drivers_and_a_leading_tilde_is_the_home_folder(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    spec = with_absolute_paths(job_spec("m.parquet", "data", "~/runs/a", "127.0.0.1:1"))
    assert spec.output.uri == str(tmp_path / "home" / "runs" / "a")
    assert (spec.data.manifest, spec.data.root) == (str(tmp_path / "m.parquet"), str(tmp_path / "data"))
    remote = with_absolute_paths(job_spec("s3://b/m.parquet", "s3://b/data", "s3://b/out", "127.0.0.1:1"))
    assert (remote.data.manifest, remote.data.root, remote.output.uri) == ("s3://b/m.parquet", "s3://b/data",
                                                                           "s3://b/out")
