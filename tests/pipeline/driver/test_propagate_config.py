"""The propagate job's Hydra config tree: every model config matches the architecture registry, defaults compose."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from sam2core.config import CONFIGS, MODEL_NAMES
from tests.pipeline.driver.propagate_support import REPO


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_config_matches_registry(name):
    cfg = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.checkpoint == CONFIGS[name].checkpoint_url
    assert cfg.image_size == CONFIGS[name].image_size


def test_defaults_run_the_bundled_sample_locally():
    out = subprocess.run([sys.executable, "-m", "jobs.propagate", "--cfg", "job", "--resolve"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    cfg = yaml.safe_load(out)
    assert cfg["model"]["name"] == "sam2.1_hiera_tiny"
    assert cfg["model"]["checkpoint"].startswith("https://dl.fbaipublicfiles.com/segment_anything_2/092824/")
    assert (cfg["data"]["manifest"], cfg["data"]["root"]) == ("data/sample/manifest.parquet", "data/sample")
    assert (REPO / cfg["data"]["manifest"]).is_file()
    assert cfg["output"]["uri"] == "outputs/sample/sam2.1_hiera_tiny"
    assert cfg["cluster"]["address"] is None
    assert (cfg["sharding"]["num_shards"], cfg["sharding"]["shard_id"]) == (1, 0)


@pytest.mark.parametrize("override,key", [
    ("model.image_size=250", "model.image_size=250"),
    ("model.device=cuda:1", "model.device=cuda:1"),
    ("session.encoder_batch=0", "session.encoder_batch=0"),
    ("cluster.max_attempts=0", "cluster.max_attempts=0"),
    ("sharding.shard_id=3", "sharding.shard_id=3"),
    ("output.format=png", "output.format=png"),
])
def test_bad_values_are_refused_at_the_edge_in_one_line(tmp_path, run_job, override, key):
    out = tmp_path / "out"
    proc = run_job(["model.checkpoint=random", f"output.uri={out}", override])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert key in text and "Traceback" not in text
    assert not out.exists()  # nothing written, not even the provenance record


def test_a_checkpoint_that_does_not_fit_is_refused_in_the_driver(tmp_path, run_job):
    """Keys or shapes of another architecture: one line naming the file and the first mismatched keys, exit 2,
    before any worker starts and with nothing written (a re-run with the right file is not refused)."""
    import torch

    from sam2core.build import build_model

    state = build_model("sam2.1_hiera_tiny", image_size=128).state_dict()
    state["sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": state}, checkpoint)
    out = tmp_path / "out"
    proc = run_job([f"model.checkpoint={checkpoint}", "model.image_size=128", f"output.uri={out}"])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    errors = [line for line in text.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and str(checkpoint) in errors[0], text
    assert "sam_mask_decoder.iou_token.weight (1, 7) (model (1, 256))" in errors[0]
    assert "Traceback" not in text and "worker" not in text.lower()
    assert not out.exists()


def test_ctrl_c_stops_the_job_with_one_line_and_a_rerun_resumes(tmp_path, ray_cluster, start_job, run_job):
    import json
    import re
    import signal
    import time

    from tests.helpers import make_video, synthetic_frames
    from tests.pipeline.driver.propagate_support import job_overrides, prompts_for, write_manifest

    rows = []
    for i in range(2):
        frames = synthetic_frames(6, 64, 96, seed=i)
        make_video(tmp_path / "videos" / f"v{i}.mp4", frames)
        rows += prompts_for(f"v{i}", f"videos/v{i}.mp4", frames, "points")
    manifest = write_manifest(rows, str(tmp_path / "manifest.parquet"))
    (tmp_path / "faults.json").write_text(json.dumps({"v0": ["wait"]}))
    out = tmp_path / "out"
    overrides = job_overrides(manifest, str(tmp_path), str(out), ray_cluster.address,
                              **{"cluster.worker_class": "tests.pipeline.driver.fault_workers.FaultWorker"})
    job = start_job("propagate", [*overrides, f"hydra.run.dir={tmp_path / 'hydra'}"])
    # v0's worker holds it until the go file exists: wait for that state (or the job's end), not for a time
    while not (tmp_path / "busy.v0").exists() and job.poll() is None:
        time.sleep(0.05)
    assert job.poll() is None, job.log.read_text()
    job.send_signal(signal.SIGINT)  # Ctrl-C, to the job's own process
    job.wait(timeout=600)  # a net against a hang only: the job ends in about 2 s here
    text = job.log.read_text()
    assert job.returncode == 130, text
    assert re.search(r"interrupted: [01] of 2 videos done in this run", text) and "re-run the same command" in text
    assert "Traceback" not in text
    (tmp_path / "go").write_text("")
    rerun = run_job(overrides, timeout=600)  # a net against a hang only: about 10 s here
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert sorted(p.name for p in (out / "_state" / "done").iterdir()) == ["v0.json", "v1.json"]
