"""Provenance: what produced the masklets of an output prefix (the checkpoint fetched and identified).

The record (model, image size, checkpoint and its sha256, package version, resolved config) is written once per
prefix and copied into every masklet file; ``pipeline.records.PrefixIdentity`` is the part of it that makes two
runs' results comparable, so that one prefix never mixes masks of two models.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import Any

from pipeline.specs import ModelSpec
from sam2core.build import check_checkpoint
from sam2core.checkpoint import (CheckpointError, checkpoint_sha256, fetch, inspect_checkpoint,
                                 read_state_dict)

log = logging.getLogger(__name__)

RANDOM_CHECKPOINT = "random"  # model.checkpoint value for seeded random weights


def job_provenance(model: ModelSpec, session: dict, config: dict | None) -> dict:
    """The record for a job of ``model`` with engine options ``session``. Fetches the checkpoint into the local
    cache and checks that it holds the architecture ``model.name`` asks for (CheckpointError otherwise)."""
    prov: dict[str, Any] = {"model": model.name, "image_size": model.image_size, "session": _mask_options(session),
                            "package_version": version("sam2-propagate"), "config": config or {}}
    if model.checkpoint == RANDOM_CHECKPOINT:
        log.warning("model.checkpoint=random: RANDOM WEIGHTS (seed %d); the masks are meaningless", model.seed)
        return {**prov, "checkpoint": RANDOM_CHECKPOINT, "checkpoint_sha256": None, "random_seed": model.seed}
    path = fetch(model.checkpoint, model.storage_options, model.cache_dir)
    state = read_state_dict(path)
    name, _, _ = inspect_checkpoint(state)
    if name != model.name:
        raise CheckpointError(f"{model.checkpoint} holds a {name} model, but model={model.name}; choose model={name}")
    check_checkpoint(model.name, state, uri=model.checkpoint, image_size=model.image_size)
    sha256 = checkpoint_sha256(path)
    log.info("checkpoint %s (sha256 %s)", model.checkpoint, sha256)
    return {**prov, "checkpoint": model.checkpoint, "checkpoint_sha256": sha256}


_THROUGHPUT_OPTIONS = ("prefetch", "encoder_batch", "max_objects_per_batch")  # change speed, never the masks


def _mask_options(session: dict) -> dict:
    """The session options that can change the masks."""
    return {k: v for k, v in sorted(session.items()) if k not in _THROUGHPUT_OPTIONS}
