"""``SessionOptions``: the switches of a video session, and the compute dtypes they name."""

from __future__ import annotations

from dataclasses import dataclass

import torch

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class SessionOptions:
    """Engine switches. Post-processing is off by default, as in the official ``vos_inference.py``.

    ``prefetch``: frames decoded ahead; ``encoder_batch``: frames per image-encoder call; ``overlap_encoder``: encode
    the next frames on a background thread (its own CUDA stream) while the current one is tracked.
    ``apply_postprocessing``: stability fallback for single-mask prompts and binarised prompt memories (the official
    switch, minus hole filling, which is ``fill_hole_area``). ``keep_history``: keep every tracked output (memory grows
    with the video) instead of replaying tracking for refinement clicks on tracked frames. ``max_cond_frames`` and
    ``memory_stride`` are the official ``max_cond_frames_in_attn`` and ``memory_temporal_stride_for_eval``.
    """

    fill_hole_area: int = 0
    non_overlap_masks: bool = False
    apply_postprocessing: bool = False
    dtype: str = "float32"
    compile: bool = False
    prefetch: int = 4
    encoder_batch: int = 1
    overlap_encoder: bool = True
    keep_history: bool = False
    max_cond_frames: int = -1
    memory_stride: int = 1
    max_objects_per_batch: int | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` for settings the engine cannot run with (checked when a session is created)."""
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(COMPUTE_DTYPES)}, got {self.dtype!r}")
        if self.encoder_batch < 1 or self.prefetch < 0:
            raise ValueError("encoder_batch must be >= 1 and prefetch >= 0")
        if self.max_objects_per_batch is not None and self.max_objects_per_batch < 1:
            raise ValueError(f"max_objects_per_batch must be >= 1 or None, got {self.max_objects_per_batch}")

    def objects_per_batch(self, device: torch.device) -> int:
        """``max_objects_per_batch``, or its default for ``device``."""
        if self.max_objects_per_batch is not None:
            return self.max_objects_per_batch
        return 1 if device.type == "cpu" else 16
