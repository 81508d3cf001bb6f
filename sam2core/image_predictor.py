"""Prompted masks on still images, as the official ``SAM2ImagePredictor`` (sam2 1.1.0, built by ``build_sam2``) makes
them: the same preprocessing, decoding, multimask choice and post-processing, for a batch of images and all the
prompts of an image at once.

- Preprocessing: the ``/255`` float image resized to ``S x S`` with bilinear, antialiased interpolation (a no-op at
  that size; the aspect ratio is not kept), then the ImageNet mean and std; unlike the video loader's bicubic resize
  of uint8 frames (``SAM2Model.preprocess``). The learned no-memory embedding is added to the stride-16 features.
- Prompts: points and box corners are scaled from image pixels to model-input pixels, box corners (labels 2, 3)
  first, with one padding point; a prompt without points or box has no sparse tokens. A mask prompt (a binary mask
  at image resolution) enters the decoder as a dense prompt, resized to ``4h x 4w`` with bilinear, antialiased
  interpolation (how SAM 2 feeds a mask input to its heads).
- Decoding: the single-mask output falls back to the multimask candidate with the best predicted IoU when it is
  unstable (``build_sam2``'s default); the object score does not gate the masks.
- Post-processing: low-resolution logits are upsampled to the original size (bilinear) and cut at 0.

:func:`decode_objects` decodes every object of one image at once: objects whose prompts have the same number of
tokens (and the same kind of mask prompt) form one decoder batch, which gives each object exactly the answer a call
of its own would. Its rule for ``multimask_output`` is the official notebooks': three candidates for a single click
(the one with the best predicted IoU is kept), one mask for a box, several points or a mask prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sam2core.modeling.sam2 import IMAGENET_MEAN, IMAGENET_STD, ImageFeatures, SAM2Model, stable_or_best

LOW_RES_CLAMP = 32.0  # low-resolution logits handed back by predict() are clamped to +-32 (as a next mask input)


def prepare_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``H x W x 3`` RGB image -> normalised fp32 ``[3, size, size]`` model input, on the image's device."""
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {tuple(image.shape)} {image.dtype}")
    x = image.permute(2, 0, 1).float().div(255.0)[None]
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean, std = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1), x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)[0]


def encode_images(model: SAM2Model, inputs: torch.Tensor) -> ImageFeatures:
    """Features of prepared images ``[B, 3, S, S]`` with the no-memory embedding added (what the decoder reads)."""
    feats = model.encode_image(inputs.to(model.device, non_blocking=True))
    return ImageFeatures(model.add_no_memory(feats.feat), feats.pos, feats.high_res)


@dataclass(frozen=True)
class ImagePrompt:
    """The prompts of one object, in pixels of the original image."""

    points: np.ndarray | None = None  # [N, 2] (x, y)
    labels: np.ndarray | None = None  # [N] 1 foreground, 0 background
    box: np.ndarray | None = None  # [4] x0, y0, x1, y1
    mask: np.ndarray | None = None  # [H, W] bool

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else len(self.points)

    @property
    def multimask(self) -> bool:
        """Whether the prompt is ambiguous enough for three candidates: a single click and nothing else."""
        return self.num_points == 1 and self.box is None and self.mask is None


@dataclass
class ObjectMasks:
    """The decoder's answer for the objects of one image, in the order they were given."""

    logits: torch.Tensor  # [K, 4h, 4w] fp32 low-resolution logits of the kept mask
    iou: torch.Tensor  # [K] fp32 predicted IoU of the kept mask


def decode_objects(model: SAM2Model, feats: ImageFeatures, image_hw: tuple[int, int],
                   prompts: Sequence[ImagePrompt]) -> ObjectMasks:
    """One mask per object of one image (``feats`` holds that image, batch 1), with the multimask rule above."""
    side = model.sam_prompt_encoder.mask_size
    logits = torch.empty(len(prompts), side, side, device=model.device)
    iou = torch.empty(len(prompts), device=model.device)
    groups: dict[tuple[int, bool, bool], list[int]] = {}
    for i, p in enumerate(prompts):
        key = (p.num_points + (2 if p.box is not None else 0), p.mask is not None, p.multimask)
        groups.setdefault(key, []).append(i)
    for (_, _, multimask), members in groups.items():
        chosen = [prompts[i] for i in members]
        coords, labels = _prompt_tensors(chosen, image_hw, model.image_size, model.device)
        masks = None
        if chosen[0].mask is not None:
            masks = torch.stack([torch.as_tensor(p.mask) for p in chosen]).to(model.device)
            masks = _mask_prompt(masks, side)
        low, scores = decode(model, feats, coords, labels, masks, multimask)
        best = scores.argmax(dim=1)
        index = torch.as_tensor(members, device=model.device)
        logits[index] = low[torch.arange(len(members), device=model.device), best]
        iou[index] = scores.gather(1, best[:, None])[:, 0]
    return ObjectMasks(logits, iou)


def decode(model: SAM2Model, feats: ImageFeatures, coords: torch.Tensor | None, labels: torch.Tensor | None,
           mask_input: torch.Tensor | None, multimask: bool, stable: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder logits ``[B, M, 4h, 4w]`` (fp32) and predicted IoU ``[B, M]`` for B prompts on one image's features
    (``coords [B, N, 2]`` model-input pixels, ``labels [B, N]``; ``mask_input [B, 1, 4h, 4w]`` logits); M = 3 with
    ``multimask``, else 1: the single-mask output, replaced by the best candidate where it is unstable when
    ``stable`` (the predictor's rule; the automatic generator makes it an option)."""
    prompt = model.sam_prompt_encoder
    dtype = feats.feat.dtype
    b = coords.shape[0] if coords is not None else mask_input.shape[0]
    if coords is None:
        sparse = feats.feat.new_zeros(b, 0, feats.feat.shape[1])
    else:
        sparse = prompt.embed_points(coords, labels).to(dtype)
    # the image's features stay at batch 1: the decoder shares their prompt-independent work between the B prompts
    dense = prompt.no_mask_dense(1) if mask_input is None else prompt.embed_mask(mask_input.to(dtype))
    out = model.sam_mask_decoder(feats.feat, prompt.dense_pe().to(dtype), sparse, dense.to(dtype), feats.high_res)
    masks, iou = out.masks.float(), out.iou.float()
    if multimask:
        return masks[:, 1:], iou[:, 1:]
    if not stable:
        return masks[:, :1], iou[:, :1]
    return stable_or_best(masks, iou)


def upsample(logits: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Low-resolution logits ``[K, 4h, 4w]`` -> ``[K, H, W]`` at the original image size (bilinear)."""
    if logits.shape[0] == 0:
        return logits.new_zeros(0, *image_hw)
    return F.interpolate(logits[:, None], size=image_hw, mode="bilinear", align_corners=False)[:, 0]


def _prompt_tensors(prompts: Sequence[ImagePrompt], image_hw: tuple[int, int], size: int,
                    device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Box corners then points of prompts with the same token count, in model-input pixels: ``[B, N, 2]`` and
    ``[B, N]``."""
    if prompts[0].num_points == 0 and prompts[0].box is None:
        return None, None
    coords, labels = [], []
    for p in prompts:
        c, t = [], []
        if p.box is not None:
            c.append(np.asarray(p.box, dtype=np.float32).reshape(2, 2))
            t.append(np.array([2, 3], dtype=np.int32))
        if p.points is not None:
            c.append(np.asarray(p.points, dtype=np.float32).reshape(-1, 2))
            t.append(np.asarray(p.labels, dtype=np.int32).reshape(-1))
        coords.append(np.concatenate(c))
        labels.append(np.concatenate(t))
    h, w = image_hw
    xy = torch.from_numpy(np.stack(coords)).to(device)
    xy = torch.stack([xy[..., 0] / w, xy[..., 1] / h], dim=-1) * size  # normalised first, as the official transform
    return xy, torch.from_numpy(np.stack(labels)).to(device)


def _mask_prompt(masks: torch.Tensor, side: int) -> torch.Tensor:
    """Binary masks ``[B, H, W]`` -> dense prompts ``[B, 1, side, side]`` (bilinear, antialiased)."""
    return F.interpolate(masks[:, None].float(), size=(side, side), mode="bilinear", align_corners=False,
                         antialias=True)


class ImagePredictor:
    """The official image predictor's interface: ``set_image`` / ``set_image_batch``, then ``predict`` as often as
    needed (``image_index`` picks an image of the batch)."""

    def __init__(self, model: SAM2Model) -> None:
        self.model = model
        self._features: ImageFeatures | None = None
        self._sizes: list[tuple[int, int]] = []

    @torch.inference_mode()
    def set_image(self, image: np.ndarray | torch.Tensor) -> None:
        """Encode one uint8 ``H x W x 3`` RGB image."""
        self.set_image_batch([image])

    @torch.inference_mode()
    def set_image_batch(self, images: Sequence[np.ndarray | torch.Tensor]) -> None:
        """Encode uint8 ``H x W x 3`` RGB images (any sizes) in one encoder batch."""
        frames = [torch.as_tensor(image) for image in images]
        inputs = torch.stack([prepare_image(f.to(self.model.device), self.model.image_size) for f in frames])
        self._features = encode_images(self.model, inputs)
        self._sizes = [(f.shape[0], f.shape[1]) for f in frames]

    @torch.inference_mode()
    def predict(
        self,
        points: np.ndarray | torch.Tensor | None = None,
        labels: np.ndarray | torch.Tensor | None = None,
        box: np.ndarray | torch.Tensor | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        multimask_output: bool = True,
        image_index: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for one prompt, in image pixels: ``points [N, 2]`` (x, y) with ``labels [N]`` (1 fg, 0 bg),
        ``box [4]`` (x0, y0, x1, y1), ``mask_input [1, 4h, 4w]`` (a previous low-resolution answer).

        Returns boolean masks ``[C, H, W]``, predicted IoU ``[C]`` and low-resolution logits ``[C, 4h, 4w]``
        (clamped to +-32), with C = 3 when ``multimask_output`` else 1.
        """
        if self._features is None:
            raise RuntimeError("call set_image() before predict()")
        if points is not None and (labels is None or len(labels) != len(points)):
            raise ValueError("points need one label each (1 foreground, 0 background)")
        hw = self._sizes[image_index]
        device = self.model.device
        prompt = ImagePrompt(None if points is None else np.asarray(torch.as_tensor(points).cpu()),
                             None if labels is None else np.asarray(torch.as_tensor(labels).cpu()),
                             None if box is None else np.asarray(torch.as_tensor(box).cpu()))
        coords, tags = _prompt_tensors([prompt], hw, self.model.image_size, device)
        if mask_input is not None:
            mask_input = torch.as_tensor(mask_input, dtype=torch.float32, device=device)
            mask_input = mask_input.reshape(1, 1, *mask_input.shape[-2:])
        low, iou = decode(self.model, self._features.index(image_index), coords, tags, mask_input, multimask_output)
        return upsample(low[0], hw) > 0, iou[0], low[0].clamp(-LOW_RES_CLAMP, LOW_RES_CLAMP)
