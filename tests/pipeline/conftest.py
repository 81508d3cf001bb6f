"""Fixtures for the propagate job tests: one real Ray cluster for the session, small real datasets, job runners.

The cluster is a ``ray.cluster_utils.Cluster`` head node started by this (non-driver) process; jobs join it with
``cluster.address=...`` either as a ``python -m jobs.propagate`` subprocess or through ``pipeline.driver.run`` in
process. Models are tiny with random weights at image_size 128, so every run is a few seconds of compute.
"""

from __future__ import annotations

import logging
import os
import signal
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


@pytest.fixture
def start_job(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``python -m jobs.<name> args`` from the repository root, for a test that acts on the running job.

    Its output goes to the file ``proc.log`` (no pipe to drain). SIGINT stops it as Ctrl-C stops a command in a
    terminal even when this test run ignores SIGINT, as a command started in the background (``cmd &``) does: an
    ignored signal would stay ignored in the job. Whatever is still running when the test ends is killed."""
    started: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        log = tmp_path / f"{name}-{len(started)}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        if ignored:  # a handled signal is reset to the default in the child, an ignored one is not
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with open(log, "w") as sink:
                proc = subprocess.Popen([sys.executable, "-m", f"jobs.{name}", *args], cwd=REPO, env=env,
                                        stdout=sink, stderr=subprocess.STDOUT, text=True)
        finally:
            if ignored:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        proc.log = log
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
