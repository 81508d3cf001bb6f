"""Object-storage access: one place that turns config + AWS environment into fsspec filesystems.

Every read/write of the pipeline goes through these helpers so that S3 (any endpoint), local paths and ``file://``
URIs behave the same. Writes are atomic: whole-object puts on object stores, a temporary name in the same folder
renamed over the final one on local disks (so a full disk never leaves a truncated file under the final name).
Errors are classified: ``is_transient`` tells an outage (connection refused or reset, timeouts, throttling, 5xx, a
full disk) from a permanent refusal (missing object, access denied), and ``retrying`` retries the former with
exponential backoff and jitter for a bounded time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
from fsspec.utils import get_protocol

log = logging.getLogger(__name__)
T = TypeVar("T")

_S3_PROTOCOLS = ("s3", "s3a")
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                     errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.ENOSPC, errno.EAGAIN, errno.EBUSY}
# exception class names of botocore / aiohttp / urllib3 that mean "the service did not answer (well) this time"
_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                    "ClientConnectorError", "ClientOSError", "ServerDisconnectedError", "ServerTimeoutError",
                    "ProtocolError", "IncompleteReadError", "ResponseStreamingError", "ClientPayloadError"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "ServiceUnavailable", "InternalError", "503", "500", "502", "504"}
_LOCAL_PROTOCOLS = ("file", "local")
_ENV_KEYS = {
    "key": "AWS_ACCESS_KEY_ID",
    "secret": "AWS_SECRET_ACCESS_KEY",
    "token": "AWS_SESSION_TOKEN",
}


def resolve_storage_options(options: dict | None) -> dict:
    """s3fs kwargs: ``options`` (config; None values ignored) merged over the standard AWS env vars.

    ``endpoint_url`` / ``region_name`` given at the top level are moved into ``client_kwargs`` (where s3fs
    wants them). Listing caches are off by default so that done markers written by other processes are seen.
    Idempotent: resolving an already resolved dict gives the same dict.
    """
    given = {k: v for k, v in (options or {}).items() if v is not None}
    client_kwargs = {k: v for k, v in (given.pop("client_kwargs", None) or {}).items() if v is not None}
    for k in ("endpoint_url", "region_name"):
        if k in given:
            client_kwargs[k] = given.pop(k)
    if "region" in given:
        client_kwargs["region_name"] = given.pop("region")
    resolved: dict[str, Any] = {}
    for opt, env in _ENV_KEYS.items():
        if os.environ.get(env):
            resolved[opt] = os.environ[env]
    env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    env_region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    merged_client = {}
    if env_endpoint:
        merged_client["endpoint_url"] = env_endpoint
    if env_region:
        merged_client["region_name"] = env_region
    merged_client.update(client_kwargs)
    resolved["use_listings_cache"] = False
    resolved.update(given)
    if merged_client:
        resolved["client_kwargs"] = merged_client
    return resolved


def filesystem(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``uri`` and the path inside it; S3 options are resolved, local paths take none; for a
    chained URI (``tar://member::s3://bucket/shard.tar``) the options go to the innermost filesystem."""
    protocols = uri_protocols(uri)
    inner = protocols[-1]  # where the bytes are; outer layers (tar://member::s3://...) read through it
    if inner in _S3_PROTOCOLS:
        options = resolve_storage_options(storage_options)
    elif inner in _LOCAL_PROTOCOLS:
        options = {}
    else:
        options = dict(storage_options or {})
    if len(protocols) > 1:
        options = {inner: options} if options else {}
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return get_protocol(uri) in _LOCAL_PROTOCOLS


def is_absolute_uri(uri: str) -> bool:
    """True for URIs with a protocol (``s3://``, ``file://``) and absolute local paths."""
    return "://" in uri or os.path.isabs(uri)


def uri_protocols(uri: str) -> list[str]:
    """Every protocol of a (possibly chained, ``tar://member::s3://bucket/x.tar``) URI; plain paths are "file"."""
    parts = uri.split("::")
    return [get_protocol(p) if "://" in p else (p if i < len(parts) - 1 else "file") for i, p in enumerate(parts)]


def join_uri(base: str, *parts: str) -> str:
    """``base`` joined with ``parts`` by single slashes (works for URIs and POSIX paths)."""
    out = base.rstrip("/") if base not in ("/", "") else base
    for p in parts:
        p = p.strip("/")
        if not p:
            continue
        out = f"{out}/{p}" if out and not out.endswith("/") else f"{out}{p}"
    return out


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    """The whole object at ``uri``; FileNotFoundError names the uri when it is absent."""
    fs, path = filesystem(uri, storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{uri}: no such object") from e


def write_bytes(uri: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` atomically: one whole-object put on object stores; locally a temporary file in the same
    folder, flushed to disk and renamed over ``uri`` (parent folders created)."""
    fs, path = filesystem(uri, storage_options)
    if not is_local(uri):
        fs.pipe_file(path, data)
        return
    tmp = _complete_temporary(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _complete_temporary(path: str, data: bytes) -> str:
    """A local temporary file beside ``path`` (parent folders created) holding ``data``, flushed to disk: what an
    atomic local write renames or links to its final name."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return tmp


def create_bytes(uri: str, data: bytes, storage_options: dict | None = None) -> bool:
    """Write ``data`` at ``uri`` only if nothing is there, atomically: True when this call created it, False when
    an object already existed (whoever wrote it). Two writers racing for one key: exactly one gets True.

    S3: a conditional put (``If-None-Match: *``). Local disks: a complete temporary file hard-linked to the final
    name (the link fails if the name exists, and a reader never sees a partial file). Other stores: check, then
    write (no stronger primitive is offered there)."""
    fs, path = filesystem(uri, storage_options)
    if not is_local(uri):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        return True
    tmp = _complete_temporary(path, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _precondition_failed(exc: BaseException) -> bool:
    """Whether an object store refused a conditional write because the object exists (HTTP 412)."""
    e: BaseException | None = exc
    while e is not None:
        error = getattr(e, "response", None)
        if isinstance(error, dict) and (error.get("Error", {}).get("Code") == "PreconditionFailed"
                                        or error.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412):
            return True
        if "pre-conditions you specified did not hold" in str(e) or "PreconditionFailed" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def exists(uri: str, storage_options: dict | None = None) -> bool:
    """Whether an object (or folder) exists at ``uri``."""
    fs, path = filesystem(uri, storage_options)
    return fs.exists(path)


def list_sizes(prefix_uri: str, storage_options: dict | None = None) -> dict[str, int | None]:
    """Names directly under ``prefix_uri`` → object size (None for sub-folders); empty if the prefix is absent.

    One listing call (paginated by the store), so it stays cheap for tens of thousands of entries.
    """
    fs, path = filesystem(prefix_uri, storage_options)
    path = path.rstrip("/")
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    out: dict[str, int | None] = {}
    for e in entries:
        full = e["name"].rstrip("/")
        if full == path:  # a folder marker object (or an emptied folder) lists as itself
            continue
        name = full.rsplit("/", 1)[-1]
        out[name] = int(e["size"]) if e.get("type") == "file" and e.get("size") is not None else None
    return out


def list_names(prefix_uri: str, storage_options: dict | None = None) -> set[str]:
    """Base names of the entries directly under ``prefix_uri`` (one listing); empty if the prefix is absent."""
    return set(list_sizes(prefix_uri, storage_options))


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is an outage worth retrying rather than a permanent refusal."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in _TRANSIENT_NAMES:
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        error = getattr(e, "response", None)
        if isinstance(error, dict):
            code = str(error.get("Error", {}).get("Code", ""))
            status = error.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
                return True
        if any(word in str(e) for word in ("SlowDown", "Service Unavailable", "Connection reset",
                                             "Connection refused", "Could not connect")):
            return True
        e = e.__cause__ or e.__context__
    return False


def retrying(action: Callable[[], T], what: str, retry_s: float) -> T:
    """``action()``, retried on transient errors with exponential backoff (0.5 s doubling to 15 s, jitter ±50%)
    for at most ``retry_s`` seconds; the last error is raised once the time is up, a permanent one at once."""
    deadline = time.monotonic() + retry_s
    delay = 0.5
    while True:
        try:
            return action()
        except Exception as exc:
            left = deadline - time.monotonic()
            if not is_transient(exc) or left <= 0:
                raise
            wait = min(delay * random.uniform(0.5, 1.5), left)
            log.warning("%s: %s: %s; retrying in %.1f s", what, type(exc).__name__, exc, wait)
            time.sleep(wait)
            delay = min(delay * 2, 15.0)
