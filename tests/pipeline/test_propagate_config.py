"""The propagate job's Hydra config tree: every model config matches the architecture registry, defaults compose."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from sam2core.config import CONFIGS, MODEL_NAMES
from tests.pipeline.propagate_support import REPO


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
