"""pipeline.io.prefix on real S3 and local folders: layout, markers, resume listing, summary, provenance."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pipeline.io.masklets import MaskletBuilder, read_masklets
from pipeline.io.prefix import make_sink
from pipeline.io.storage import exists, filesystem, list_names, read_bytes, write_bytes
from pipeline.records import ClaimLost, Fault, ProvenanceError, WorkerIdentity, WorkerResult

RETRY_S = 30.0  # transient storage errors are retried this long (the job's default: pipeline.specs.OutputSpec)
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
    sink = make_sink(uri, fmt, so, RETRY_S)
    assert sink.done_ids() == set() and sink.failed_ids() == set()
    written = sink.write(_masklets("v1"))
    assert written == f"{uri}/masklets/v1.{ext}"
    sink.mark_done(WorkerResult("v1", frames=3, objects=2, digest="d1"))
    sink.mark_failed(WorkerResult("v2", Fault.BAD_INPUT, "VideoError: cannot open", attempts=3))
    assert sink.done_ids() == {"v1"} and sink.failed_ids() == {"v2"}
    assert read_masklets(written, so).obj_ids == [0, 2]
    assert sink.read("v1").rles == _masklets("v1").rles
    rec = sink.read_done("v1")
    assert (rec.frames, rec.masklets, rec.digest) == (3, written, "d1")
    failed = sink.read_failed("v2")
    assert (failed.reason, failed.fault, failed.attempts, failed.retryable) == ("VideoError: cannot open",
                                                                               Fault.BAD_INPUT, 3, False)
    # the failed video succeeds in a later run: its failed marker goes away
    sink.write(_masklets("v2"))
    sink.mark_done(WorkerResult("v2"))
    assert sink.done_ids() == {"v1", "v2"} and sink.failed_ids() == set()


def test_markers_written_before_the_typed_records_still_read(out):
    """Resume across the upgrade: done and failed markers in the exact bytes the previous release wrote (the whole
    worker record plus masklets/reason and time, compact JSON, sorted keys), one with a key nobody knows."""
    uri, so = out
    sink = make_sink(uri, "sav_json", so, RETRY_S)
    digest = "5e" * 32
    old_done = ('{"device":"cpu","digest":"%s","dtype":"float32","error":null,"frames":8,"masklets":"%s/masklets/'
                'v1.json","node_id":"9f3c","objects":2,"pid":4242,"retryable":false,"seconds":1.234,"status":"done",'
                '"time":1764750000.5,"video_id":"v1"}' % (digest, uri))
    write_bytes(f"{uri}/_state/done/v1.json", old_done.encode(), so)
    write_bytes(f"{uri}/_state/done/v3.json", old_done.replace('"v1"', '"v3"').replace('"error"', '"extra":[1],'
                                                                                        '"error"').encode(), so)
    old_failed = ('{"attempts":3,"device":"cpu","dtype":"float32","error":"out of memory: CUDA out of memory",'
                  '"fault":"oom","frames":0,"node_id":"9f3c","object_batch":4,"objects":2,"pid":4242,'
                  '"reason":"out of memory: CUDA out of memory","retryable":true,"seconds":0.5,"status":"failed",'
                  '"time":1764750001.0,"video_id":"v2"}')
    write_bytes(f"{uri}/_state/failed/v2.json", old_failed.encode(), so)
    for video_id in ("v1", "v3"):
        sink.write(_masklets(video_id))
    done = sink.done_records()
    assert set(done) == {"v1", "v3"} and done["v1"].digest == digest and done["v3"].digest == digest
    assert (done["v1"].frames, done["v1"].objects, done["v1"].masklets) == (8, 2, f"{uri}/masklets/v1.json")
    assert done["v1"].worker == WorkerIdentity("9f3c", 4242, "cpu", "float32")
    failed = sink.read_failed("v2")
    assert (failed.reason, failed.fault, failed.retryable, failed.attempts, failed.object_batch) == (
        "out of memory: CUDA out of memory", Fault.OUT_OF_MEMORY, True, 3, 4)


def test_done_ids_sees_markers_of_other_sink_instances(out):
    uri, so = out
    a, b = make_sink(uri, "sav_json", so, RETRY_S), make_sink(uri, "sav_json", so, RETRY_S)
    assert b.done_ids() == set()
    for i in range(30):
        a.write(_masklets(f"v{i}"))
        a.mark_done(WorkerResult(f"v{i}"))
    assert b.done_ids() == {f"v{i}" for i in range(30)}


def test_summary_written_with_success_last(out):
    uri, so = out
    sink = make_sink(uri, "sav_json", so, RETRY_S)
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
    sink = make_sink(uri, "sav_json", None, RETRY_S)
    sink.write_summary({"status": "ok", "shard": 0}, "a: 1\n", shard=(0, 2))
    sink.write_summary({"status": "ok", "shard": 1}, "a: 1\n", shard=(1, 2))
    assert list_names(uri) == {"summary-0-of-2.json", "summary-1-of-2.json", "config-0-of-2.yaml",
                               "config-1-of-2.yaml", "_SUCCESS-0-of-2", "_SUCCESS-1-of-2"}
    sink.write_summary({"status": "ok", "all": True}, "a: 1\n", shard=(0, 1))
    assert exists(f"{uri}/_SUCCESS") and exists(f"{uri}/summary.json")


def test_provenance_refuses_other_model_unless_overwrite(out):
    uri, so = out
    sink = make_sink(uri, "sav_json", so, RETRY_S)
    sink.claim(PROV, overwrite=False)
    sink.write(_masklets("v1"))
    sink.mark_done(WorkerResult("v1"))
    # same model, checkpoint and image size: resume, whatever the config or package version
    sink.claim(dict(PROV, package_version="0.2.0", config={}, checkpoint="s3://elsewhere/tiny.pt"))
    other = dict(PROV, checkpoint_sha256="bb" * 32)
    with pytest.raises(ProvenanceError, match="checkpoint_sha256"):
        sink.claim(other)
    with pytest.raises(ProvenanceError, match="model"):
        sink.claim(dict(PROV, model="sam2.1_hiera_large"))
    with pytest.raises(ProvenanceError, match="image_size"):
        sink.claim(dict(PROV, image_size=512))
    assert sink.done_ids() == {"v1"}
    sink.write_summary({"status": "ok"}, "a: 1\n", shard=(1, 2))
    derived = ["report/index.html", "report/v1.html", "render/v1.mp4", "export_davis/v1/00000.png",
               "eval_objects.csv", "eval_videos.csv"]
    for name in [*derived, "notes.txt"]:
        write_bytes(f"{uri}/{name}", b"old model", so)
    sink.claim(other, overwrite=True)
    assert sink.done_ids() == set()
    # the old model's report, renders, exports and scores went too (an S3 server may keep empty folder entries)
    assert all(not exists(f"{uri}/{name}", so) for name in derived)
    assert read_bytes(f"{uri}/notes.txt", so) == b"old model"  # what the tools did not write stays
    assert not exists(f"{uri}/_SUCCESS-1-of-2", so) and not exists(f"{uri}/summary-1-of-2.json", so)
    assert list_names(f"{uri}/masklets", so) == set()
    assert json.loads(read_bytes(f"{uri}/_state/provenance.json", so))["checkpoint_sha256"] == "bb" * 32
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        sink.claim({"model": "x"})


def test_provenance_of_random_weights_compares_seed(tmp_path):
    sink = make_sink(str(tmp_path / "out"), "sav_json", None, RETRY_S)
    random = {"model": "sam2.1_hiera_tiny", "image_size": 128, "checkpoint": "random", "checkpoint_sha256": None,
              "random_seed": 0}
    sink.claim(random)
    sink.write(_masklets("v1"))
    sink.claim(dict(random))
    with pytest.raises(ProvenanceError, match="random_seed"):
        sink.claim(dict(random, random_seed=1))
    with pytest.raises(ProvenanceError, match="checkpoint_sha256"):
        sink.claim(PROV)


def test_provenance_refuses_unrecorded_results(out):
    uri, so = out
    write_bytes(f"{uri}/masklets/old.json", b"{}", so)
    with pytest.raises(ProvenanceError, match="without a provenance record"):
        make_sink(uri, "sav_json", so, RETRY_S).claim(PROV)


def test_bad_arguments_name_the_culprit(tmp_path):
    with pytest.raises(ValueError, match="csv"):
        make_sink(str(tmp_path), "csv", None, RETRY_S)
    with pytest.raises(ValueError, match=r"'\.\./x'"):
        make_sink(str(tmp_path), "sav_json", None, RETRY_S).mark_done(WorkerResult("../x"))


def test_racing_claims_admit_one_identity_only(out):
    """Eight jobs of two checkpoints claim one empty prefix at once (each its own sink): exactly the ones of one
    checkpoint get in, with one token (the shards of one run all get in), and the record is theirs."""
    uri, so = out
    provs = [dict(PROV, checkpoint_sha256=("aa" if i % 2 else "bb") * 32) for i in range(8)]
    sinks = [make_sink(uri, "sav_json", so, RETRY_S) for _ in provs]

    def claim(i):
        try:
            return sinks[i].claim(provs[i])
        except ProvenanceError as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(claim, range(8)))
    record = json.loads(read_bytes(f"{uri}/_state/provenance.json", so))
    admitted = [i for i, o in enumerate(outcomes) if isinstance(o, str)]
    assert admitted == [i for i in range(8) if provs[i]["checkpoint_sha256"] == record["checkpoint_sha256"]]
    assert {outcomes[i] for i in admitted} == {record["claim"]}
    refused = [o for o in outcomes if not isinstance(o, str)]
    assert len(refused) == 4 and all("checkpoint_sha256" in str(e) for e in refused)


def test_a_prefix_taken_over_fences_every_write_of_the_old_claim(out):
    uri, so = out
    driver = make_sink(uri, "sav_json", so, RETRY_S)
    token = driver.claim(PROV)
    worker = make_sink(uri, "sav_json", so, RETRY_S, claim=token)
    worker.write(_masklets("v1"))
    worker.mark_done(WorkerResult("v1"))
    assert driver.holds_claim() and worker.holds_claim()
    other = dict(PROV, checkpoint_sha256="bb" * 32)
    make_sink(uri, "sav_json", so, RETRY_S).claim(other, overwrite=True)
    for write in (lambda: worker.write(_masklets("v2")), lambda: worker.mark_done(WorkerResult("v2")),
                  lambda: driver.mark_failed(WorkerResult("v3", Fault.ERROR, "x")),
                  lambda: driver.write_summary({"status": "ok"}, "a: 1\n")):
        with pytest.raises(ClaimLost, match="taken over by another job"):
            write()
    assert not driver.holds_claim()
    assert list_names(f"{uri}/masklets", so) == set()  # (an S3 server may keep the empty folder entries)
    assert list_names(f"{uri}/_state", so) - {"done", "failed"} == {"provenance.json"}
    assert not list_names(f"{uri}/_state/done", so) and not list_names(f"{uri}/_state/failed", so)
    assert json.loads(read_bytes(f"{uri}/_state/provenance.json", so))["checkpoint_sha256"] == "bb" * 32


def test_the_format_and_the_decoder_are_part_of_the_identity(tmp_path):
    uri = str(tmp_path / "out")
    make_sink(uri, "sav_json", None, RETRY_S).claim(PROV, decoder="decord")
    make_sink(uri, "sav_json", None, RETRY_S).claim(PROV, decoder="decord")  # a resume
    with pytest.raises(ProvenanceError, match=r"holds sav_json masklets, output.format=parquet now "
                                              r"\(output.format=sav_json resumes there\)"):
        make_sink(uri, "parquet", None, RETRY_S).claim(PROV, decoder="decord")
    with pytest.raises(ProvenanceError, match=r"decoded by decord, data.decoder=pyav now"):
        make_sink(uri, "sav_json", None, RETRY_S).claim(PROV, decoder="pyav")
    make_sink(uri, "parquet", None, RETRY_S).claim(PROV, overwrite=True, decoder="pyav")
    record = json.loads((tmp_path / "out" / "_state" / "provenance.json").read_text())
    assert (record["format"], record["decoder"]) == ("parquet", "pyav")


def test_a_record_of_the_previous_release_resumes(tmp_path):
    """A record without format, decoder and claim: its format is that of its masklet files, its decoder the one
    its resolved config names (none: any), and the claim it holds is the empty token."""
    uri = str(tmp_path / "out")
    sink = make_sink(uri, "sav_json", None, RETRY_S)
    sink.write(_masklets("v1"))
    write_bytes(f"{uri}/_state/provenance.json", json.dumps(dict(PROV)).encode())
    assert make_sink(uri, "sav_json", None, RETRY_S).claim(PROV, decoder="pyav") == ""
    worker = make_sink(uri, "sav_json", None, RETRY_S, claim="")
    worker.mark_done(WorkerResult("v1"))  # the fence holds
    with pytest.raises(ProvenanceError, match="holds sav_json masklets"):
        make_sink(uri, "parquet", None, RETRY_S).claim(PROV, decoder="pyav")
    legacy = dict(PROV, config={"data": {"decoder": "decord"}})
    write_bytes(f"{uri}/_state/provenance.json", json.dumps(legacy).encode())
    make_sink(uri, "sav_json", None, RETRY_S).claim(PROV, decoder="decord")
    with pytest.raises(ProvenanceError, match="decoded by decord"):
        make_sink(uri, "sav_json", None, RETRY_S).claim(PROV, decoder="pyav")


def test_a_done_marker_whose_masklet_file_is_gone_is_not_done(out, caplog):
    uri, so = out
    sink = make_sink(uri, "sav_json", so, RETRY_S)
    for video_id in ("v1", "v2"):
        sink.write(_masklets(video_id))
        sink.mark_done(WorkerResult(video_id, digest="d"))
    filesystem(f"{uri}/masklets/v1.json", so)[0].rm_file(filesystem(f"{uri}/masklets/v1.json", so)[1])
    with caplog.at_level(logging.WARNING):
        assert set(sink.done_records()) == {"v2"}
    assert "v1: done marker without its file" in caplog.text


def test_the_shards_of_an_overwrite_run_all_get_in_and_clear_once(tmp_path):
    uri = str(tmp_path / "out")
    make_sink(uri, "sav_json", None, RETRY_S).claim(PROV)
    other = dict(PROV, checkpoint_sha256="bb" * 32)
    first = make_sink(uri, "sav_json", None, RETRY_S)
    token = first.claim(other, overwrite=True)
    first.write(_masklets("v1"))
    first.mark_done(WorkerResult("v1"))
    assert make_sink(uri, "sav_json", None, RETRY_S).claim(other, overwrite=True) == token  # a later shard
    assert first.done_ids() == {"v1"} and first.holds_claim()
