"""Fixtures of the jobs tests: the SA-V example annotations, PNG mask folders, and a job runner (subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from tests.jobs.jobdata import REPO, SAV_EXAMPLE


@pytest.fixture
def sav_dir(tmp_path: Path) -> Path:
    """A folder holding the manual annotation of the SA-V example video."""
    d = tmp_path / "sav"
    d.mkdir()
    (d / "sav_000001_manual.json").write_bytes((SAV_EXAMPLE / "sav_000001_manual.json").read_bytes())
    return d


@pytest.fixture
def run_job(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m jobs.<name> overrides…`` in a subprocess (Hydra stays out of the pytest process).

    Hydra's own run folder goes under the test's tmp_path, not the repository.
    """

    def run(name: str, *overrides: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", **(env or {})}
        args = [*overrides, f"hydra.run.dir={tmp_path / 'hydra' / name}"]
        proc = subprocess.run([sys.executable, "-m", f"jobs.{name}", *args], cwd=REPO, env=full_env,
                              capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"jobs.{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run
