"""The output prefix is claimed atomically and every write is fenced by the claim, on real parts: two real jobs of
other checkpoints started together on one prefix (local disk and SeaweedFS), a job whose prefix another takes over
while its worker is busy, a masklet file deleted behind its done marker, a switched output format or decoder."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline.driver.job import EXIT_REFUSED, EXIT_OK, run
from pipeline.io.masklets import read_masklets
from pipeline.io.prefix import make_sink
from pipeline.io.storage import list_names, read_bytes
from tests.pipeline.driver.propagate_support import REPO, job_overrides, job_spec, point_videos

FAULTS = "tests.pipeline.driver.fault_workers.FaultWorker"


# the local race is also run at the storage level (tests/pipeline/io/test_prefix.py), so the default suite runs
# the real jobs on S3 only, where the bug was found
@pytest.mark.parametrize("where", [pytest.param("local", marks=pytest.mark.slow), "s3"])
def test_two_jobs_of_other_checkpoints_started_together_on_one_prefix_one_runs(tmp_path, ray_cluster, where,
                                                                              request):
    """Both real jobs start at once; whichever claims the prefix first runs, the other is refused in one line
    before any work, and every masklet and the provenance record are the winner's."""
    manifest, _ = point_videos(tmp_path, n=2, frames=4, seed=30)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    out, so, options = str(tmp_path / "out"), None, {}
    if where == "s3":
        server = request.getfixturevalue("s3_server")  # started for the S3 case only
        out, so = f"s3://{server['make_bucket']()}/out", server["storage_options"]
        options = {"output.storage_options": f"{{key: {server['key']}, secret: {server['secret']}, client_kwargs: "
                                             f"{{endpoint_url: '{server['endpoint_url']}', region_name: us-east-1}}}}"}
    jobs = [subprocess.Popen([sys.executable, "-m", "jobs.propagate",
                              *job_overrides(manifest, str(tmp_path), out, ray_cluster.address, **{
                                  "model.seed": seed, "data.decoder": "pyav", **options}),
                              f"hydra.run.dir={tmp_path / f'hydra{seed}'}"],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for seed in (0, 1)]
    logs = [job.communicate(timeout=900)[0] for job in jobs]
    codes = [job.returncode for job in jobs]
    assert sorted(codes) == [EXIT_OK, EXIT_REFUSED], logs
    winner, loser = codes.index(EXIT_OK), codes.index(EXIT_REFUSED)
    refusal = [line for line in logs[loser].splitlines() if "ERROR" in line]
    assert len(refusal) == 1 and "Traceback" not in logs[loser], logs[loser]
    assert f"{out} holds results of another model/checkpoint/options (random_seed {winner} there, {loser} now)" \
        in refusal[0] and "output.overwrite=true" in refusal[0]
    record = json.loads(read_bytes(f"{out}/_state/provenance.json", so))
    assert record["random_seed"] == winner
    assert list_names(f"{out}/_state/done", so) == {"v0.json", "v1.json"}
    for video_id in ("v0", "v1"):
        assert read_masklets(f"{out}/masklets/{video_id}.json", so).provenance["random_seed"] == winner
    assert json.loads(read_bytes(f"{out}/summary.json", so))["done"] == 2


def test_a_job_whose_prefix_is_taken_over_stops_and_writes_no_more_markers(tmp_path, ray_cluster, caplog):
    """While the job's worker holds its first video (either), another job claims the prefix with output.overwrite (driven
    at the storage level, so the moment is known): the job writes no masklet, marker or summary there and exits 2."""
    manifest, _ = point_videos(tmp_path, n=2, frames=4, seed=30)
    (tmp_path / "faults.json").write_text(json.dumps({"v0": ["wait"], "v1": ["wait"]}))
    out = str(tmp_path / "out")
    spec = job_spec(manifest, str(tmp_path), out, ray_cluster.address, worker_class=FAULTS)
    other = {"model": spec.model.name, "image_size": spec.model.image_size, "checkpoint": "random",
             "checkpoint_sha256": None, "random_seed": 7, "session": {}}
    codes: list[int] = []
    with caplog.at_level(logging.ERROR):
        job = threading.Thread(target=lambda: codes.append(run(spec)))
        job.start()
        while job.is_alive() and not list(tmp_path.glob("busy.*")):  # the worker holds its first video
            job.join(timeout=0.1)
        assert list(tmp_path.glob("busy.*")), "no video ever started"
        make_sink(out, "sav_json", None, 30.0).claim(other, overwrite=True, decoder="pyav")
        (tmp_path / "go").write_text("")
        job.join(timeout=900)
    assert codes == [EXIT_REFUSED]
    assert f"{out} was taken over by another job while this one ran" in caplog.text
    assert json.loads((tmp_path / "out" / "_state" / "provenance.json").read_text())["random_seed"] == 7
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")
                  if p.is_file()) == ["_state/provenance.json"]


def test_a_deleted_masklet_is_recomputed_and_switching_format_or_decoder_is_refused(tmp_path, ray_cluster, caplog):
    manifest, _ = point_videos(tmp_path, n=2, frames=4, seed=30)
    out = tmp_path / "out"
    spec = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address)
    assert run(spec) == EXIT_OK
    (out / "masklets" / "v0.json").unlink()
    with caplog.at_level(logging.INFO):
        assert run(spec) == EXIT_OK
    assert "v0: done marker without its file" in caplog.text and "1 already done, 1 to run" in caplog.text
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["skipped"], summary["status"]) == (1, 1, "ok")
    assert read_masklets(str(out / "masklets" / "v0.json")).video_id == "v0"

    caplog.clear()
    parquet = job_spec(manifest, str(tmp_path), str(out), ray_cluster.address, output_options={"format": "parquet"})
    with caplog.at_level(logging.ERROR):
        assert run(parquet) == EXIT_REFUSED
        assert run(job_spec(manifest, str(tmp_path), str(out), ray_cluster.address, decoder="decord")) \
            == EXIT_REFUSED
    refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(refusals) == 2 and all("\n" not in line for line in refusals)
    assert (f"{out} holds sav_json masklets, output.format=parquet now (output.format=sav_json resumes there): use "
            f"another output.uri, or output.overwrite=true") in refusals[0]
    assert "holds masklets of videos decoded by pyav, data.decoder=decord now" in refusals[1]
    assert sorted(p.name for p in (out / "masklets").iterdir()) == ["v0.json", "v1.json"]
