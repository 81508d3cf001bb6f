"""Static shapes in the tracking step: fixed memory slots with a validity mask, object buckets, compiled entry points
that never recompile after warm-up, and bf16 weight copies that give the autocast numbers without per-call casts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.utils import counters

import sam2core.video.compile as engine_compile
from sam2core.build import build_model
from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession
from sam2core.video.compile import bucket_of, compute_weights, cond_slots, object_buckets
from sam2core.video.tracker import EngineSteps, TrackingStep, slot_layout
from tests.sam2core.video_cases import shape_center, shape_mask, synthetic_video


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("sam2.1_hiera_tiny", image_size=64)


def test_buckets_and_slots() -> None:
    assert object_buckets(16) == (1, 2, 4, 8, 16)
    assert object_buckets(12) == (1, 2, 4, 8, 12)
    assert object_buckets(1) == (1,)
    assert [bucket_of(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert [cond_slots(n) for n in (1, 2, 3, 5)] == [1, 2, 4, 8]
    assert slot_layout(2, 7) == (6, 6, 5, 4, 3, 2, 1, 0)


def test_empty_slots_are_hidden_from_attention(model) -> None:
    """Attending to fixed slots of which some are empty (zeros, masked) equals attending to the filled ones alone."""
    torch.manual_seed(1)
    side = model.config.feat_size
    feat, pos = torch.randn(1, 256, side, side), torch.randn(1, 256, side, side)
    filled = [torch.randn(1, 64, side, side).bfloat16() for _ in range(3)]
    ptrs = torch.randn(1, 3, 256)
    with torch.inference_mode():
        prefix = model.memory_prefix(feat, pos)
        expected = model.attend_memory_from_prefix(prefix, filled, [6, 4, 0], ptrs, torch.tensor([5.0, 1.0, 3.0]),
                                                   16)
        tpos = slot_layout(1, 7)  # cond, then temporal slots 1..6 (rows 5..0)
        memory = torch.zeros(1, 7, 64, side, side, dtype=torch.bfloat16)
        memory[0, 0], memory[0, 2], memory[0, 6] = filled[0][0], filled[1][0], filled[2][0]
        valid = torch.zeros(1, 7, dtype=torch.bool)
        valid[0, [0, 2, 6]] = True
        slots_ptrs = torch.zeros(1, 16, 256)
        offsets = torch.zeros(1, 16)
        ptr_valid = torch.zeros(1, 16, dtype=torch.bool)
        for slot, (i, offset) in zip((0, 1, 3), enumerate((5.0, 1.0, 3.0))):
            slots_ptrs[0, slot], offsets[0, slot], ptr_valid[0, slot] = ptrs[0, i], offset / 15, True
        got = model.attend_memory_slots(prefix, memory, valid, tpos, slots_ptrs, offsets, ptr_valid)
        # eager steps drop the empty slots instead and attend without a mask
        compact = model.attend_memory_slots(prefix, memory[:, [0, 2, 6]], None, (6, 4, 0), slots_ptrs[:, [0, 1, 3]],
                                            offsets[:, [0, 1, 3]], None)
    assert tpos[2] == 4
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(compact, expected, atol=1e-5, rtol=0)


def _objects_video(session: VideoSession, n: int) -> None:
    for k in range(n):
        x, y = shape_center(0, k % 3, 64, 64)
        session.add_points(0, k, [[x + k, y]], [1])


def _logits(session: VideoSession, **kwargs) -> dict[int, torch.Tensor]:
    return {r.frame_idx: r.low_res_logits.clone() for r in session.propagate(**kwargs)}


def test_objects_in_batches_equal_objects_alone(model) -> None:
    """Five objects tracked in batches of two (2 + 2 + 1) give the per-object masks."""
    video = synthetic_video(6, 64, 64)
    masks = {}
    for cap in (1, 2):
        session = VideoSession(model, ArrayFrameSource(video), SessionOptions(max_objects_per_batch=cap))
        _objects_video(session, 5)
        masks[cap] = _logits(session)
    for t in masks[1]:
        torch.testing.assert_close(masks[2][t], masks[1][t], atol=1e-4, rtol=0)


def test_max_objects_per_batch_is_validated() -> None:
    with pytest.raises(ValueError, match="max_objects_per_batch"):
        SessionOptions(max_objects_per_batch=0).validate()
    assert SessionOptions().objects_per_batch(torch.device("cpu")) == 1
    assert SessionOptions().objects_per_batch(torch.device("cuda")) == 16
    assert SessionOptions(max_objects_per_batch=3).objects_per_batch(torch.device("cpu")) == 3


def test_compiled_steps_never_recompile_after_warm_up(model, monkeypatch) -> None:
    """After the session's warm-up, a video whose tracked objects go 1 -> 9 (buckets 1, 2, 4 and 4 + 4 + 1) and
    whose memory fills from 1 to 7 frames compiles nothing more, and gives the masks of the eager engine. The
    ``eager`` backend: the guards and graphs are dynamo's whatever the backend (inductor is the slow test below)."""
    monkeypatch.setattr(engine_compile, "BACKEND", "eager")
    dynamo.reset()
    video = synthetic_video(8, 64, 64)
    options = dict(max_objects_per_batch=4, encoder_batch=2)
    compiled = VideoSession(model, ArrayFrameSource(video), SessionOptions(compile=True, **options))
    eager = VideoSession(model, ArrayFrameSource(video), SessionOptions(**options))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 4  # encoder (2 batch sizes), frame prefix, tracking step per bucket
    for n in range(1, 10):
        for session in (compiled, eager):
            session.reset()
            _objects_video(session, n)
        got, expected = _logits(compiled, direction="forward"), _logits(eager, direction="forward")
        assert sorted(got) == list(range(8))
        for t in expected:
            torch.testing.assert_close(got[t], expected[t], atol=1e-4, rtol=0)
    assert counters["stats"]["unique_graphs"] == graphs, "a shape was compiled after warm-up"
    # another session on the same model reuses the warmed-up callables
    VideoSession(model, ArrayFrameSource(video), SessionOptions(compile=True, **options))
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_second_conditioning_frame_is_warmed_up_before_the_pass(model, monkeypatch) -> None:
    """Objects prompted on two frames need conditioning slots the session's warm-up did not cover: the pass compiles
    them before its first frame (on the calling thread), never during it, and the masks are the eager ones."""
    monkeypatch.setattr(engine_compile, "BACKEND", "eager")
    dynamo.reset()
    video = synthetic_video(8, 64, 64)
    options = dict(max_objects_per_batch=2)
    compiled = VideoSession(model, ArrayFrameSource(video), SessionOptions(compile=True, **options))
    eager = VideoSession(model, ArrayFrameSource(video), SessionOptions(**options))
    for session in (compiled, eager):
        for frame in (0, 5):
            session.add_mask(frame, 1, shape_mask(frame, 0, 64, 64))
            session.add_mask(frame, 2, shape_mask(frame, 1, 64, 64))
    before = counters["stats"]["unique_graphs"]
    passes = [compiled.propagate(direction="forward"), eager.propagate(direction="forward")]
    first = [next(p) for p in passes]
    warmed = counters["stats"]["unique_graphs"]
    assert warmed > before  # the two-slot shapes, compiled as the pass began
    rest = [[r.mask_logits.clone() for r in p] for p in passes]
    assert counters["stats"]["unique_graphs"] == warmed, "a shape was compiled during the pass"
    torch.testing.assert_close(first[0].mask_logits, first[1].mask_logits, atol=1e-4, rtol=0)
    for got, expected in zip(*rest):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_compiled_callables_belong_to_the_engine(model, monkeypatch) -> None:
    """Compiling wraps the entry points in the engine's ``EngineSteps``; the model's methods stay its own."""
    monkeypatch.setattr(engine_compile, "BACKEND", "eager")
    steps = EngineSteps(model, stability_fallback=False, compile_steps=True)
    assert isinstance(steps.step, TrackingStep) and steps.track is not steps.step
    assert "encode_image" not in vars(model) and "memory_prefix" not in vars(model)
    assert "forward" not in vars(model.memory_attention) and "forward" not in vars(model.sam_mask_decoder)
    assert not steps.cuda_graphs


def test_bf16_weight_copies_give_the_autocast_numbers(model, monkeypatch) -> None:
    """bf16 copies of the matmul/conv weights under autocast: the masks of plain autocast, bit for bit, with fewer
    casts; the model keeps its fp32 weights and shares every other tensor with the copy."""
    import sam2core.video.tracker as tracker

    twin = compute_weights(model, torch.bfloat16)
    assert compute_weights(model, torch.bfloat16) is twin and compute_weights(model, torch.float32) is model
    assert twin.memory_attention.layers[0].linear1.weight.dtype == torch.bfloat16
    assert model.memory_attention.layers[0].linear1.weight.dtype == torch.float32
    assert twin.memory_attention.layers[0].norm1.weight is model.memory_attention.layers[0].norm1.weight
    assert twin.no_mem_embed is model.no_mem_embed and twin.no_mem_embed.dtype == torch.float32

    video = synthetic_video(5, 64, 64)

    def run() -> tuple[dict[int, torch.Tensor], int]:
        session = VideoSession(model, ArrayFrameSource(video), SessionOptions(dtype="bfloat16"))
        session.add_points(0, 1, [list(shape_center(0, 0, 64, 64))], [1])
        session.add_mask(0, 2, shape_mask(0, 1, 64, 64))
        with torch.profiler.profile() as prof:
            logits = _logits(session)
        casts = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
        return logits, casts

    copies, copy_casts = run()
    monkeypatch.setattr(tracker, "compute_weights", lambda m, dtype: m)
    autocast, autocast_casts = run()
    for t in autocast:
        assert torch.equal(copies[t], autocast[t])
    assert copy_casts < autocast_casts
    assert all(np.isfinite(v.numpy()).all() for v in copies.values())


def test_thread_budget_never_oversubscribes(monkeypatch) -> None:
    """The encoder overlap takes only spare cores: one thread on two cores overlaps (one thread each), as many
    threads as cores runs serially, and the encoder thread runs with its share."""
    import os

    from sam2core.video import feature_stream

    cpu = torch.device("cpu")
    for threads, cores, expected in ((1, 2, (True, 1)), (2, 2, (False, None)), (1, 1, (False, None)),
                                     (2, 8, (True, 2)), (4, 6, (True, 2))):
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cores: set(range(c)), raising=False)
        plan = feature_stream.plan_threads(True, cpu)
        assert (plan.overlap, plan.encoder_threads) == expected, (threads, cores)
    assert not feature_stream.plan_threads(False, cpu).overlap
    assert feature_stream.plan_threads(True, torch.device("cuda")) == feature_stream.ThreadPlan(True)
    monkeypatch.undo()

    seen = []

    def encode(batch: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return batch

    source = ArrayFrameSource(np.zeros((3, 8, 8, 3), np.uint8))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        stream = feature_stream.FeatureStream(source, [0, 1, 2], encode, cpu, prefetch=1, batch=1, overlap=True,
                                      encoder_threads=1)
        assert [t for t, _ in stream] == [0, 1, 2]
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
