"""Reduced precision and batching: bf16 (weights or autocast) runs the whole chain; objects batch independently."""

from __future__ import annotations

import pytest
import torch

from sam2core.build import build_model

S = 128


def run_chain(model, images: torch.Tensor, memory_dtype: torch.dtype) -> torch.Tensor:
    """Prompted frame, memory, then a memory-conditioned frame; returns the second frame's low-res logits."""
    feats = model.encode_image(images)
    f0, f1 = feats.index(0), feats.index(1)
    clicks = torch.tensor([[[40.0, 60.0]]])
    out0 = model.decode_masks(model.add_no_memory(f0.feat), f0.high_res, clicks, torch.ones(1, 1, dtype=torch.int32),
                              None, multimask=True)
    mem, _ = model.encode_memory(f0.feat, out0.high_res, out0.object_score_logits, binarize=True)
    cond = model.attend_memory(f1.feat, f1.pos, [mem.to(memory_dtype)], [6], out0.obj_ptr[:, None],
                               torch.tensor([1]), 12)
    return model.decode_masks(cond, f1.high_res, None, None, None, multimask=True).low_res


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_tiny", image_size=S)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
    frames = torch.randint(0, 256, (2, 96, 160, 3), dtype=torch.uint8)
    images = model.preprocess(frames)
    with torch.no_grad():
        reference = run_chain(model, images, torch.float32)
    return model, images, reference


@torch.no_grad()
def test_bf16_memories_into_fp32_model(setup):
    """Memories stored in bf16 (as the official predictor stores them) are cast, not a dtype crash."""
    model, images, reference = setup
    out = run_chain(model, images, torch.bfloat16)
    assert out.dtype == torch.float32
    assert (out - reference).abs().max() < 0.05 * reference.abs().max()


@torch.no_grad()
def test_autocast_bf16(setup):
    model, images, reference = setup
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run_chain(model, images, torch.bfloat16)
    assert torch.isfinite(out).all()
    assert ((out > 0) == (reference > 0)).float().mean() > 0.9


@torch.no_grad()
def test_bf16_weights(setup):
    model, images, reference = setup
    low = build_model("sam2.1_hiera_tiny", image_size=S)
    low.load_state_dict(model.state_dict())
    low = low.to(torch.bfloat16)
    out = run_chain(low, images, torch.bfloat16)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert ((out > 0) == (reference > 0)).float().mean() > 0.9


@torch.no_grad()
def test_objects_batch_independently(setup):
    """Decoding and memory attention of objects in one batch equal doing them one at a time."""
    model, images, _ = setup
    feats = model.encode_image(images[:1])
    n = 3
    batch = feats.expand(n)
    points = torch.tensor([[[30.0, 30.0]], [[90.0, 40.0]], [[64.0, 100.0]]])
    labels = torch.ones(n, 1, dtype=torch.int32)
    together = model.decode_masks(model.add_no_memory(batch.feat), batch.high_res, points, labels, None, True)
    memories = torch.randn(n, 64, S // 16, S // 16).bfloat16()
    ptrs = torch.randn(n, 2, 256)
    offsets = torch.tensor([3, 1])
    attended = model.attend_memory(batch.feat, batch.pos, [memories, memories.flip(0)], [6, 0], ptrs, offsets, 20)
    for i in range(n):
        alone = model.decode_masks(model.add_no_memory(feats.feat), feats.high_res, points[i : i + 1],
                                   labels[i : i + 1], None, True)
        torch.testing.assert_close(together.low_res[i : i + 1], alone.low_res, atol=1e-4, rtol=0)
        torch.testing.assert_close(together.obj_ptr[i : i + 1], alone.obj_ptr, atol=1e-5, rtol=0)
        single = model.attend_memory(feats.feat, feats.pos, [memories[i : i + 1], memories.flip(0)[i : i + 1]],
                                     [6, 0], ptrs[i : i + 1], offsets, 20)
        torch.testing.assert_close(attended[i : i + 1], single, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_decoding_leaves_the_image_features_as_they_were(setup, dtype):
    """The decoder sums and activates in place on its own buffers: the frame's features (shared by every click and
    object, batch 1 or per row) are unchanged, and decoding again gives the same logits, in fp32 and under bf16
    autocast."""
    model, images, _ = setup
    feats = model.encode_image(images[:1])
    n = 5
    points = torch.rand(n, 1, 2, generator=torch.Generator().manual_seed(1)) * S
    labels = torch.ones(n, 1, dtype=torch.int32)
    for high_res in (feats.high_res, tuple(t.expand(n, -1, -1, -1).contiguous() for t in feats.high_res)):
        before = [t.clone() for t in (feats.feat, *high_res)]
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            first, again = (model.decode_masks(model.add_no_memory(feats.feat), high_res, points, labels, None,
                                               True).low_res for _ in range(2))
        assert all(torch.equal(a, b) for a, b in zip(before, (feats.feat, *high_res)))
        assert torch.equal(first, again)


def test_memory_position_codes_follow_official_autocast(tmp_path, monkeypatch) -> None:
    """Under bf16 autocast the keys' position codes memory attention gets (spatial sine code in the compute dtype,
    plus the fp32 temporal code; pointer codes) equal the official predictor's, bit for bit."""
    import sam2.modeling.memory_attention as official_attention

    from benchmarks.video import object_boxes, synthetic_video, write_jpeg_folder
    from sam2core.modeling.memory_attention import MemoryAttention
    from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession
    from tests.oracle import official_and_ours

    official, ours = official_and_ours("sam2.1_hiera_tiny", image_size=64)
    frames = write_jpeg_folder(tmp_path, synthetic_video(3, 1, 64, 64))
    box = object_boxes(1, 64, 64)[0]
    seen: dict[str, list[torch.Tensor]] = {"official": [], "ours": []}
    official_forward = official_attention.MemoryAttention.forward
    ours_forward = MemoryAttention.forward_from_prefix

    def official_hook(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        seen["official"].append(memory_pos.transpose(0, 1).clone())  # [M, B, C] there
        return official_forward(self, curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)

    def ours_hook(self, prefix, memory, memory_pos, num_ptr_tokens=0, key_mask=None):
        seen["ours"].append(memory_pos.clone())
        return ours_forward(self, prefix, memory, memory_pos, num_ptr_tokens, key_mask)

    monkeypatch.setattr(official_attention.MemoryAttention, "forward", official_hook)
    monkeypatch.setattr(MemoryAttention, "forward_from_prefix", ours_hook)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        state = official.init_state(str(tmp_path))
        official.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=box)
        for _ in official.propagate_in_video(state):
            pass
    session = VideoSession(ours, ArrayFrameSource(frames), SessionOptions(dtype="bfloat16"))
    session.add_points(0, 1, box=box)
    for _ in session.propagate():
        pass
    assert len(seen["ours"]) == len(seen["official"]) == 2
    for got, expected in zip(seen["ours"], seen["official"]):
        assert got.dtype == expected.dtype == torch.float32
        assert torch.equal(got, expected)
