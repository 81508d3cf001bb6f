"""Static shapes in the tracking step: fixed memory slots with a validity mask, object buckets, compiled entry points
that never recompile after warm-up, and bf16 weight copies that give the autocast numbers without per-call casts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch._dynamo as dynamo
import torch.nn.functional as F
from torch._dynamo.utils import counters

import sam2core.video.compile as engine_compile
from sam2core.build import build_model
from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession
from sam2core.video.compile import PAD_LIMIT, compute_weights, object_buckets, split_objects
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
    buckets = object_buckets(16)
    assert [split_objects(n, buckets) for n in (1, 3, 7, 9, 13, 20, 50)] == [
        (1,), (2, 1), (8,), (8, 1), (16,), (16, 4), (16, 16, 16, 2)]
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


def _fresh_model() -> torch.nn.Module:
    """A model no session has compiled or warmed anything for."""
    torch.manual_seed(0)
    return build_model("sam2.1_hiera_tiny", image_size=64)


class CallLog:
    """The compiled calls of a model's shared engine steps, frame by frame, as a CUDA-graph run makes them: each
    frame starts at ``cudagraph_mark_step_begin`` (the CUDA-graph call site is switched on, on CPU), then the frame
    prefix, then one (rows, memory slots, pointer slots, masked) per tracking call."""

    def __init__(self, model: torch.nn.Module, options: SessionOptions, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames: list[list] = []
        weights = compute_weights(model, torch.float32)
        steps = engine_compile.shared(weights, ("steps", options.apply_postprocessing, True),
                                      lambda: EngineSteps(weights, options.apply_postprocessing, True))
        prefix, track = steps.memory_prefix, steps.track

        def log_prefix(*args):
            self.frames[-1].append("prefix")
            return prefix(*args)

        def log_track(*args):
            memory, _, ptrs, _, masked = args[5:]
            self.frames[-1].append((memory.shape[0], memory.shape[1], ptrs.shape[1], masked))
            return track(*args)

        monkeypatch.setattr(steps, "cuda_graphs", True)
        monkeypatch.setattr(steps, "memory_prefix", log_prefix)
        monkeypatch.setattr(steps, "track", log_track)
        monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: self.frames.append([]))

    def patterns(self, since: int = 0) -> set[tuple]:
        return {tuple(frame) for frame in self.frames[since:]}


@pytest.mark.slow  # ~30 s; test_warm_up_covers_every_call_pattern_of_a_pass guards the same in the default suite
def test_compiled_steps_never_recompile_during_a_pass(monkeypatch) -> None:
    """A video whose tracked objects go 1 -> 9 (cap 4: 1, 2, 2 + 1, 4, 4 + 1, 4 + 2, 8, 8, 8 + 1) and whose memory
    fills from 1 to 7 frames compiles each pass's shapes before its first frame, nothing while it runs, and gives
    the masks of the eager engine. The ``eager`` backend: the guards and graphs are dynamo's whatever the backend
    (inductor is the slow test below)."""
    monkeypatch.setattr(engine_compile, "BACKEND", "eager")
    dynamo.reset()
    model = _fresh_model()
    video = synthetic_video(8, 64, 64)
    options = dict(max_objects_per_batch=4, encoder_batch=2)
    compiled = VideoSession(model, ArrayFrameSource(video), SessionOptions(compile=True, **options))
    eager = VideoSession(model, ArrayFrameSource(video), SessionOptions(**options))
    assert counters["stats"]["unique_graphs"] >= 2  # the encoder at 1 and 2 frames, when the session is built
    for n in range(1, 10):
        for session in (compiled, eager):
            session.reset()
            _objects_video(session, n)
        passes = [compiled.propagate(direction="forward"), eager.propagate(direction="forward")]
        first = [next(p) for p in passes]
        graphs = counters["stats"]["unique_graphs"]
        rest = [[first[i].low_res_logits.clone(), *(r.low_res_logits.clone() for r in p)]
                for i, p in enumerate(passes)]
        assert counters["stats"]["unique_graphs"] == graphs, f"{n} objects: a shape was compiled during the pass"
        assert len(rest[0]) == 8
        for got, expected in zip(*rest):
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    graphs = counters["stats"]["unique_graphs"]  # another session on the model reuses what the first one warmed up
    VideoSession(model, ArrayFrameSource(video), SessionOptions(compile=True, **options),
                 prompt_frames={k: [0] for k in range(9)})
    assert counters["stats"]["unique_graphs"] == graphs


def test_steady_state_attends_without_a_mask(monkeypatch) -> None:
    """Once every memory and pointer slot is filled (frame 16 of a pass from frame 0), the compiled step calls SDPA
    with no mask and with the keys of the eager (official) arithmetic, so flash attention can run; before that it is
    masked. Masks equal the eager engine's throughout. Compiled calls are seen through a backend that runs dynamo's
    graphs as they are and logs their SDPA calls; eager ones through a hook on ``F.scaled_dot_product_attention``."""
    model = _fresh_model()
    side = model.config.feat_size
    calls: list[tuple[int, bool]] = []  # (keys, no mask) of each memory cross-attention

    def is_memory(q: torch.Tensor, k: torch.Tensor) -> bool:
        """Memory cross-attention: a query per feature token (one head of the model width), more keys."""
        return q.shape[-2] == side * side < k.shape[-2] and q.shape[-1] == model.config.d_model

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        attention = [node for node in gm.graph.nodes if node.op == "call_function"
                     and getattr(node.target, "__name__", "") == "scaled_dot_product_attention"]
        memory = [(node.args[1].meta["example_value"].shape[-2], node.kwargs.get("attn_mask") is None)
                  for node in attention if is_memory(node.args[0].meta["example_value"],
                                                     node.args[1].meta["example_value"])]

        def run(*args):
            calls.extend(memory)
            return gm.forward(*args)
        return run

    monkeypatch.setattr(engine_compile, "BACKEND", backend)
    dynamo.reset()
    video = synthetic_video(20, 64, 64)
    layers = len(model.memory_attention.layers)
    per_frame = {}
    masks = {}
    sdpa = F.scaled_dot_product_attention

    def hooked(q, k, v, attn_mask=None, **kwargs):
        if is_memory(q, k):
            calls.append((k.shape[-2], attn_mask is None))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    for compile_steps in (True, False):
        if not compile_steps:
            monkeypatch.setattr(F, "scaled_dot_product_attention", hooked)
        session = VideoSession(model, ArrayFrameSource(video),
                               SessionOptions(compile=compile_steps, max_objects_per_batch=2),
                               prompt_frames={0: [0], 1: [0]})  # warmed up here, not in the pass
        _objects_video(session, 2)
        calls.clear()
        masks[compile_steps] = _logits(session, direction="forward")
        assert len(calls) == 19 * layers  # one step per tracked frame (two objects, one bucket)
        per_frame[compile_steps] = [calls[i * layers:(i + 1) * layers] for i in range(19)]
    compiled, eager = per_frame[True], per_frame[False]
    for t in range(1, 20):
        got, expected = compiled[t - 1], eager[t - 1]
        assert all(unmasked for _, unmasked in expected)  # eager drops the empty slots instead
        if t >= 16:  # steady state: no mask, the official key count
            assert got == expected, t
        else:
            assert not any(unmasked for _, unmasked in got), t
    for t in masks[False]:
        torch.testing.assert_close(masks[True][t], masks[False][t], atol=1e-4, rtol=0)


def test_warm_up_covers_every_call_pattern_of_a_pass(monkeypatch) -> None:
    """A session built with the prompt plan of 20 objects runs, before the pass, every frame's sequence of compiled
    calls (prefix, then 16 + 4 objects; masked, then unmasked once the slots are full): with CUDA graphs the pass
    records nothing new while the encoder and output threads run."""
    monkeypatch.setattr(engine_compile, "BACKEND", "eager")
    dynamo.reset()
    model = _fresh_model()
    options = SessionOptions(compile=True, max_objects_per_batch=16)
    log = CallLog(model, options, monkeypatch)
    video = synthetic_video(20, 64, 64)
    session = VideoSession(model, ArrayFrameSource(video), options, prompt_frames={k: [0] for k in range(20)})
    warmed = log.patterns()
    graphs = counters["stats"]["unique_graphs"]
    before = len(log.frames)
    _objects_video(session, 20)
    assert len(_logits(session, direction="forward")) == 20
    seen = log.patterns(before)
    assert seen == {("prefix", (16, 7, 16, True), (4, 7, 16, True)),
                    ("prefix", (16, 7, 16, False), (4, 7, 16, False))}
    assert seen <= warmed
    assert counters["stats"]["unique_graphs"] == graphs


def test_prompt_plan_bounds_padding_and_compiles_before_the_video(monkeypatch) -> None:
    """Over object counts and conditioning-frame counts: the padded rows of a frame stay within 25% of its objects
    (9 objects run as 8 + 1, not 16), a session given the prompt plan compiles one graph per call layout it warms
    up, and propagating compiles nothing more (no compile inside the video's time budget)."""
    buckets = object_buckets(16)
    for n in range(1, 65):
        split = split_objects(n, buckets)
        assert sum(split) - n <= PAD_LIMIT * n and max(split) <= 16, (n, split)
        assert len(split) <= -(-n // 16) + len(buckets), (n, split)
    monkeypatch.setattr(engine_compile, "BACKEND", "eager")
    dynamo.reset()
    model = _fresh_model()
    options = SessionOptions(compile=True, max_objects_per_batch=16)
    log = CallLog(model, options, monkeypatch)
    video = synthetic_video(8, 64, 64)
    layouts: set[tuple] = set()
    for n, cond in ((3, (0,)), (9, (0,)), (9, (0, 5)), (3, (0, 2, 5)), (4, (3,))):  # the last: both ways
        plan = {k: cond for k in range(n)}
        graphs, before = counters["stats"]["unique_graphs"], len(log.frames)
        session = VideoSession(model, ArrayFrameSource(video), options, prompt_frames=plan)
        new = {call for frame in log.frames[before:] for call in frame if call != "prefix"} - layouts
        layouts |= new
        compiled = counters["stats"]["unique_graphs"] - graphs
        assert compiled == len(new) + (2 if not before else 0), (n, cond)  # + encoder and prefix the first time
        for k in range(n):
            for t in cond:
                session.add_mask(t, k, shape_mask(t, k % 3, 64, 64))
        graphs, before = counters["stats"]["unique_graphs"], len(log.frames)
        assert len(_logits(session)) == 8
        assert counters["stats"]["unique_graphs"] == graphs, (n, cond)
        for frame in log.frames[before:]:
            rows = sum(call[0] for call in frame[1:])
            tracked = n if len(frame) else 0
            assert rows - tracked <= PAD_LIMIT * tracked, (n, cond, frame)
            assert all(call[1] == len(cond) + 6 for call in frame[1:]), (n, cond, frame)


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

    from sam2core import thread_plan
    from sam2core.video import feature_stream

    cpu = torch.device("cpu")
    for threads, cores, expected in ((1, 2, (True, 1)), (2, 2, (False, None)), (1, 1, (False, None)),
                                     (2, 8, (True, 2)), (4, 6, (True, 2))):
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cores: set(range(c)), raising=False)
        plan = thread_plan.plan_threads(True, cpu)
        assert (plan.overlap, plan.side_threads) == expected, (threads, cores)
    assert not thread_plan.plan_threads(False, cpu).overlap
    assert thread_plan.plan_threads(True, torch.device("cuda")) == thread_plan.ThreadPlan(True)
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
