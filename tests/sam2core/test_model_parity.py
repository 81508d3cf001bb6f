"""Component parity with the official SAM 2 modules (same weights, fp32, image_size 128).

Run with ``-s`` to see the ``PARITY`` lines with the largest absolute difference of every check.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from tests.oracle import max_abs_diff, official_and_ours, report_parity

NAMES = ["sam2_hiera_tiny", "sam2.1_hiera_tiny", "sam2_hiera_small", "sam2.1_hiera_small"]
TOL = 1e-4
S = 128


@pytest.fixture(scope="module", params=NAMES)
def pair(request):
    torch.manual_seed(0)
    official, ours = official_and_ours(request.param, S)
    with torch.no_grad():
        images = torch.randn(2, 3, S, S)
        backbone = official.forward_image(images)
    return request.param, official, ours, images, backbone


def check(name: str, what: str, a: torch.Tensor, b: torch.Tensor) -> None:
    assert report_parity(name, what, max_abs_diff(a, b)) <= TOL


def seq_first(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> the official [hw, B, C] token layout."""
    return x.flatten(2).permute(2, 0, 1)


def official_features(backbone: dict, frame: int, n: int):
    """Raw stride-16 features and projected high-res maps of one frame, repeated for ``n`` objects."""
    fpn = backbone["backbone_fpn"]
    rep = [f[frame : frame + 1].repeat(n, 1, 1, 1) for f in fpn]
    return rep[2], [rep[0], rep[1]], backbone["vision_pos_enc"][2][frame : frame + 1].repeat(n, 1, 1, 1)


@torch.no_grad()
def test_backbone_levels(pair):
    name, official, ours, images, backbone = pair
    feats = ours.encode_image(images)
    check(name, "backbone stride-4 (conv_s0)", feats.high_res[0], backbone["backbone_fpn"][0])
    check(name, "backbone stride-8 (conv_s1)", feats.high_res[1], backbone["backbone_fpn"][1])
    check(name, "backbone stride-16", feats.feat, backbone["backbone_fpn"][2])
    check(name, "backbone pos stride-16", feats.pos, backbone["vision_pos_enc"][2])


@pytest.mark.parametrize("hw", [(90, 160), (64, 96)], ids=["downscale", "upscale"])
@torch.no_grad()
def test_preprocess_matches_official_loader(pair, tmp_path, hw):
    from PIL import Image
    from sam2.utils.misc import load_video_frames

    name, official, ours, _, _ = pair
    coarse = torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(3)) * 255
    frames = torch.nn.functional.interpolate(coarse, size=hw, mode="bilinear").round().byte()
    frames = frames.permute(0, 2, 3, 1).contiguous()
    for i, frame in enumerate(frames):
        # lossless PNG content under the .jpg names the loader lists (PIL sniffs the format)
        Image.fromarray(frame.numpy()).save(tmp_path / f"{i:05d}.jpg", format="PNG")
    expected, _, _ = load_video_frames(str(tmp_path), S, offload_video_to_cpu=True)
    diff = max_abs_diff(ours.preprocess(frames), expected)
    assert report_parity(name, f"preprocess vs frame loader {hw}", diff) == 0.0


@torch.no_grad()
def test_prompt_encoder(pair):
    name, official, ours, _, _ = pair
    coords = torch.rand(3, 4, 2) * S
    labels = torch.tensor([[1, 0, 2, 3], [1, 1, -1, 0], [0, 2, 3, 1]], dtype=torch.int32)
    masks = torch.randn(3, 1, S // 4, S // 4)
    sparse, dense = official.sam_prompt_encoder((coords, labels), None, masks)
    check(name, "prompt sparse", ours.sam_prompt_encoder.embed_points(coords, labels), sparse)
    check(name, "prompt dense (mask)", ours.sam_prompt_encoder.embed_mask(masks), dense)
    check(name, "prompt dense pe", ours.sam_prompt_encoder.dense_pe(), official.sam_prompt_encoder.get_dense_pe())
    _, no_mask = official.sam_prompt_encoder((coords, labels), None, None)
    check(name, "prompt dense (no mask)", ours.sam_prompt_encoder.no_mask_dense(3), no_mask)


DECODE_CASES = {
    "one click multimask": dict(points=1, mask=False, multimask=True),
    "clicks+box single": dict(points=4, mask=False, multimask=False),
    "no prompt multimask": dict(points=0, mask=False, multimask=True),
    "mask prompt single": dict(points=0, mask=True, multimask=False),
    "clicks+mask unstable": dict(points=2, mask=True, multimask=False, stability=True),
    "clicks stable": dict(points=2, mask=False, multimask=False, stability=True, sharpen=True),
}


@contextlib.contextmanager
def patched(tensors: list[torch.Tensor], change):
    """Apply ``change`` to each tensor in place for the duration of the block, then restore the originals."""
    saved = [t.clone() for t in tensors]
    try:
        for t in tensors:
            change(t)
        yield
    finally:
        for t, orig in zip(tensors, saved):
            t.copy_(orig)


@pytest.mark.parametrize("score_shift", [0.0, 30.0, -30.0], ids=["score", "present", "absent"])
@pytest.mark.parametrize("case", list(DECODE_CASES))
@torch.no_grad()
def test_decode_masks(pair, case, score_shift):
    name, official, ours, _, backbone = pair
    spec = DECODE_CASES[case]
    n = 3
    feat, high_res, _ = official_features(backbone, 0, n)
    gen = torch.Generator().manual_seed(1)
    point_inputs = points = labels = None
    if spec["points"]:
        points = torch.rand(n, spec["points"], 2, generator=gen) * S
        labels = torch.randint(0, 2, (n, spec["points"]), generator=gen, dtype=torch.int32)
        if spec["points"] >= 4:
            labels[:, :2] = torch.tensor([2, 3], dtype=torch.int32)
        point_inputs = {"point_coords": points, "point_labels": labels}
    mask = torch.randn(n, 1, S // 4, S // 4, generator=gen) * 5 if spec["mask"] else None
    stability = spec.get("stability", False)
    score_biases = [m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias for m in (official, ours)]
    # a large single-mask hypernetwork output makes the single mask sharp, hence stable
    single_head = [m.sam_mask_decoder.output_hypernetworks_mlps[0].layers[-1].weight for m in (official, ours)]
    sharpen = 1024.0 if spec.get("sharpen") else 1.0
    with patched(score_biases, lambda b: b.add_(score_shift)), patched(single_head, lambda w: w.mul_(sharpen)):
        official.sam_mask_decoder.dynamic_multimask_via_stability = stability
        try:
            ref = official._forward_sam_heads(feat, point_inputs, mask, high_res, multimask_output=spec["multimask"])
        finally:
            official.sam_mask_decoder.dynamic_multimask_via_stability = False
        out = ours.decode_masks(feat, tuple(high_res), points, labels, mask, spec["multimask"], stability)
    _, _, ious, low_res, high_res_mask, obj_ptr, score = ref
    tag = f"decode {case} [{('score', 'present', 'absent')[int(score_shift > 0) + 2 * int(score_shift < 0)]}]"
    # sharpened logits are ~1000x larger: compare them on the usual scale
    check(name, tag + " low", out.low_res / sharpen, low_res / sharpen)
    check(name, tag + " high", out.high_res / sharpen, high_res_mask / sharpen)
    check(name, tag + " iou", out.candidate_iou, ious)
    check(name, tag + " ptr", out.obj_ptr, obj_ptr)
    check(name, tag + " score", out.object_score_logits, score)
    best_iou = ious.gather(1, ious.argmax(1, keepdim=True))
    if not stability:
        check(name, tag + " chosen iou", out.iou, best_iou)


@torch.no_grad()
def test_mask_as_output(pair):
    name, official, ours, _, backbone = pair
    n = 3
    feat, high_res, _ = official_features(backbone, 1, n)
    mask = torch.zeros(n, 1, S, S, dtype=torch.bool)
    mask[0, :, 20:70, 30:90] = True
    mask[1, :, 100:, :40] = True  # third object: empty mask -> absent
    _, _, _, low, high, ptr, score = official._use_mask_as_output(feat, high_res, mask)
    out = ours.mask_as_output(feat, tuple(high_res), mask)
    check(name, "mask-as-output low", out.low_res, low)
    check(name, "mask-as-output high", out.high_res, high)
    check(name, "mask-as-output ptr", out.obj_ptr, ptr)
    check(name, "mask-as-output score", out.object_score_logits, score)


@pytest.mark.parametrize("binarize", [False, True])
@torch.no_grad()
def test_encode_memory(pair, binarize):
    name, official, ours, _, backbone = pair
    n = 3
    feat, _, _ = official_features(backbone, 0, n)
    logits = torch.randn(n, 1, S, S) * 8
    scores = torch.tensor([[3.0], [-2.0], [0.5]])
    official.binarize_mask_from_pts_for_mem_enc = binarize
    try:
        ref_feat, ref_pos = official._encode_new_memory([seq_first(feat)], [feat.shape[-2:]], logits, scores, True)
    finally:
        official.binarize_mask_from_pts_for_mem_enc = False
    mem, pos = ours.encode_memory(feat, logits, scores, binarize)
    check(name, f"memory encoder{' (binarized)' if binarize else ''}", mem, ref_feat)
    check(name, "memory pos", pos, ref_pos[-1])


@torch.no_grad()
def test_add_no_memory(pair):
    name, official, ours, _, backbone = pair
    feat, _, pos = official_features(backbone, 0, 2)
    ref = official._prepare_memory_conditioned_features(
        0, True, [seq_first(feat)], [seq_first(pos)], [feat.shape[-2:]], {}, 10
    )
    check(name, "init frame (no-memory embed)", ours.add_no_memory(feat), ref)


def select_memory(frame: int, cond: list[int], noncond: list[int], num_frames: int, reverse: bool):
    """What the official selection picks (stride 1, all conditioning frames): memory frames with their
    ``maskmem_tpos_enc`` rows, and pointer frames with their signed offsets."""
    sign = -1 if reverse else 1
    mems = [(t, 6) for t in cond]
    for back in range(1, 7):
        t = frame - sign * back
        if t in noncond:
            mems.append((t, back - 1))
    ptrs = [(t, (frame - t) * sign) for t in cond if (t - frame) * sign <= 0]
    for back in range(1, min(num_frames, 16)):
        t = frame - sign * back
        if t < 0 or t >= num_frames:
            break
        if t in noncond:
            ptrs.append((t, back))
    return mems, ptrs


MEMORY_CASES = {
    "forward, 20 frames": (5, [0], [1, 2, 3, 4], 20, False),
    "forward, full bank": (12, [0, 3], [4, 5, 6, 7, 8, 9, 10, 11], 30, False),
    "future cond frame": (5, [0, 9], [2, 3, 4], 20, False),
    "reverse, 8 frames": (2, [7], [3, 4, 5, 6], 8, True),
}


@pytest.mark.parametrize("case", list(MEMORY_CASES))
@torch.no_grad()
def test_attend_memory(pair, case):
    name, official, ours, _, backbone = pair
    frame, cond, noncond, num_frames, reverse = MEMORY_CASES[case]
    n = 2
    feat, _, pos = official_features(backbone, 1, n)
    gen = torch.Generator().manual_seed(2)
    _, mem_pos = ours.encode_memory(feat, torch.zeros(n, 1, S, S), torch.ones(n, 1), False)
    store = {}
    for t in cond + noncond:
        store[t] = {
            "maskmem_features": torch.randn(n, 64, S // 16, S // 16, generator=gen).bfloat16(),
            "maskmem_pos_enc": [mem_pos.clone()],
            "obj_ptr": torch.randn(n, 256, generator=gen),
        }
    output_dict = {
        "cond_frame_outputs": {t: store[t] for t in cond},
        "non_cond_frame_outputs": {t: store[t] for t in noncond},
    }
    ref = official._prepare_memory_conditioned_features(
        frame, False, [seq_first(feat)], [seq_first(pos)], [feat.shape[-2:]], output_dict, num_frames, reverse
    )
    mems, ptrs = select_memory(frame, cond, noncond, num_frames, reverse)
    out = ours.attend_memory(
        feat,
        pos,
        [store[t]["maskmem_features"] for t, _ in mems],
        [row for _, row in mems],
        torch.stack([store[t]["obj_ptr"] for t, _ in ptrs], dim=1),
        torch.tensor([off for _, off in ptrs]),
        num_frames,
    )
    check(name, f"memory attention ({case})", out, ref)


@torch.no_grad()
def test_attend_memory_without_pointers(pair):
    """No object pointers at all (the official fp32 path crashes on bf16 memories here: feed it fp32)."""
    name, official, ours, _, backbone = pair
    n = 2
    feat, _, pos = official_features(backbone, 0, n)
    _, mem_pos = ours.encode_memory(feat, torch.zeros(n, 1, S, S), torch.ones(n, 1), False)
    memory = torch.randn(n, 64, S // 16, S // 16).bfloat16()
    output_dict = {
        "cond_frame_outputs": {9: {"maskmem_features": memory.float(), "maskmem_pos_enc": [mem_pos],
                                   "obj_ptr": torch.randn(n, 256)}},
        "non_cond_frame_outputs": {},
    }
    ref = official._prepare_memory_conditioned_features(
        3, False, [seq_first(feat)], [seq_first(pos)], [feat.shape[-2:]], output_dict, 20
    )
    out = ours.attend_memory(feat, pos, [memory], [6], None, None, 20)
    check(name, "memory attention (no pointers)", out, ref)
