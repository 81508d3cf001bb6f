"""Frame preprocessing against Pillow and the official frame loader: the resize must be byte-identical to
``PIL.Image.resize`` (default bicubic filter) whether it upscales, downscales or both, and ``preprocess`` must give
the official loader's normalised tensor exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sam2core.build import build_model
from sam2core.modeling.resize import PILLOW_VERTICAL_FIRST, pil_bicubic_resize, pillow_taps, vertical_first

# (H, W) -> (h, w): up, down, one axis each way, tiny, 1080p both orientations, and the two sides of Pillow's
# vertical-first threshold (the height shrinks by exactly, then by more than, twice the width's shrink)
SIZES = {
    "200x360->256 mixed": ((200, 360), (256, 256)),
    "480x854->1024 up": ((480, 854), (1024, 1024)),
    "480x854->320 down": ((480, 854), (320, 320)),
    "37x53->64 up": ((37, 53), (64, 64)),
    "1x1->32 up": ((1, 1), (32, 32)),
    "720x1280->512 down": ((720, 1280), (512, 512)),
    "1080x1920->1024 down": ((1080, 1920), (1024, 1024)),
    "1920x1080->1024 portrait": ((1920, 1080), (1024, 1024)),
    "96x160->128 mixed": ((96, 160), (128, 128)),
    "64x100->64x37 width only": ((64, 100), (64, 37)),
    "50x64->91x64 height only": ((50, 64), (91, 64)),
    "100x100->60x80 tie": ((100, 100), (60, 80)),
    "101x100->60x80 past tie": ((101, 100), (60, 80)),
    "7x300->90x16 tall up, wide down": ((7, 300), (90, 16)),
}


def make_images(kind: str, h: int, w: int, seed: int) -> np.ndarray:
    """Two [h, w, 3] uint8 images: uniform noise, a smooth field, or 0/255 noise (clips, and tells pass orders
    apart)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    if kind == "binary":
        return (rng.integers(0, 2, (2, h, w, 3)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, (2, 1, 1, 3))
    field = np.sin(xx[None, ..., None] / max(w, 1) * 5 + phase) * np.cos(yy[None, ..., None] / max(h, 1) * 3)
    return np.round(127.5 + 127.5 * field).astype(np.uint8)


def pil_resized(images: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(img).resize((hw[1], hw[0]))) for img in images])


@pytest.mark.parametrize("kind", ["random", "smooth", "binary"])
@pytest.mark.parametrize("name", list(SIZES))
def test_resize_is_byte_identical_to_pillow(name: str, kind: str) -> None:
    (h, w), out = SIZES[name]
    images = make_images(kind, h, w, seed=len(name))
    expected = torch.from_numpy(pil_resized(images, out))
    channels_last = torch.from_numpy(images)
    ours = pil_bicubic_resize(channels_last.permute(0, 3, 1, 2), out)  # [B, H, W, 3] through a view
    assert ours.dtype == torch.uint8 and ours.shape == (2, 3, *out)
    assert torch.equal(ours.permute(0, 2, 3, 1), expected)
    planar = channels_last.permute(0, 3, 1, 2).contiguous()  # [B, 3, H, W]
    assert torch.equal(pil_bicubic_resize(planar, out), ours)


def test_pass_order_follows_pillow() -> None:
    assert not vertical_first((100, 100), (60, 80))
    assert vertical_first((101, 100), (60, 80)) == PILLOW_VERTICAL_FIRST
    assert vertical_first((1920, 1080), (1024, 1024)) == PILLOW_VERTICAL_FIRST
    assert not vertical_first((1080, 1920), (1024, 1024))
    assert not vertical_first((480, 854), (1024, 1024))


def test_unchanged_size_and_cached_taps() -> None:
    frames = torch.randint(0, 256, (1, 3, 16, 24), dtype=torch.uint8)
    assert pil_bicubic_resize(frames, (16, 24)) is frames
    cpu = torch.device("cpu")
    assert pillow_taps(360, 256, cpu) is pillow_taps(360, 256, cpu)
    with pytest.raises(TypeError):
        pil_bicubic_resize(frames.float(), (8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["200x360->256 mixed", "1920x1080->1024 portrait", "480x854->1024 up"])
def test_resize_on_cuda_matches_pillow(name: str) -> None:
    (h, w), out = SIZES[name]
    images = make_images("random", h, w, seed=1)
    frames = torch.from_numpy(images).cuda()
    ours = pil_bicubic_resize(frames.permute(0, 3, 1, 2), out).permute(0, 2, 3, 1).cpu()
    assert torch.equal(ours, torch.from_numpy(pil_resized(images, out)))


@pytest.fixture(scope="module")
def model():
    return build_model("sam2.1_hiera_tiny", image_size=256)


@pytest.mark.parametrize("hw", [(200, 360), (37, 53), (720, 1280), (1080, 608), (256, 256)],
                         ids=["mixed", "up", "down", "portrait", "same"])
@torch.no_grad()
def test_preprocess_equals_official_loader(model, tmp_path, hw) -> None:
    from sam2.utils.misc import load_video_frames

    images = make_images("smooth", *hw, seed=5)
    images[1] = make_images("random", *hw, seed=6)[1]
    for i, image in enumerate(images):
        # lossless PNG content under the .jpg names the loader lists (PIL sniffs the format)
        Image.fromarray(image).save(tmp_path / f"{i:05d}.jpg", format="PNG")
    expected, _, _ = load_video_frames(str(tmp_path), model.image_size, offload_video_to_cpu=True)
    ours = model.preprocess(torch.from_numpy(images))
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    assert torch.equal(ours, expected)
