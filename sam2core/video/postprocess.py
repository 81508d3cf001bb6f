"""Output post-processing switches of the official predictor, in plain torch (CPU and CUDA, no compiled extension).

``fill_holes``: background (logit <= 0) regions that are 8-connected components of at most ``max_area`` pixels become
foreground with logit 0.1. ``non_overlap``: each pixel keeps only its highest-scoring object.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HOLE_FILL_LOGIT = 0.1
SUPPRESSED_LOGIT = -10.0


def _propagate_max(labels: torch.Tensor, background: torch.Tensor, steps: int) -> torch.Tensor:
    """Spread the largest label through 8-connected background for ``steps`` rounds (foreground stays 0)."""
    for _ in range(steps):
        labels = F.max_pool2d(labels, kernel_size=3, stride=1, padding=1) * background
    return labels


def fill_holes(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """Fill background components of area <= ``max_area`` in ``logits`` [B,1,H,W] (returns a new tensor).

    A component of at most ``max_area`` pixels has geodesic diameter below ``max_area``, so that many rounds of
    max-label spreading give it one uniform label. A labelled region is a whole component (not a piece of a larger,
    still-spreading one) iff no background neighbour of its pixels carries another label; only such regions of small
    enough area are filled.
    """
    if max_area <= 0:
        return logits
    b, _, h, w = logits.shape
    background = logits <= 0
    # unique positive ids per pixel; float32 holds integers exactly only up to 2**24
    dtype = torch.float32 if b * h * w < 2**24 else torch.float64
    background = background.to(dtype)
    ids = torch.arange(1, b * h * w + 1, device=logits.device, dtype=dtype).view(b, 1, h, w)
    labels = _propagate_max(ids * background, background, min(max_area, h * w))
    # neighbours' largest and smallest labels over background (foreground counts as "no neighbour")
    big = torch.finfo(labels.dtype).max
    max_nb = F.max_pool2d(labels, kernel_size=3, stride=1, padding=1)
    min_nb = -F.max_pool2d(torch.where(background > 0, -labels, -big), kernel_size=3, stride=1, padding=1)
    inconsistent = (background > 0) & ((max_nb != labels) | (min_nb != labels))

    flat = labels.flatten().long()
    # per-label pixel and leak counts by scatter-add (bincount would sync a GPU to size its output)
    area = torch.zeros(b * h * w + 1, device=logits.device, dtype=torch.int32)
    area.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
    leaks = torch.zeros_like(area).scatter_add_(0, flat, inconsistent.flatten().to(torch.int32))
    is_hole_label = (area <= max_area) & (leaks == 0)
    is_hole_label[0] = False
    is_hole = is_hole_label[flat].view_as(logits)
    return torch.where(is_hole, torch.full_like(logits, HOLE_FILL_LOGIT), logits)


def non_overlap(logits: torch.Tensor) -> torch.Tensor:
    """Keep, at every pixel, only the top object's logit; the others are clamped to at most -10.

    ``logits``: [N,1,H,W] or [N,H,W] with objects along dim 0."""
    if logits.shape[0] <= 1:
        return logits
    winner = logits.argmax(dim=0, keepdim=True)
    index = torch.arange(logits.shape[0], device=logits.device).view(-1, *([1] * (logits.ndim - 1)))
    return torch.where(winner == index, logits, logits.clamp(max=SUPPRESSED_LOGIT))
