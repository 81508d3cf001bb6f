"""AutomaticMaskGenerator against the official SAM2AutomaticMaskGenerator (sam2 1.1.0) on the same random weights.

The official generator imports torchvision (box NMS, the image predictor's Resize/Normalize/ToTensor), which cannot
be installed beside the CPU torch here, and its hole/speck removal needs the package's CUDA extension: this module
uses plain stand-ins with their semantics (``testkit.torchvision_standin`` when torchvision is missing; connected
components by scipy). Random weights make most masks collapse under NMS, so the weights are
perturbed to make masks depend on the click (see ``_diversify``) and the thresholds are low.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from sam2core import AutomaticMaskGenerator
from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession
from sam2core.mask_ops import (batched_nms, logit_boxes, mask_boxes, nms, small_components, stability_score,
                               uncompressed_rle)
from testkit import torchvision_standin
from tests.oracle import official_and_ours, report_parity

NAME = "sam2.1_hiera_tiny"
S = 128


# ---- stand-ins for torchvision (testkit.torchvision_standin) and the official CUDA extension ----------------------

_install_fake_torchvision = torchvision_standin.install


def _scipy_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``get_connected_components`` (8-connectivity) for ``[N, 1, H, W]`` masks, by scipy."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    counts = np.zeros(mask.shape, dtype=np.int32)
    for i, m in enumerate(mask[:, 0].cpu().numpy().astype(bool)):
        lab, _ = scipy.ndimage.label(m, structure=np.ones((3, 3)))
        labels[i, 0] = lab
        counts[i, 0] = np.where(lab > 0, np.bincount(lab.ravel())[lab], 0)
    return torch.from_numpy(labels), torch.from_numpy(counts)


# ---- the pair of generators -------------------------------------------------------------------------------------

def _diversify(official: torch.nn.Module) -> None:
    """Make random-weight masks depend on the click: a finer point code, learned decoder tokens 10x weaker (the
    mask tokens then take most of their content from the click's token), upscaling kernels equal over their taps
    and no high-resolution skip features (no fine periodic or noisy sign pattern that would put every mask's box on
    the whole image), and 200x mask logits (about +-20, as trained models give)."""
    decoder = official.sam_mask_decoder
    with torch.no_grad():
        official.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(5.0)
        for emb in (decoder.mask_tokens, decoder.iou_token, decoder.obj_score_token,
                    official.sam_prompt_encoder.not_a_point_embed):
            emb.weight.mul_(0.1)
        for i in (0, 3):
            weight = decoder.output_upscaling[i].weight
            weight.copy_(weight.mean(dim=(2, 3), keepdim=True).expand_as(weight))
        decoder.conv_s0.weight.zero_()
        for mlp in decoder.output_hypernetworks_mlps:  # logits of SAM-like magnitude (stability scores not all 0)
            mlp.layers[-1].weight.mul_(200.0)
            mlp.layers[-1].bias.mul_(200.0)
        decoder.conv_s1.weight.zero_()


@pytest.fixture(scope="module")
def models():
    _install_fake_torchvision()
    official, _ = official_and_ours(NAME, S)
    _diversify(official)
    from testkit.oracle import ours_from_official

    return official, ours_from_official(official.state_dict(), NAME, S)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    coarse = torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(3)) * 255
    return F.interpolate(coarse, size=(96, 160), mode="bicubic", align_corners=False).clamp(0, 255).round() \
        .byte()[0].permute(1, 2, 0).numpy()


def official_generator(model: torch.nn.Module, **kwargs) -> object:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    gen = SAM2AutomaticMaskGenerator(model, **kwargs)
    gen.predictor._bb_feat_sizes = [(S // 4, S // 4), (S // 8, S // 8), (S // 16, S // 16)]
    return gen


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _official_records(model: torch.nn.Module, image: np.ndarray, **kwargs) -> list[dict]:
    return official_generator(model, **kwargs).generate(image)


def assert_same_records(name: str, ref: list[dict], got: list[dict]) -> None:
    """Same masks in the same order: pixels (IoU >= 0.99; the report gives the worst), scores within 1e-4, the same
    click, box and crop."""
    assert len(got) == len(ref), (len(got), len(ref))
    worst_iou, worst_score, differing = 1.0, 0.0, 0
    for a, b in zip(ref, got):
        assert set(b) == set(a)
        seg_a, seg_b = a["segmentation"], b["segmentation"]
        if isinstance(seg_a, dict):
            assert seg_b == seg_a
        else:
            assert seg_b.shape == seg_a.shape and seg_b.dtype == np.bool_
            differing += int((seg_a != seg_b).sum())
            worst_iou = min(worst_iou, _mask_iou(seg_a, seg_b))
        worst_score = max(worst_score, abs(a["predicted_iou"] - b["predicted_iou"]),
                          abs(a["stability_score"] - b["stability_score"]))
        assert b["point_coords"] == a["point_coords"] and b["crop_box"] == a["crop_box"]
        assert b["bbox"] == a["bbox"] and b["area"] == a["area"]
    report_parity(NAME, f"automatic {name}: {len(ref)} masks score", worst_score)
    print(f"PARITY automatic {name}: worst mask IoU {worst_iou:.4f}, {differing} differing pixels in all")
    assert worst_iou >= 0.99 and worst_score <= 1e-4


def distinct_nonempty(records: list[dict]) -> int:
    return len({r["segmentation"].tobytes() for r in records if r["area"] > 0})


LOW = {"points_per_side": 16, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.mark.parametrize("case", [
    {},
    {"box_nms_thresh": 0.8, "stability_score_thresh": 0.3, "stability_score_offset": 0.5, "mask_threshold": 0.5},
    {"pred_iou_thresh": 0.5, "points_per_batch": 50},
    {"multimask_output": False},
    {"points_per_side": None, "point_grids": [np.random.default_rng(0).random((150, 2))]},
], ids=["low-thresholds", "stability-and-cut", "iou-filter-odd-batches", "single-mask", "explicit-grid"])
def test_matches_official(models, image, case):
    official, ours = models
    kwargs = {**LOW, **case}
    ref = _official_records(official, image, **kwargs)
    got = AutomaticMaskGenerator(ours, dynamic_multimask_via_stability=False, **kwargs).generate(image)
    assert_same_records("+".join(k for k in case) or "low thresholds", ref, got)
    assert distinct_nonempty(ref) >= (10 if not case else 1)


def test_upsampling_one_candidate_at_a_time_matches_official(models, image, monkeypatch):
    """On a CPU candidates are upsampled a few at a time (by a byte budget; about 34 here, which divides no batch):
    one at a time gives the official records too."""
    import sam2core.automatic as automatic

    official, ours = models
    monkeypatch.setattr(automatic, "CPU_UPSAMPLE_BYTES", 1)
    assert_same_records("one at a time", _official_records(official, image, **LOW),
                        AutomaticMaskGenerator(ours, dynamic_multimask_via_stability=False, **LOW).generate(image))


@pytest.mark.parametrize("overlap", [True, False], ids=["scoring-beside-decoding", "serial"])
def test_scoring_on_its_own_thread_or_not_matches_official(models, image, monkeypatch, overlap):
    """With a core spare the candidates of one batch are scored on a thread of their own while the next batch is
    decoded (this suite runs one intra-op thread, so every other case here does that on a 2-core machine); without
    one, in turn. Both give the official records."""
    import sam2core.automatic as automatic
    from sam2core.thread_plan import ThreadPlan

    official, ours = models
    monkeypatch.setattr(automatic, "plan_threads", lambda wanted, device: ThreadPlan(overlap and wanted, 1))
    scored_on: set[str] = set()
    score = automatic.AutomaticMaskGenerator._score

    def logged(self, *args):
        scored_on.add(threading.current_thread().name)
        return score(self, *args)

    monkeypatch.setattr(automatic.AutomaticMaskGenerator, "_score", logged)
    assert_same_records("scoring beside decoding" if overlap else "serial", _official_records(official, image, **LOW),
                        AutomaticMaskGenerator(ours, dynamic_multimask_via_stability=False, **LOW).generate(image))
    main = {threading.main_thread().name}
    assert main.isdisjoint(scored_on) if overlap else scored_on == main


def test_official_defaults_match(models, image):
    """The official thresholds (0.8 IoU, 0.95 stability) on random weights: few or no masks, the same ones."""
    official, ours = models
    ref = _official_records(official, image, points_per_side=8)
    assert_same_records("official defaults", ref, AutomaticMaskGenerator(ours, points_per_side=8).generate(image))


def test_crop_layers_match_official(models, image):
    official, ours = models
    kwargs = {**LOW, "crop_n_layers": 1, "crop_n_points_downscale_factor": 2, "crop_overlap_ratio": 0.25,
              "crop_nms_thresh": 0.6}
    ref = _official_records(official, image, **kwargs)
    got = AutomaticMaskGenerator(ours, **kwargs).generate(image)
    assert_same_records("crop layers", ref, got)
    assert len({tuple(r["crop_box"]) for r in ref}) >= 2 and distinct_nonempty(ref) >= 5


def test_min_region_area_matches_official(models, image, monkeypatch):
    import sam2.utils.misc

    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", _scipy_components)
    official, ours = models
    kwargs = {**LOW, "min_mask_region_area": 40}
    ref = _official_records(official, image, **kwargs)
    got = AutomaticMaskGenerator(ours, **kwargs).generate(image)
    assert_same_records("min_mask_region_area", ref, got)
    plain = AutomaticMaskGenerator(ours, **LOW).generate(image)
    assert [r["area"] for r in got] != [r["area"] for r in plain]  # the option did change masks
    assert distinct_nonempty(ref) >= 5


@pytest.fixture(scope="module")
def models_postprocessing():
    """The official model as ``build_sam2`` makes it (single-mask outputs fall back to a stable candidate)."""
    _install_fake_torchvision()
    from tests.oracle import official_predictor, randomize_constant_params
    from testkit.oracle import ours_from_official

    official, _ = official_predictor(NAME, S, apply_postprocessing=True)
    randomize_constant_params(official)
    _diversify(official)
    return official, ours_from_official(official.state_dict(), NAME, S)


@pytest.mark.parametrize("case", [{"use_m2m": True}, {"use_m2m": True, "pred_iou_thresh": 0.55},
                                  {"multimask_output": False}], ids=["m2m", "m2m-iou-filter", "single-mask"])
def test_m2m_and_stability_fallback_match_official(models_postprocessing, image, case):
    official, ours = models_postprocessing
    kwargs = {**LOW, **case}
    ref = _official_records(official, image, **kwargs)
    got = AutomaticMaskGenerator(ours, **kwargs).generate(image)
    assert_same_records("+".join(f"{k}={v}" for k, v in case.items()) + " (fallback)", ref, got)
    assert distinct_nonempty(ref) >= (10 if case.get("use_m2m") else 1)


def test_coco_rle_output_matches_official(models, image):
    official, ours = models
    kwargs = {**LOW, "output_mode": "coco_rle"}
    ref = _official_records(official, image, **kwargs)
    got = AutomaticMaskGenerator(ours, **kwargs).generate(image)
    assert_same_records("coco_rle", ref, got)
    raw = AutomaticMaskGenerator(ours, **{**LOW, "output_mode": "uncompressed_rle"}).generate(image)
    from pycocotools import mask as mask_utils

    for r, c in zip(raw, got):
        assert mask_utils.frPyObjects(r["segmentation"], *r["segmentation"]["size"])["counts"].decode() == \
            c["segmentation"]["counts"]


def test_reuses_given_features(models, image, monkeypatch):
    """Features handed in replace the encoder pass of the uncropped layer and give the same masks as computing them."""
    _, ours = models
    gen = AutomaticMaskGenerator(ours, **LOW)
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]
    x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        feats = ours.encode_image((x - mean) / std)
        video_style = ours.encode_image(ours.preprocess(torch.from_numpy(image)[None]))
    computed = gen.generate_masks(image)
    calls = []
    original = ours.encode_image
    monkeypatch.setattr(ours, "encode_image", lambda *a, **k: calls.append(1) or original(*a, **k))
    given = gen.generate_masks(image, features=feats)
    assert not calls and len(given) == len(computed) >= 10
    assert torch.equal(given.masks, computed.masks) and torch.equal(given.boxes, computed.boxes)
    assert len(gen.generate_masks(image, features=video_style)) > 0 and not calls
    with pytest.raises(ValueError, match="one frame"):
        gen.generate_masks(image, features=video_style.expand(2))


def test_runs_on_a_bfloat16_session_s_features(models, image):
    """The pipeline hands the generator the features a bf16 session computed, under that session's autocast: it runs
    there and finds masks close to the fp32 ones of the same features."""
    _, ours = models
    gen = AutomaticMaskGenerator(ours, **LOW)
    frames = ArrayFrameSource(image[None])
    fp32 = VideoSession(ours, frames, SessionOptions(dtype="float32"))
    bf16 = VideoSession(ours, frames, SessionOptions(dtype="bfloat16"))
    reference = gen.generate_masks(image, fp32.features(0))
    assert bf16.features(0).high_res[0].dtype == torch.bfloat16  # (the neck hands out bf16 and fp32 maps)
    with bf16.compute_context():
        found = gen.generate_masks(image, bf16.features(0))
    assert len(found) > 0 and found.masks.shape[1:] == reference.masks.shape[1:]
    inter = (found.masks[:, None] & reference.masks[None]).flatten(2).sum(-1).float()
    union = (found.masks[:, None] | reference.masks[None]).flatten(2).sum(-1).float()
    best = (inter / union.clamp(min=1)).max(dim=1).values
    assert float(best.median()) > 0.8  # most bf16 masks have an fp32 twin


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_skipped_clicks_are_not_decoded(models, image, monkeypatch, crop_n_layers):
    """Clicks on ``skip`` pixels (discovery's known objects) are left out before decoding, in every crop layer; an
    empty ``skip`` changes nothing, a full one leaves no mask."""
    _, ours = models
    gen = AutomaticMaskGenerator(ours, **LOW, crop_n_layers=crop_n_layers)
    h, w = image.shape[:2]
    decoded: list[int] = []
    original = gen._decode
    monkeypatch.setattr(gen, "_decode", lambda feats, coords, *a: decoded.append(len(coords))
                        or original(feats, coords, *a))
    every = gen.generate_masks(image)
    clicks = sum(decoded)
    decoded.clear()
    nothing_skipped = gen.generate_masks(image, skip=torch.zeros(h, w, dtype=torch.bool))
    assert sum(decoded) == clicks and torch.equal(nothing_skipped.masks, every.masks)
    left = torch.zeros(h, w, dtype=torch.bool)
    left[:, : w // 2] = True
    decoded.clear()
    right_only = gen.generate_masks(image, skip=left)
    assert 0 < sum(decoded) < clicks and len(right_only) > 0
    assert (right_only.point_coords[:, 0] >= w // 2).all()  # every mask comes from a click off the skipped half
    decoded.clear()
    assert len(gen.generate_masks(image, skip=torch.ones(h, w, dtype=torch.bool))) == 0 and not decoded
    with pytest.raises(ValueError, match="skip"):
        gen.generate_masks(image, skip=left[:-1])


def test_rejects_bad_arguments(models):
    _, ours = models
    with pytest.raises(ValueError, match="exactly one"):
        AutomaticMaskGenerator(ours, points_per_side=None)
    with pytest.raises(ValueError, match="output_mode"):
        AutomaticMaskGenerator(ours, output_mode="png")
    with pytest.raises(ValueError, match="uint8"):
        AutomaticMaskGenerator(ours, points_per_side=4).generate(np.zeros((8, 8, 3), dtype=np.float32))


# ---- the mask utilities on their own ------------------------------------------------------------------------------

def test_nms_matches_reference_with_ties():
    g = torch.Generator().manual_seed(0)
    xy = torch.randint(0, 40, (300, 2), generator=g).float()
    boxes = torch.cat([xy, xy + torch.randint(1, 30, (300, 2), generator=g).float()], dim=1)
    scores = torch.randint(0, 6, (300,), generator=g).float()  # many ties
    for thr in (0.3, 0.5, 0.7):
        assert torch.equal(nms(boxes, scores, thr), torchvision_standin.reference_nms(boxes, scores, thr))
    cats = torch.randint(0, 3, (300,), generator=g)
    assert torch.equal(batched_nms(boxes, scores, cats, 0.5), torchvision_standin.reference_batched_nms(boxes, scores, cats, 0.5))
    many = boxes.repeat(5, 1) + torch.arange(1500).float().remainder(7)[:, None]  # > 4000 coordinates: per category
    many_scores, many_cats = scores.repeat(5), cats.repeat(5)
    assert torch.equal(batched_nms(many, many_scores, many_cats, 0.6),
                       torchvision_standin.reference_batched_nms(many, many_scores, many_cats, 0.6))
    assert nms(boxes[:0], scores[:0], 0.5).numel() == 0


def test_mask_boxes_and_rle():
    masks = torch.zeros(3, 7, 9, dtype=torch.bool)
    masks[0, 2:5, 3:8] = True
    masks[1, 6, 0] = True
    assert mask_boxes(masks).tolist() == [[3, 2, 7, 4], [0, 6, 0, 6], [0, 0, 0, 0]]
    from pycocotools import mask as mask_utils

    for m in masks.numpy():
        rle = uncompressed_rle(m)
        assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(rle, 7, 9)).astype(bool), m)


def test_scores_and_boxes_from_logits_are_those_of_the_binary_masks():
    """The generator's CPU shortcuts count and box exactly what the official comparisons do: stability from 0/1
    floats (also with logits exactly at the cuts and an empty pair, NaN), boxes from row and column maxima."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 33, 47, generator=g) * 4).round() / 2  # many logits exactly at -1, 0 and 1
    logits[4] = -5.0  # both masks empty
    logits[5] = -5.0
    logits[5, 3, 40] = 0.5  # one pixel above the cut only
    inner = (logits > 1.0).flatten(1).sum(dim=1, dtype=torch.int32)
    outer = (logits > -1.0).flatten(1).sum(dim=1, dtype=torch.int32)
    expected = inner.float() / outer.float()
    scores = stability_score(logits, 0.0, 1.0)
    torch.testing.assert_close(scores, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(scores[4]) and scores[5] == 0.0
    for threshold in (-1.0, 0.0, 0.5, 1.0):
        assert torch.equal(logit_boxes(logits, threshold), mask_boxes(logits > threshold))
    assert logit_boxes(logits, 0.0)[4].tolist() == [0, 0, 0, 0]
    assert logit_boxes(logits, 0.0)[5].tolist() == [40, 3, 40, 3]


def test_small_components_match_scipy():
    g = torch.Generator().manual_seed(1)
    member = torch.rand(6, 1, 24, 24, generator=g) > 0.55
    for area in (1, 5, 30):
        _, counts = _scipy_components(member)
        expected = member & (counts <= area)
        assert torch.equal(small_components(member, area), expected)
