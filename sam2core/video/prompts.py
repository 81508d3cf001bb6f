"""User prompts to model inputs: clicks and boxes in video pixels -> model-input pixels, masks -> S×S binary masks.

Everything is validated first; a bad prompt raises ``PromptError`` naming the object and the frame.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from .state import PointPrompt

BOX_LABELS = (2, 3)  # a box enters the decoder as its two corners with these labels


class PromptError(ValueError):
    """A prompt or propagation request that cannot be applied (the message names the object and frame)."""


def point_prompt(where: str, points: npt.ArrayLike | None, labels: npt.ArrayLike | None, box: npt.ArrayLike | None,
                 video_size: tuple[int, int], image_size: int, device: torch.device) -> PointPrompt:
    """Clicks (label 1 positive, 0 negative) and/or a box [x0, y0, x1, y1], in pixels of a video of
    ``video_size`` = (height, width), as [1,N,2] model-input coordinates (box corners first) and [1,N] labels."""
    if (points is None) != (labels is None):
        raise PromptError(f"{where}: points and labels must be given together")
    if points is None and box is None:
        raise PromptError(f"{where}: give points with labels, a box, or both")
    coords = torch.zeros(0, 2, dtype=torch.float32)
    codes = torch.zeros(0, dtype=torch.int32)
    if points is not None:
        coords = torch.as_tensor(np.asarray(points, dtype=np.float32))
        codes = torch.as_tensor(np.asarray(labels)).to(torch.int32)
        if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
            raise PromptError(f"{where}: points must be [[x, y], ...], got shape {tuple(coords.shape)}")
        if codes.shape != (coords.shape[0],):
            raise PromptError(f"{where}: {coords.shape[0]} points but labels of shape {tuple(codes.shape)}")
        if not bool(((codes == 0) | (codes == 1)).all()):
            raise PromptError(f"{where}: labels must be 1 (positive) or 0 (negative), got {codes.tolist()}")
    if box is not None:
        corners = torch.as_tensor(np.asarray(box, dtype=np.float32))
        if corners.numel() != 4:
            raise PromptError(f"{where}: box must be [x0, y0, x1, y1], got {np.asarray(box).tolist()}")
        coords = torch.cat([corners.reshape(2, 2), coords])
        codes = torch.cat([torch.tensor(BOX_LABELS, dtype=torch.int32), codes])
    if not bool(torch.isfinite(coords).all()):
        raise PromptError(f"{where}: point and box coordinates must be finite")
    height, width = video_size
    coords = coords.unsqueeze(0) / torch.tensor([width, height]) * image_size
    return PointPrompt(coords=coords.to(device), labels=codes.unsqueeze(0).to(device))


def mask_prompt(where: str, mask: np.ndarray | torch.Tensor, image_size: int, device: torch.device) -> torch.Tensor:
    """A 2-D mask (bool or 0/1, any resolution) as a [1,1,S,S] float 0/1 mask: antialiased bilinear resize, >= 0.5."""
    tensor = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    if tensor.ndim != 2 or tensor.numel() == 0:
        raise PromptError(f"{where}: mask must be a 2-D array, got shape {tuple(tensor.shape)}")
    tensor = tensor.to(torch.bool).to(device, torch.float32)[None, None]
    if tensor.shape[-2:] != (image_size, image_size):
        tensor = F.interpolate(tensor, size=(image_size, image_size), mode="bilinear", align_corners=False,
                               antialias=True)
        tensor = (tensor >= 0.5).float()
    return tensor
