"""Nothing on the encoder or tracking threads waits for the device between frames: the input normalisation lives on
the model's device, and frames stay in pinned memory up to their copy to the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2core.build import build_model
from sam2core.modeling.resize import pil_bicubic_resize
from sam2core.modeling.sam2 import IMAGENET_MEAN, IMAGENET_STD, SAM2Model
from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession
from sam2core.video.feature_stream import stack_frames


def _can_pin() -> bool:
    try:
        torch.empty(1).pin_memory()
    except RuntimeError:  # CPU-only torch: no pinned-memory allocator
        return False
    return True


def test_normalisation_constants_are_buffers_outside_the_state_dict() -> None:
    model = build_model("sam2.1_hiera_tiny", image_size=256)
    buffers = dict(model.named_buffers())
    assert torch.equal(buffers["pixel_mean"].flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.equal(buffers["pixel_std"].flatten(), torch.tensor(IMAGENET_STD))
    state = model.state_dict()
    assert "pixel_mean" not in state and "pixel_std" not in state  # checkpoints hold no such keys
    fresh = SAM2Model(model.config)
    fresh.load_state_dict(state, strict=True)  # strict key checks still pass
    assert torch.equal(fresh.pixel_mean, model.pixel_mean)

    frames = torch.randint(0, 256, (2, 40, 56, 3), dtype=torch.uint8)
    x = pil_bicubic_resize(frames.permute(0, 3, 1, 2), (256, 256)).float().div_(255.0)
    expected = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.equal(model.preprocess(frames), expected)


def test_stacked_batch_keeps_the_frames_memory(monkeypatch) -> None:
    frames = [torch.full((4, 6, 3), i, dtype=torch.uint8) for i in range(3)]
    batch = stack_frames(frames)
    assert torch.equal(batch, torch.stack(frames)) and not batch.is_pinned()
    assert stack_frames(frames[:1]).data_ptr() == frames[0].data_ptr()  # one frame: a view, no copy

    # the decision, wherever pinning works or not: pinned frames ask for a pinned output buffer
    asked = []
    empty = torch.empty

    def recording_empty(*args, pin_memory: bool = False, **kwargs) -> torch.Tensor:
        asked.append(pin_memory)
        return empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", recording_empty)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)
    assert torch.equal(stack_frames(frames), torch.stack(frames)) and asked == [True]


@pytest.mark.skipif(not _can_pin(), reason="this torch has no pinned-memory allocator (CPU-only build)")
def test_pinned_frames_stack_into_pinned_memory() -> None:
    frames = [torch.full((4, 6, 3), i, dtype=torch.uint8).pin_memory() for i in range(3)]
    batch = stack_frames(frames)
    assert batch.is_pinned() and torch.equal(batch, torch.stack(frames))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_propagation_never_synchronises_with_the_device() -> None:
    model = build_model("sam2.1_hiera_tiny", image_size=256, device="cuda")
    video = np.random.default_rng(0).integers(0, 256, (12, 48, 64, 3), dtype=np.uint8)
    session = VideoSession(model, ArrayFrameSource(video), SessionOptions(encoder_batch=4))
    session.add_points(0, 1, points=[[20, 30]], labels=[1])
    session.add_points(0, 2, box=[5, 5, 40, 30])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call on any thread raises
    try:
        tracked = [result.frame_idx for result in session.propagate()]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert tracked == list(range(12))
