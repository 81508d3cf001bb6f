"""Object-storage access: one place that turns config + AWS environment into fsspec filesystems.

Every read/write of the pipeline goes through these helpers so that S3 (any endpoint), local paths and ``file://``
URIs behave the same. Writes are whole-object puts (no temp file + rename), which S3 makes atomic per key.
"""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec.utils import get_protocol

_S3_PROTOCOLS = ("s3", "s3a")
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
    """The filesystem for ``uri`` and the path inside it; S3 options are resolved, local paths take none."""
    protocol = get_protocol(uri)
    if protocol in _S3_PROTOCOLS:
        options = resolve_storage_options(storage_options)
    elif protocol in _LOCAL_PROTOCOLS:
        options = {}
    else:
        options = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return get_protocol(uri) in _LOCAL_PROTOCOLS


def is_absolute_uri(uri: str) -> bool:
    """True for URIs with a protocol (``s3://``, ``file://``) and absolute local paths."""
    return "://" in uri or os.path.isabs(uri)


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
    """Write ``data`` as one whole object (single put on S3; parent folders created locally)."""
    fs, path = filesystem(uri, storage_options)
    if is_local(uri):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)


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
