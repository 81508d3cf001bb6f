"""sam2core.image_predictor against the official SAM2ImagePredictor (as ``build_sam2`` builds it) on random weights:
the same candidates, predicted IoUs and masks for clicks, boxes, several points and mask inputs, one image or a
batch, and every object of an image decoded at once.

The official predictor imports torchvision's transforms: ``testkit.torchvision_standin`` supplies them when
torchvision is missing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam2core.image_predictor import ImagePredictor, ImagePrompt, decode, decode_objects, encode_images, \
    prepare_image, upsample
from sam2core.modeling.sam2 import ImageFeatures
from testkit import torchvision_standin
from tests.oracle import max_abs_diff, official_predictor, ours_from_official, randomize_constant_params, \
    report_parity

NAME = "sam2.1_hiera_tiny"
S = 128


def _image(seed: int, hw: tuple[int, int]) -> np.ndarray:
    coarse = torch.rand(1, 3, 7, 9, generator=torch.Generator().manual_seed(seed)) * 255
    return F.interpolate(coarse, size=hw, mode="bicubic", align_corners=False).clamp(0, 255).round() \
        .byte()[0].permute(1, 2, 0).numpy()


@pytest.fixture(scope="module", params=["stable", "unstable"])
def models(request):
    """The official predictor and ours on the same weights; "unstable" makes every single-mask output unstable (its
    logits near 0), so the single-mask answer falls back to a multimask candidate."""
    torchvision_standin.install()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    official, _ = official_predictor(NAME, S, apply_postprocessing=True)
    randomize_constant_params(official)
    with torch.no_grad():  # logits of SAM-like magnitude, so masks are not all empty or all full
        for mlp in official.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(50.0)
        if request.param == "unstable":
            official.sam_mask_decoder.output_hypernetworks_mlps[0].layers[-1].weight.mul_(1e-4)
    reference = SAM2ImagePredictor(official)
    reference._bb_feat_sizes = [(S // 4, S // 4), (S // 8, S // 8), (S // 16, S // 16)]
    return reference, ours_from_official(official.state_dict(), NAME, S)


IMAGES = {"downscaled": (100, 150), "upscaled": (90, 200), "model size": (S, S)}
PROMPTS = {
    "click": dict(points=np.array([[50.0, 30.0]]), labels=np.array([1])),
    "box": dict(box=np.array([20.0, 10.0, 120.0, 80.0])),
    "clicks": dict(points=np.array([[50.0, 30.0], [80.0, 60.0], [20.0, 70.0]]), labels=np.array([1, 0, 1])),
    "box+click": dict(points=np.array([[60.0, 40.0]]), labels=np.array([0]), box=np.array([5.0, 5.0, 90.0, 85.0])),
}


def _check(name: str, ref: tuple, got: tuple) -> None:
    ref_masks, ref_iou, ref_low = (torch.as_tensor(np.asarray(r)) for r in ref)
    masks, iou, low = (g.cpu() for g in got)
    assert masks.dtype == torch.bool and masks.shape == ref_masks.shape
    diff = max(max_abs_diff(low, ref_low), max_abs_diff(iou, ref_iou))
    assert report_parity(NAME, f"image {name}", diff) <= 1e-4
    assert torch.equal(masks, ref_masks.bool())


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("size", list(IMAGES))
def test_predict_matches_official(models, size, prompt, multimask):
    reference, ours = models
    image = _image(1, IMAGES[size])
    reference.set_image(image)
    predictor = ImagePredictor(ours)
    predictor.set_image(image)
    kwargs = PROMPTS[prompt]
    ref = reference.predict(point_coords=kwargs.get("points"), point_labels=kwargs.get("labels"),
                            box=kwargs.get("box"), multimask_output=multimask)
    got = predictor.predict(kwargs.get("points"), kwargs.get("labels"), kwargs.get("box"),
                            multimask_output=multimask)
    _check(f"{size} {prompt} multimask={multimask}", ref, got)
    assert got[0].any() and not got[0].all()  # a real mask, not a trivially empty or full one
    # the low-resolution answer fed back as a mask input
    ref2 = reference.predict(point_coords=kwargs.get("points"), point_labels=kwargs.get("labels"),
                             box=kwargs.get("box"), mask_input=ref[2][:1], multimask_output=False)
    got2 = predictor.predict(kwargs.get("points"), kwargs.get("labels"), kwargs.get("box"),
                             mask_input=got[2][:1], multimask_output=False)
    _check(f"{size} {prompt} + mask input", ref2, got2)


@pytest.mark.parametrize("prompt", ["box", "clicks"])
def test_single_mask_falls_back_when_unstable(models, prompt, request):
    """The single-mask answer is the decoder's single mask on the stable model and the best multimask candidate on
    the unstable one (so the parity above covers both sides of the rule)."""
    _, ours = models
    predictor = ImagePredictor(ours)
    predictor.set_image(_image(1, IMAGES["downscaled"]))
    kwargs = PROMPTS[prompt]
    _, _, single = predictor.predict(kwargs.get("points"), kwargs.get("labels"), kwargs.get("box"),
                                     multimask_output=False)
    _, iou, candidates = predictor.predict(kwargs.get("points"), kwargs.get("labels"), kwargs.get("box"))
    assert torch.equal(single[0], candidates[iou.argmax()]) == ("unstable" in request.node.callspec.id)


def test_batch_matches_official(models):
    reference, ours = models
    images = [_image(i, hw) for i, hw in enumerate(IMAGES.values())]
    reference.set_image_batch(images)
    predictor = ImagePredictor(ours)
    predictor.set_image_batch(images)
    boxes = [np.array([10.0 + 5 * i, 12.0, 70.0, 60.0 + 3 * i]) for i in range(len(images))]
    ref = reference.predict_batch(box_batch=boxes, multimask_output=False)
    for i in range(len(images)):
        got = predictor.predict(box=boxes[i], multimask_output=False, image_index=i)
        _check(f"batch image {i} box", (ref[0][i], ref[1][i], ref[2][i]), got)


def test_every_object_at_once_matches_official_one_by_one(models):
    """decode_objects on a mix of prompts gives each object the official single call's answer under the multimask
    rule: the best of three candidates for a single click, one mask otherwise."""
    reference, ours = models
    image = _image(4, (120, 160))
    reference.set_image(image)
    rng = np.random.default_rng(0)
    prompts = []
    for i in range(9):
        x0, y0 = rng.uniform(0, 80), rng.uniform(0, 60)
        box = np.array([x0, y0, x0 + rng.uniform(10, 70), y0 + rng.uniform(10, 50)])
        point = np.array([[x0 + 5, y0 + 5]])
        kind = i % 3
        prompts.append(ImagePrompt(box=box) if kind == 0 else ImagePrompt(point, np.array([1])) if kind == 1
                       else ImagePrompt(np.concatenate([point, point + 4]), np.array([1, 0]), box))
    with torch.inference_mode():
        feats = encode_images(ours, prepare_image(torch.from_numpy(image), S)[None])
        found = decode_objects(ours, feats, image.shape[:2], prompts)
        masks = upsample(found.logits, image.shape[:2]) > 0
    worst = 0.0
    for i, p in enumerate(prompts):
        ref_masks, ref_iou, _ = reference.predict(point_coords=p.points, point_labels=p.labels, box=p.box,
                                                  multimask_output=p.multimask, return_logits=True)
        best = int(np.argmax(ref_iou))
        assert torch.equal(masks[i], torch.from_numpy(ref_masks[best] > 0))
        worst = max(worst, abs(float(found.iou[i]) - float(ref_iou[best])))
    assert report_parity(NAME, "image objects at once (iou)", worst) <= 1e-4


def test_prompts_share_the_image_with_the_same_numbers(models):
    """B prompts on one image decode with the image's features at batch 1 (the first block's image side once): the
    same logits and IoUs, bit for bit, as with the features repeated per prompt (the official layout), for clicks
    and for clicks with mask inputs."""
    _, ours = models
    image = _image(5, (96, 128))
    with torch.inference_mode():
        feats = encode_images(ours, prepare_image(torch.from_numpy(image), S)[None])
        b = 7
        repeated = ImageFeatures(feats.feat.expand(b, -1, -1, -1), feats.pos,
                                 tuple(t.expand(b, -1, -1, -1) for t in feats.high_res))
        g = torch.Generator().manual_seed(1)
        coords = torch.rand(b, 2, 2, generator=g) * S
        labels = torch.tensor([[1, 0]] * b, dtype=torch.int32)
        side = ours.sam_prompt_encoder.mask_size
        for mask_input in (None, torch.randn(b, 1, side, side, generator=g) * 8):
            for multimask in (True, False):
                shared = decode(ours, feats, coords, labels, mask_input, multimask)
                per_prompt = decode(ours, repeated, coords, labels, mask_input, multimask)
                assert all(torch.equal(x, y) for x, y in zip(shared, per_prompt))


def test_mask_prompt_objects(models):
    """A binary mask prompt (image resolution) enters as a dense prompt resized to 4h x 4w, alone or with points."""
    reference, ours = models
    image = _image(5, (100, 150))
    reference.set_image(image)
    mask = np.zeros((100, 150), dtype=bool)
    mask[20:60, 30:110] = True
    prompts = [ImagePrompt(mask=mask), ImagePrompt(np.array([[40.0, 30.0]]), np.array([1]), mask=mask)]
    dense = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(S // 4, S // 4), mode="bilinear",
                          align_corners=False, antialias=True)[0].numpy()
    with torch.inference_mode():
        feats = encode_images(ours, prepare_image(torch.from_numpy(image), S)[None])
        found = decode_objects(ours, feats, image.shape[:2], prompts)
    for i, p in enumerate(prompts):
        _, ref_iou, ref_low = reference.predict(point_coords=p.points, point_labels=p.labels, mask_input=dense,
                                                multimask_output=False)
        assert max_abs_diff(found.logits[i].clamp(-32, 32), torch.from_numpy(ref_low[0])) <= 1e-4
        assert abs(float(found.iou[i]) - float(ref_iou[0])) <= 1e-4


def test_requires_image_first(models):
    with pytest.raises(RuntimeError, match="set_image"):
        ImagePredictor(models[1]).predict(np.array([[1.0, 1.0]]), np.array([1]))
