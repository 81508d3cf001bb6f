"""pipeline.io.storage against a real S3 server and the local filesystem."""

from __future__ import annotations

import pytest

from pipeline.io.storage import (create_bytes, exists, filesystem, join_uri, list_names, list_sizes, read_bytes,
                                 resolve_storage_options, write_bytes)


def test_resolve_merges_config_over_env(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "envtoken")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert resolve_storage_options({"client_kwargs": {"endpoint_url": None}})["client_kwargs"]["endpoint_url"] == \
        "http://env:1"
    opts = resolve_storage_options({"key": "cfgkey", "endpoint_url": "http://cfg:2", "secret": None})
    assert opts["key"] == "cfgkey"
    assert opts["secret"] == "envsecret"
    assert opts["token"] == "envtoken"
    assert opts["client_kwargs"] == {"endpoint_url": "http://cfg:2", "region_name": "eu-west-1"}
    assert resolve_storage_options(opts) == opts


def test_resolve_env_only(monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    opts = resolve_storage_options(None)
    assert opts["client_kwargs"] == {"region_name": "us-west-2"}
    assert "key" not in opts


def test_join_uri():
    assert join_uri("s3://b/prefix/", "masklets", "v1.json") == "s3://b/prefix/masklets/v1.json"
    assert join_uri("/data", "/videos/", "a.mp4") == "/data/videos/a.mp4"
    assert join_uri("file:///tmp/x", "y") == "file:///tmp/x/y"


def test_s3_roundtrip_and_listing(s3_server, s3_bucket):
    so = s3_server["storage_options"]
    base = f"s3://{s3_bucket}/run"
    write_bytes(join_uri(base, "a", "x.json"), b"hello", so)
    write_bytes(join_uri(base, "a", "y.json"), b"hi", so)
    write_bytes(join_uri(base, "a", "sub", "z.json"), b"z", so)
    assert read_bytes(f"{base}/a/x.json", so) == b"hello"
    assert exists(f"{base}/a/x.json", so)
    assert not exists(f"{base}/a/missing.json", so)
    assert list_names(f"{base}/a", so) == {"x.json", "y.json", "sub"}
    sizes = list_sizes(f"{base}/a/", so)
    assert sizes["x.json"] == 5 and sizes["sub"] is None
    assert list_names(f"{base}/nothing", so) == set()
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_bytes(f"{base}/a/missing.json", so)


def test_s3_options_from_env(s3_server, s3_bucket, monkeypatch):
    for var, value in s3_server["env"].items():
        monkeypatch.setenv(var, value)
    write_bytes(f"s3://{s3_bucket}/env.txt", b"via env", None)
    assert read_bytes(f"s3://{s3_bucket}/env.txt", {}) == b"via env"


def test_s3_listing_sees_writes_of_other_clients(s3_server, s3_bucket):
    so = s3_server["storage_options"]
    prefix = f"s3://{s3_bucket}/done"
    assert list_names(prefix, so) == set()
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server["endpoint_url"], aws_access_key_id=s3_server["key"],
                          aws_secret_access_key=s3_server["secret"], region_name=s3_server["region"])
    client.put_object(Bucket=s3_bucket, Key="done/v1.json", Body=b"{}")
    assert list_names(prefix, so) == {"v1.json"}


def test_local_paths_and_file_uris(tmp_path):
    write_bytes(str(tmp_path / "deep" / "x.bin"), b"abc")
    assert read_bytes(f"file://{tmp_path}/deep/x.bin") == b"abc"
    assert exists(str(tmp_path / "deep" / "x.bin"))
    assert list_names(f"file://{tmp_path}/deep") == {"x.bin"}
    fs, path = filesystem(str(tmp_path), {"key": "ignored"})
    assert fs.isdir(path)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_create_bytes_lets_exactly_one_writer_win(where, tmp_path, s3_server, s3_bucket):
    """Eight threads race to create one key: one gets True and its bytes stay; the others get False."""
    from concurrent.futures import ThreadPoolExecutor

    if where == "s3":
        uri, so = f"s3://{s3_bucket}/p/_state/claim.json", s3_server["storage_options"]
    else:
        uri, so = str(tmp_path / "p" / "_state" / "claim.json"), None
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: create_bytes(uri, f"writer {i}".encode(), so), range(8)))
    assert won.count(True) == 1
    assert read_bytes(uri, so) == f"writer {won.index(True)}".encode()
    assert create_bytes(uri, b"late", so) is False
    if where == "local":
        assert sorted(p.name for p in (tmp_path / "p" / "_state").iterdir()) == ["claim.json"]  # no temporary left

