"""ImagePredictor against the official video predictor's answer on a prompted first frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sam2core.image_predictor import ImagePredictor
from tests.oracle import max_abs_diff, official_and_ours, report_parity

NAME = "sam2.1_hiera_tiny"
S = 128


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    official, ours = official_and_ours(NAME, S)
    official.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data += 5.0  # an object is present
    ours.load_state_dict(official.state_dict())
    coarse = torch.rand(1, 3, 9, 16, generator=torch.Generator().manual_seed(5)) * 255
    # downscaled frame: PIL's and torch's antialiased bicubic agree exactly here (upscaling may differ by 1-2 levels)
    image = F.interpolate(coarse, size=(100, 150), mode="bilinear").round().byte()[0].permute(1, 2, 0).numpy()
    folder = tmp_path_factory.mktemp("frames")
    Image.fromarray(image).save(folder / "00000.jpg", format="PNG")  # lossless content, the name the loader wants
    state = official.init_state(str(folder))
    predictor = ImagePredictor(ours)
    predictor.set_image(image)
    return official, state, predictor, image


@pytest.mark.parametrize("prompt", ["click", "box", "clicks"])
@torch.no_grad()
def test_matches_official_first_frame(setup, prompt):
    official, state, predictor, image = setup
    points = labels = box = None
    if prompt in ("click", "clicks"):
        points = np.array([[50.0, 30.0], [110.0, 70.0]])[: 1 if prompt == "click" else 2]
        labels = np.array([1, 0])[: len(points)]
    if prompt == "box":
        box = np.array([20.0, 10.0, 120.0, 80.0])
    official.reset_state(state)
    _, _, ref = official.add_new_points_or_box(state, 0, 1, points=points, labels=labels, box=box)
    multimask = prompt == "click"  # the official multimask rule: one click on an initial frame
    masks, iou, low_res = predictor.predict(points, labels, box, multimask=multimask)
    assert masks.shape == (3 if multimask else 1, *image.shape[:2]) and iou.shape == masks.shape[:1]
    best = low_res[iou.argmax()][None, None]
    ours = F.interpolate(best, size=image.shape[:2], mode="bilinear", align_corners=False)
    assert report_parity(NAME, f"image predictor ({prompt})", max_abs_diff(ours, ref)) <= 1e-4
    assert torch.equal(masks[iou.argmax()], ref[0, 0] > 0)


def test_requires_image_first():
    from sam2core.build import build_model

    with pytest.raises(RuntimeError, match="set_image"):
        ImagePredictor(build_model(NAME, image_size=64)).predict(np.array([[1.0, 1.0]]), np.array([1]))
