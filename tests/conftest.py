"""Shared fixtures: a real S3 server (SeaweedFS) on 127.0.0.1 for the whole test session.

``s3_server`` yields a dict with stable keys:
  endpoint_url, key, secret, region  -- connection facts
  storage_options                    -- s3fs kwargs (pass to pipeline.io.storage helpers / model.storage_options)
  env                                -- AWS_* environment variables for the same server (for subprocesses / Ray)
  make_bucket(prefix="test") -> str  -- create a fresh, uniquely named bucket and return its name
  data_dir, process                  -- the server's temp dir and Popen handle (for diagnostics only)
``s3_bucket`` gives each test a fresh bucket name on that server.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per process: the suite runs on 2 cores next to Ray workers and an S3 server.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Every Ray the tests start (the cluster fixture, ``address=local`` jobs, drivers joining by address in this process
# or in job subprocesses, which inherit this environment) stays on the loopback interface. On Linux, Ray turns a
# "127.0.0.1" or "localhost" node or bootstrap address into the machine's interface address; this switch (Ray's
# "no multi-machine cluster" mode, read when ray is imported) makes it keep 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from typing import Iterator

import pytest

from testkit.seaweedfs import local_s3


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict]:
    """A SeaweedFS server with S3 auth on free 127.0.0.1 ports; torn down at the end of the session."""
    with local_s3() as s3:
        yield {
            "endpoint_url": s3.endpoint_url,
            "key": s3.key,
            "secret": s3.secret,
            "region": s3.region,
            "storage_options": s3.storage_options,
            "env": s3.env,
            "make_bucket": s3.make_bucket,
            "data_dir": s3.data_dir,
            "process": s3.process,
        }


@pytest.fixture
def s3_bucket(s3_server: dict) -> str:
    """A fresh empty bucket on the session's S3 server."""
    return s3_server["make_bucket"]()
