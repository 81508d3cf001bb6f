"""Build a SAM 2 model from the architecture registry, optionally loading a checkpoint."""

from __future__ import annotations

import torch

from sam2core.checkpoint import check_fits, load_checkpoint, read_state_dict
from sam2core.config import get_config
from sam2core.modeling.sam2 import SAM2Model


def build_model(
    name: str,
    checkpoint: str | None = None,
    *,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    storage_options: dict | None = None,
    cache_dir: str | None = None,
) -> SAM2Model:
    """One of the eight architectures (e.g. ``sam2.1_hiera_large``) in eval mode on ``device``.

    With ``checkpoint`` None the weights are random; otherwise the checkpoint (local path or fsspec URI) is loaded
    strictly and its :class:`CheckpointInfo` is kept as ``model.checkpoint_info``.
    """
    model = SAM2Model(get_config(name, image_size))
    model.checkpoint_info = None
    if checkpoint is not None:
        model.checkpoint_info = load_checkpoint(model, checkpoint, storage_options, cache_dir)
    return model.to(device).eval()


def check_checkpoint(name: str, checkpoint: str | dict[str, torch.Tensor], *, uri: str | None = None,
                     image_size: int | None = None, storage_options: dict | None = None,
                     cache_dir: str | None = None) -> None:
    """Check that ``checkpoint`` (a file or URI, or its state dict read from ``uri``) holds every weight of
    architecture ``name`` with the right shape, without building the model (its parameters live on the meta
    device): CheckpointError names the file and the first mismatches. A driver calls this before any worker starts,
    so a wrong file is one line, not a crash in every replica."""
    state = checkpoint if isinstance(checkpoint, dict) else read_state_dict(checkpoint, storage_options, cache_dir)
    with torch.device("meta"):
        model = SAM2Model(get_config(name, image_size))
    check_fits(state, model, uri or str(checkpoint))
