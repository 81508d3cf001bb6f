"""The worker's output stage: same bytes as full-frame upsampling + pycocotools, bounded, and it fails cleanly."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.io.masklets import MaskletBuilder
from pipeline.io.rle import encode_rles
from pipeline.actor.output_stage import OutputStage, OutputStageError
from sam2core.modeling.sam2 import NO_OBJECT_LOGIT
from sam2core.video.postprocess import non_overlap


def _logits(frames: int, objects: int, low: int, seed: int) -> list[torch.Tensor]:
    """Blobs with SAM-like slopes plus noise; object 1 is absent everywhere, the last one covers a frame corner."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(low).float(), torch.arange(low).float(), indexing="ij")
    out = []
    for _ in range(frames):
        c = torch.rand(objects, 2, generator=g) * low
        r = 2 + torch.rand(objects, generator=g) * low / 4
        d = ((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2).sqrt()
        x = (r[:, None, None] - d) * 1.5 + torch.randn(objects, low, low, generator=g) * 0.3
        x[1] = NO_OBJECT_LOGIT
        x[-1, :3, :3] = 5.0
        out.append(x[:, None])
    return out


def _reference(low: torch.Tensor, size: tuple[int, int], non_overlap_masks: bool) -> list[str]:
    full = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
    if non_overlap_masks:
        full = non_overlap(full)
    return [r["counts"] for r in encode_rles((full[:, 0] > 0).numpy())]


@pytest.mark.parametrize("size,low,non_overlap_masks", [
    ((1080, 1920), 64, False), ((203, 347), 32, False), ((203, 347), 32, True), ((24, 20), 32, False),
    ((1, 1), 16, False), ((720, 1280), 64, True),
])
def test_same_bytes_as_full_frame_upsampling_and_pycocotools(size, low, non_overlap_masks) -> None:
    frames = _logits(4, 5, low, seed=sum(size))
    builder = MaskletBuilder("v", len(frames), *size, list(range(5)))
    stage = OutputStage(builder, torch.device("cpu"), (low, low), non_overlap_masks, threads=2, depth=2)
    for t, x in enumerate(frames):
        stage.put(t, x, torch.arange(5.0))
    stage.close()
    m = builder.build()
    assert m.frame_indices == [0, 1, 2, 3]
    for x, rles in zip(frames, m.rles):
        assert [r["counts"] for r in rles] == _reference(x, size, non_overlap_masks)
    assert m.scores[0] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert m.first_appeared[1] == -1


class _BlockingBuilder(MaskletBuilder):
    def __init__(self, *args, release: threading.Event, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = release

    def add_rles(self, *args, **kwargs) -> None:
        self.release.wait()
        super().add_rles(*args, **kwargs)


def test_a_slow_consumer_holds_the_producer_back() -> None:
    release, depth, frames = threading.Event(), 2, 40
    builder = _BlockingBuilder("v", frames, 30, 40, [0], release=release)
    stage = OutputStage(builder, torch.device("cpu"), (16, 16), False, threads=1, depth=depth)
    produced = []

    def produce() -> None:
        for t in range(frames):
            stage.put(t, torch.ones(1, 1, 16, 16), torch.zeros(1))
            produced.append(t)

    producer = threading.Thread(target=produce)
    producer.start()
    deadline = time.monotonic() + 30
    while not stage.frames.full() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stage.frames.full() and producer.is_alive()
    assert len(produced) <= 3 * depth + 3  # queue + frames waiting for strings + the ones being worked on
    release.set()
    producer.join(timeout=60)
    stage.close()
    assert builder.build().frame_indices == list(range(frames))


def test_an_error_in_the_stage_fails_the_video_with_its_reason() -> None:
    builder = MaskletBuilder("v", 10, 30, 40, [0, 1])  # two objects, but frames will carry three
    stage = OutputStage(builder, torch.device("cpu"), (16, 16), False, threads=1, depth=2)
    with pytest.raises(OutputStageError, match="3 masks, 3 scores for 2 objects"):
        for t in range(10):
            stage.put(t, torch.ones(3, 1, 16, 16), torch.zeros(3))
        stage.close()
    assert not stage.frames.alive


def test_abort_returns_without_waiting_for_queued_frames() -> None:
    builder = MaskletBuilder("v", 10, 30, 40, [0])
    stage = OutputStage(builder, torch.device("cpu"), (16, 16), False, threads=1, depth=4)
    for t in range(3):
        stage.put(t, torch.ones(1, 1, 16, 16), torch.zeros(1))
    stage.abort()
    assert not stage.frames.alive
