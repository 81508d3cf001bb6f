"""Checkpoint loading: official file layout, local and s3:// sources, identification and clear failures."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from sam2core.build import build_model, check_checkpoint
from sam2core.checkpoint import CheckpointError, CheckpointMismatch, inspect_checkpoint, load_checkpoint
from tests.oracle import official_predictor

NAME = "sam2.1_hiera_tiny"


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    _, state = official_predictor(NAME, 128, seed=3)
    return state


@pytest.fixture(scope="module")
def checkpoint_file(official_state, tmp_path_factory) -> str:
    """An official-format checkpoint ({"model": state_dict}) written with torch.save."""
    path = tmp_path_factory.mktemp("ckpt") / f"{NAME}.pt"
    torch.save({"model": official_state}, path)
    return str(path)


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def assert_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    ours = model.state_dict()
    assert ours.keys() == state.keys()
    assert all(torch.equal(ours[k], state[k]) for k in state)


def test_local_round_trip(checkpoint_file, official_state):
    model = build_model(NAME, image_size=128)
    info = load_checkpoint(model, checkpoint_file)
    assert_weights(model, official_state)
    assert (info.name, info.version, info.size) == (NAME, "2.1", "tiny")
    assert info.sha256 == sha256_of(checkpoint_file)
    assert info.path == checkpoint_file


def test_build_model_with_checkpoint(checkpoint_file, official_state):
    model = build_model(NAME, checkpoint_file, image_size=128)
    assert not model.training
    assert model.checkpoint_info.sha256 == sha256_of(checkpoint_file)
    assert_weights(model, official_state)


def test_bare_state_dict_file(official_state, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(official_state, path)
    model = build_model(NAME, image_size=64)
    load_checkpoint(model, f"file://{path}")
    assert_weights(model, official_state)


def test_inspect(checkpoint_file, official_state):
    assert inspect_checkpoint(checkpoint_file) == (NAME, "2.1", "tiny")
    assert inspect_checkpoint({"model": official_state}) == (NAME, "2.1", "tiny")
    v20 = {k: v for k, v in official_state.items() if k not in ("no_obj_embed_spatial",)}
    assert inspect_checkpoint(v20) == ("sam2_hiera_tiny", "2.0", "tiny")


def trunk_only(width: int, blocks: int, v21: bool) -> dict[str, torch.Tensor]:
    """Just the tensors that identify an architecture (patch-embed width, block count, version marker)."""
    state = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(width, 3, 7, 7)}
    state.update({f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(blocks)})
    if v21:
        state["no_obj_embed_spatial"] = torch.zeros(1, 64)
    return state


@pytest.mark.parametrize(
    "width,blocks,v21,found",
    [(144, 48, True, "sam2.1_hiera_large"), (112, 24, True, "sam2.1_hiera_base_plus"),
     (96, 16, True, "sam2.1_hiera_small"), (96, 12, False, "sam2_hiera_tiny")],
)
def test_wrong_architecture_is_named(width, blocks, v21, found, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": trunk_only(width, blocks, v21)}, path)
    with pytest.raises(CheckpointError, match=f"checkpoint is {found}, config asks for {NAME}"):
        load_checkpoint(build_model(NAME, image_size=64), str(path))


def test_real_version_mismatch(official_state, tmp_path):
    """A complete 2.1 tiny checkpoint refused by the 2.0 tiny config before any tensor is copied."""
    path = tmp_path / "v21.pt"
    torch.save({"model": official_state}, path)
    model = build_model("sam2_hiera_tiny", image_size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="checkpoint is sam2.1_hiera_tiny, config asks for sam2_hiera_tiny"):
        load_checkpoint(model, str(path))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_key_fails_strictly(official_state, tmp_path):
    path = tmp_path / "partial.pt"
    state = dict(official_state)
    del state["sam_mask_decoder.iou_token.weight"]
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="iou_token") as err:
        load_checkpoint(build_model(NAME, image_size=64), str(path))
    assert str(path) in str(err.value)


def test_check_checkpoint_names_the_file_and_the_first_mismatches(official_state, checkpoint_file, tmp_path):
    """Checked against the architecture on the meta device (nothing built): keys missing, unexpected and of
    another shape are each named, at most three of each, after the file."""
    check_checkpoint(NAME, checkpoint_file, image_size=128)  # the real file fits
    state = dict(official_state)
    for key in ["sam_mask_decoder.iou_token.weight", "memory_encoder.out_proj.weight", "obj_ptr_proj.layers.0.bias",
                "mask_downsample.weight"]:
        del state[key]
    state["sam_mask_decoder.extra.weight"] = torch.zeros(2)
    state["no_mem_embed"] = torch.zeros(1, 1, 7)
    path = tmp_path / "mismatch.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatch) as err:
        check_checkpoint(NAME, str(path), image_size=128)
    message = str(err.value)
    assert message.startswith(f"{path}: does not fit {NAME}: 4 missing keys: ")
    assert message.count(", ...") == 1  # four missing keys, three shown
    assert "1 unexpected keys: sam_mask_decoder.extra.weight" in message
    assert "1 keys of another shape: no_mem_embed (1, 1, 7) (model (1, 1, 256))" in message
    assert "\n" not in message


def test_truncated_file(checkpoint_file, tmp_path):
    path = tmp_path / "truncated.pt"
    with open(checkpoint_file, "rb") as f:
        path.write_bytes(f.read(os.path.getsize(checkpoint_file) // 2))
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as err:
        load_checkpoint(build_model(NAME, image_size=64), str(path))
    assert str(path) in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", b""])
def test_not_a_checkpoint(content, tmp_path):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as err:
        load_checkpoint(build_model(NAME, image_size=64), str(path))
    assert str(path) in str(err.value)


def test_pickle_without_state_dict(tmp_path):
    path = tmp_path / "config.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="not a SAM 2 checkpoint"):
        load_checkpoint(build_model(NAME, image_size=64), str(path))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(build_model(NAME, image_size=64), str(tmp_path / "absent.pt"))


def test_s3_round_trip_and_cache(s3_server, checkpoint_file, official_state, tmp_path):
    import s3fs

    bucket = s3_server["make_bucket"]("ckpt")
    options = s3_server["storage_options"]
    uri = f"s3://{bucket}/models/{NAME}.pt"
    s3fs.S3FileSystem(**options).put_file(checkpoint_file, uri)

    cache = tmp_path / "cache"
    model = build_model(NAME, image_size=128)
    info = load_checkpoint(model, uri, storage_options=options, cache_dir=str(cache))
    assert_weights(model, official_state)
    assert info.uri == uri and info.path.startswith(str(cache))
    assert info.sha256 == sha256_of(checkpoint_file)
    assert not [p for p in cache.rglob("*.part")]

    stamp = os.stat(info.path).st_mtime_ns
    again = build_model(NAME, uri, image_size=128, storage_options=options, cache_dir=str(cache))
    assert again.checkpoint_info.path == info.path and os.stat(info.path).st_mtime_ns == stamp  # served from cache
    assert_weights(again, official_state)

    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(model, f"s3://{bucket}/models/absent.pt", storage_options=options, cache_dir=str(cache))
