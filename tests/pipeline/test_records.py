"""The cross-process records: markers round-trip through JSON, read the previous release's markers and ignore
unknown keys; the prefix identity is the same JSON object task digests have always hashed."""

from __future__ import annotations

import json

import pytest

from pipeline.records import (DoneMarker, FailedMarker, Fault, PrefixIdentity, Status, WorkerIdentity, WorkerResult)

WORKER = WorkerIdentity("9f3c", 4242, "cuda", "bfloat16")


def test_markers_round_trip_through_json() -> None:
    done = DoneMarker("v1", "ab" * 32, "s3://b/out/masklets/v1.json", 120, 3, 4.5, 1764750000.0, WORKER)
    assert DoneMarker.from_json(json.loads(json.dumps(done.to_json()))) == done
    body = done.to_json()
    assert body["status"] == "done" and body["pid"] == 4242 and body["node_id"] == "9f3c"
    result = WorkerResult("v2", Fault.OUT_OF_MEMORY, "out of memory: CUDA", objects=40, object_batch=8,
                          worker=WORKER, attempts=3)
    failed = FailedMarker.of(result, 1764750001.0)
    assert FailedMarker.from_json(json.loads(json.dumps(failed.to_json()))) == failed
    assert failed.to_json()["fault"] == "oom" and failed.to_json()["reason"] == "out of memory: CUDA"
    died = FailedMarker.of(WorkerResult("v3", Fault.DIED, "worker died: killed", objects=2, attempts=1), 1.0)
    assert "pid" not in died.to_json() and FailedMarker.from_json(died.to_json()).worker is None


def test_a_done_marker_of_the_previous_release_reads_with_its_digest() -> None:
    old = json.loads('{"device":"cpu","digest":"5e5e","dtype":"float32","error":null,"frames":8,'
                     '"masklets":"/out/masklets/v1.json","node_id":"9f3c","objects":2,"pid":4242,"retryable":false,'
                     '"seconds":1.234,"status":"done","time":1764750000.5,"video_id":"v1","added_later":{"x":1}}')
    marker = DoneMarker.from_json(old)
    assert (marker.video_id, marker.digest, marker.frames, marker.objects) == ("v1", "5e5e", 8, 2)
    assert marker.worker == WorkerIdentity("9f3c", 4242, "cpu", "float32")
    assert DoneMarker.from_json({"video_id": "v1"}).digest == ""  # no digest: the job recomputes the video


@pytest.mark.parametrize("body", [[], "v1", {"status": "done"}, {"video_id": "v1", "frames": "many"}])
def test_what_is_not_a_marker_says_so(body: object) -> None:
    with pytest.raises(ValueError):
        DoneMarker.from_json(body)


def test_a_failed_marker_of_the_previous_release_keeps_its_reason() -> None:
    died = {"video_id": "v1", "status": "failed", "frames": 0, "objects": 2, "seconds": 0.0,
            "error": "worker died: SIGKILL", "retryable": True, "attempts": 3, "reason": "worker died: SIGKILL",
            "time": 5.0}  # a death carried no fault kind then
    marker = FailedMarker.from_json(died)
    assert (marker.reason, marker.fault, marker.retryable, marker.worker) == ("worker died: SIGKILL", None, True, None)
    gpu = FailedMarker.from_json({**died, "fault": "device", "node_id": "n", "pid": 1, "device": "cuda",
                                  "dtype": "bfloat16"})
    assert gpu.fault is Fault.GPU_FAULT and gpu.worker == WorkerIdentity("n", 1, "cuda", "bfloat16")


def test_results_say_how_the_video_ended() -> None:
    assert WorkerResult("v").status is Status.DONE and not WorkerResult("v").retryable
    assert not WorkerResult("v", Fault.BAD_INPUT, "VideoError: x").retryable
    final = (Fault.BAD_INPUT, Fault.NO_WORKERS, Fault.CLAIM_LOST)
    assert all(WorkerResult("v", f, "x").retryable for f in Fault if f not in final)
    assert not any(WorkerResult("v", f, "x").retryable for f in final)


def test_the_prefix_identity_is_the_object_digests_hash() -> None:
    prov = {"model": "sam2.1_hiera_tiny", "image_size": 1024, "session": {"fill_hole_area": 8},
            "checkpoint": "/ckpt/tiny.pt", "checkpoint_sha256": "aa" * 32, "package_version": "0.1.0", "config": {}}
    assert PrefixIdentity.of(prov).to_json() == {"model": "sam2.1_hiera_tiny", "image_size": 1024,
                                                 "session": {"fill_hole_area": 8}, "checkpoint_sha256": "aa" * 32}
    random = {"model": "sam2.1_hiera_tiny", "image_size": 128, "checkpoint": "random", "checkpoint_sha256": None,
              "random_seed": 0}
    assert PrefixIdentity.of(random).to_json() == {"model": "sam2.1_hiera_tiny", "image_size": 128, "session": None,
                                                   "checkpoint": "random", "random_seed": 0}
    assert PrefixIdentity.of(random).differences(PrefixIdentity.of(dict(random, random_seed=1))) == {
        "random_seed": (0, 1)}
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        PrefixIdentity.of({"model": "x"})
    # format and decoder: identity, not digest; one a record does not name differs from nothing
    video = dict(prov, format="sav_json", decoder="pyav")
    assert PrefixIdentity.of(video).to_json() == PrefixIdentity.of(prov).to_json()
    assert PrefixIdentity.of(video).differences(PrefixIdentity.of(dict(video, format="parquet", decoder="decord"))) \
        == {"format": ("sav_json", "parquet"), "decoder": ("pyav", "decord")}
    assert PrefixIdentity.of(prov).differences(PrefixIdentity.of(video)) == {}
