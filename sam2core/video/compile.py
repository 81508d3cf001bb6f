"""``torch.compile`` of the model's heavy modules, patched in place once per model (``SessionOptions.compile``)."""

from __future__ import annotations

from typing import Any

import torch

# module -> (method, dynamic shapes) compiled; memory attention is entered through its per-frame prefix and its
# per-object remainder, whose memory length varies
COMPILED_METHODS = {"image_encoder": (("forward", False),),
                    "memory_attention": (("shared_prefix", False), ("forward_from_prefix", True)),
                    "memory_encoder": (("forward", False),), "sam_mask_decoder": (("forward", False),)}


def compile_model(model: Any) -> None:
    """Replace the entry points in ``COMPILED_METHODS`` of a ``SAM2Model`` by compiled ones; a module already
    compiled (by an earlier session on the same model) is left as it is, so sessions share the compiled graphs."""
    for name, methods in COMPILED_METHODS.items():
        module = getattr(model, name)
        if not getattr(module, "_sam2core_compiled", False):
            for method, dynamic in methods:
                setattr(module, method, torch.compile(getattr(module, method), dynamic=dynamic))
            module._sam2core_compiled = True
