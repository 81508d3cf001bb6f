"""Fixtures for the propagate job tests: one real Ray cluster for the session, small real datasets, job runners.

The cluster is a ``ray.cluster_utils.Cluster`` head node started by this (non-driver) process; jobs join it with
``cluster.address=...`` either as a ``python -m jobs.propagate`` subprocess or through ``pipeline.driver.run`` in
process. Models are tiny with random weights at image_size 128, so every run is a few seconds of compute.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator:
    """A one-node Ray cluster (2 CPUs) shared by the session; tests may add nodes and must remove them.

    It binds and advertises 127.0.0.1 only (with tests/conftest.py's Ray setting), so ``address`` is
    ``127.0.0.1:<port>``."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 2, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    yield cluster
    cluster.shutdown()


@pytest.fixture
def run_job(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m jobs.propagate <overrides>`` from the repository root; Hydra's logs go to tmp_path."""
    def run(overrides: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
        cmd = [sys.executable, "-m", "jobs.propagate", *overrides, f"hydra.run.dir={tmp_path / 'hydra'}"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        logging.getLogger(__name__).info("job exit %d\n%s\n%s", proc.returncode, proc.stdout[-4000:],
                                         proc.stderr[-4000:])
        return proc
    return run
