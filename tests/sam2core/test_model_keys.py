"""Our module tree is the official checkpoint format, for all eight architectures."""

from __future__ import annotations

import pytest
import torch

from sam2core.build import build_model
from sam2core.config import MODEL_NAMES, get_config
from tests.oracle import official_predictor

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_matches_official(name):
    official, state = official_predictor(name, 128)
    ours = build_model(name, image_size=128)
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(set(theirs) - set(mine)) == [] and sorted(set(mine) - set(theirs)) == []
    assert list(mine.items()) == list(theirs.items())  # same shapes, same registration order
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in official.parameters())
    ours.load_state_dict(state, strict=True)
    assert not ours.training


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_version_switches(name):
    cfg = get_config(name)
    model = build_model(name, image_size=64)
    keys = model.state_dict().keys()
    assert ("no_obj_embed_spatial" in keys) == (cfg.version == "2.1")
    assert ("obj_ptr_tpos_proj.weight" in keys) == (cfg.version == "2.1")


def test_random_init_is_seeded_and_finite():
    torch.manual_seed(0)
    a = build_model("sam2.1_hiera_tiny", image_size=64).state_dict()
    torch.manual_seed(0)
    b = build_model("sam2.1_hiera_tiny", image_size=64).state_dict()
    assert all(torch.equal(a[k], b[k]) and torch.isfinite(a[k]).all() for k in a)


def test_sam2core_never_imports_the_official_package():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2] / "sam2core"
    pattern = re.compile(r"^\s*(import sam2\b|from sam2(\.| import))", flags=re.M)
    offenders = [str(p) for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
