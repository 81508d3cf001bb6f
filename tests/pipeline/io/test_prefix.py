"""pipeline.io.prefix on real S3 and local folders: layout, markers, resume listing, summary, provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.io.masklets import MaskletBuilder, read_masklets
from pipeline.driver.provenance import ProvenanceError
from pipeline.io.prefix import make_sink
from pipeline.io.storage import exists, list_names, read_bytes, write_bytes

PROV = {"model": "sam2.1_hiera_tiny", "image_size": 1024, "checkpoint": "/ckpt/tiny.pt", "checkpoint_sha256": "aa" * 32,
        "package_version": "0.1.0", "config": {"cluster": {"num_workers": 2}}}


def _masklets(video_id):
    b = MaskletBuilder(video_id, 3, 8, 10, [0, 2], provenance=PROV)
    for f in range(3):
        m = np.zeros((2, 8, 10), bool)
        m[0, f:f + 2, 1:4] = True
        b.add_frame(f, m, [1.0, -2.0])
    return b.build()


@pytest.fixture(params=["s3", "local"])
def out(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out"), None
    s3 = request.getfixturevalue("s3_server")
    return f"s3://{s3['make_bucket']()}/runs/r1", s3["storage_options"]


@pytest.mark.parametrize("fmt,ext", [("sav_json", "json"), ("parquet", "parquet")])
def test_layout_markers_and_resume(out, fmt, ext):
    uri, so = out
    sink = make_sink(uri, fmt, so)
    assert sink.done_ids() == set() and sink.failed_ids() == set()
    written = sink.write(_masklets("v1"))
    assert written == f"{uri}/masklets/v1.{ext}"
    sink.mark_done("v1", {"frames": 3, "objects": 2})
    sink.mark_failed("v2", "VideoError: cannot open", {"attempts": 3})
    assert sink.done_ids() == {"v1"} and sink.failed_ids() == {"v2"}
    assert read_masklets(written, so).obj_ids == [0, 2]
    assert sink.read("v1").rles == _masklets("v1").rles
    rec = sink.read_record("v1")
    assert rec["frames"] == 3 and rec["masklets"] == written
    assert sink.read_record("v2", "failed")["reason"] == "VideoError: cannot open"
    # the failed video succeeds in a later run: its failed marker goes away
    sink.write(_masklets("v2"))
    sink.mark_done("v2", {})
    assert sink.done_ids() == {"v1", "v2"} and sink.failed_ids() == set()


def test_done_ids_sees_markers_of_other_sink_instances(out):
    uri, so = out
    a, b = make_sink(uri, "sav_json", so), make_sink(uri, "sav_json", so)
    assert b.done_ids() == set()
    for i in range(30):
        a.write(_masklets(f"v{i}"))
        a.mark_done(f"v{i}", {})
    assert b.done_ids() == {f"v{i}" for i in range(30)}


def test_summary_written_with_success_last(out):
    uri, so = out
    sink = make_sink(uri, "sav_json", so)
    sink.write_summary({"status": "ok", "done": 3, "failed": 0}, "model:\n  name: tiny\n")
    assert json.loads(read_bytes(f"{uri}/summary.json", so)) == {"status": "ok", "done": 3, "failed": 0}
    assert read_bytes(f"{uri}/config.yaml", so).decode().startswith("model:")
    assert exists(f"{uri}/_SUCCESS", so)
    # a later run where videos failed: its summary, and no _SUCCESS (the earlier one is removed)
    sink.write_summary({"status": "failed", "done": 2, "failed": 1}, "model:\n  name: tiny\n")
    assert json.loads(read_bytes(f"{uri}/summary.json", so))["failed"] == 1
    assert not exists(f"{uri}/_SUCCESS", so)


def test_sharded_summaries_do_not_collide(tmp_path):
    uri = str(tmp_path / "out")
    sink = make_sink(uri)
    sink.write_summary({"status": "ok", "shard": 0}, "a: 1\n", shard=(0, 2))
    sink.write_summary({"status": "ok", "shard": 1}, "a: 1\n", shard=(1, 2))
    assert list_names(uri) == {"summary-0-of-2.json", "summary-1-of-2.json", "config-0-of-2.yaml",
                               "config-1-of-2.yaml", "_SUCCESS-0-of-2", "_SUCCESS-1-of-2"}
    sink.write_summary({"status": "ok", "all": True}, "a: 1\n", shard=(0, 1))
    assert exists(f"{uri}/_SUCCESS") and exists(f"{uri}/summary.json")


def test_provenance_refuses_other_model_unless_overwrite(out):
    uri, so = out
    sink = make_sink(uri, "sav_json", so)
    sink.check_provenance(PROV, overwrite=False)
    sink.write(_masklets("v1"))
    sink.mark_done("v1", {})
    # same model, checkpoint and image size: resume, whatever the config or package version
    sink.check_provenance(dict(PROV, package_version="0.2.0", config={}, checkpoint="s3://elsewhere/tiny.pt"))
    other = dict(PROV, checkpoint_sha256="bb" * 32)
    with pytest.raises(ProvenanceError, match="checkpoint_sha256"):
        sink.check_provenance(other)
    with pytest.raises(ProvenanceError, match="model"):
        sink.check_provenance(dict(PROV, model="sam2.1_hiera_large"))
    with pytest.raises(ProvenanceError, match="image_size"):
        sink.check_provenance(dict(PROV, image_size=512))
    assert sink.done_ids() == {"v1"}
    sink.write_summary({"status": "ok"}, "a: 1\n", shard=(1, 2))
    sink.check_provenance(other, overwrite=True)
    assert sink.done_ids() == set()
    assert not exists(f"{uri}/_SUCCESS-1-of-2", so) and not exists(f"{uri}/summary-1-of-2.json", so)
    assert list_names(f"{uri}/masklets", so) == set()
    assert json.loads(read_bytes(f"{uri}/_state/provenance.json", so))["checkpoint_sha256"] == "bb" * 32
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        sink.check_provenance({"model": "x"})


def test_provenance_of_random_weights_compares_seed(tmp_path):
    sink = make_sink(str(tmp_path / "out"))
    random = {"model": "sam2.1_hiera_tiny", "image_size": 128, "checkpoint": "random", "checkpoint_sha256": None,
              "random_seed": 0}
    sink.check_provenance(random)
    sink.write(_masklets("v1"))
    sink.check_provenance(dict(random))
    with pytest.raises(ProvenanceError, match="random_seed"):
        sink.check_provenance(dict(random, random_seed=1))
    with pytest.raises(ProvenanceError, match="checkpoint_sha256"):
        sink.check_provenance(PROV)


def test_provenance_refuses_unrecorded_results(out):
    uri, so = out
    write_bytes(f"{uri}/masklets/old.json", b"{}", so)
    with pytest.raises(ProvenanceError, match="without a provenance record"):
        make_sink(uri, "sav_json", so).check_provenance(PROV)


def test_bad_arguments_name_the_culprit(tmp_path):
    with pytest.raises(ValueError, match="csv"):
        make_sink(str(tmp_path), "csv")
    with pytest.raises(ValueError, match=r"'\.\./x'"):
        make_sink(str(tmp_path)).mark_done("../x", {})
