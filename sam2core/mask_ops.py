"""Mask and box utilities of automatic mask generation, in plain torch and numpy (no torchvision, no OpenCV).

Point grids and crop boxes, boxes around masks, box NMS with torchvision's ``nms``/``batched_nms`` semantics,
stability scores, small 8-connected components, and RLE encodings of binary masks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_VANILLA_NMS_NUMEL = {"cpu": 4000}  # above this many box coordinates NMS runs per category (20000 elsewhere)


def point_grid(n_per_side: int) -> np.ndarray:
    """``n*n`` points ``(x, y)`` in ``[0, 1]^2`` at the centres of an ``n x n`` grid of cells, row by row."""
    half_cell = 1.0 / (2 * n_per_side)
    side = np.linspace(half_cell, 1.0 - half_cell, n_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per crop layer 0..n_layers; layer i has ``int(n_per_side / downscale**i)`` points a side."""
    return [point_grid(int(n_per_side / downscale**i)) for i in range(n_layers + 1)]


def crop_boxes(image_hw: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """Crop boxes ``[x0, y0, x1, y1]`` and their layer: the whole image (layer 0), then ``(2**i)**2`` overlapping
    crops on layer i; neighbouring crops of layer i overlap by ``overlap_ratio * short_side * 2 / 2**i`` pixels."""
    h, w = image_hw
    boxes, layers = [[0, 0, w, h]], [0]
    short_side = min(h, w)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + w) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + h) / per_side)
        xs = [int((crop_w - overlap) * i) for i in range(per_side)]
        ys = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0 in xs:
            for y0 in ys:
                boxes.append([x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)])
                layers.append(layer)
    return boxes, layers


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` bool masks -> ``[N, 4]`` int64 boxes ``x0, y0, x1, y1`` of their pixels (inclusive indices);
    an empty mask gets ``[0, 0, 0, 0]``."""
    as_bytes = masks.view(torch.uint8)  # max over bytes is any(), vectorised on CPU (a bool any() is not: 15x slower)
    return _row_col_boxes(as_bytes.amax(dim=2) > 0, as_bytes.amax(dim=1) > 0)


def logit_boxes(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """``mask_boxes(logits > threshold)`` for ``[N, H, W]`` logits (no NaN), without making the masks: a row or
    column holds a pixel above the threshold iff its largest logit is, and on a CPU the comparison into bool masks
    costs more than the maxima (it is not vectorised)."""
    return _row_col_boxes(logits.amax(dim=2) > threshold, logits.amax(dim=1) > threshold)


def _row_col_boxes(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Boxes from which rows ``[N, H]`` and columns ``[N, W]`` of each mask hold a pixel."""
    h, w = rows.shape[1], cols.shape[1]
    ys = torch.arange(h, device=rows.device)
    xs = torch.arange(w, device=rows.device)
    y0, y1 = torch.where(rows, ys, h).amin(dim=1), torch.where(rows, ys, -1).amax(dim=1)
    x0, x1 = torch.where(cols, xs, w).amin(dim=1), torch.where(cols, xs, -1).amax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return torch.where(rows.any(dim=1, keepdim=True), boxes, 0)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas ``(x1 - x0) * (y1 - y0)`` of ``[N, 4]`` boxes, in their dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of the kept boxes in decreasing score order (torchvision's ``ops.nms`` semantics).

    A box is dropped when its IoU with a kept, higher-ranked box is ``> iou_threshold``; the ranking is
    ``torch.sort(scores, descending=True)`` on the scores' device, so tied scores keep torchvision's order. IoU uses
    areas without the +1 convention, in the boxes' dtype; the greedy pass runs on the host (boxes are few).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, dim=0, descending=True)[1]
    ranked = boxes[order].cpu().numpy()
    x0, y0, x1, y1 = ranked[:, 0], ranked[:, 1], ranked[:, 2], ranked[:, 3]
    areas = (x1 - x0) * (y1 - y0)
    zero = ranked.dtype.type(0)
    suppressed = np.zeros(len(ranked), dtype=bool)
    kept = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(ranked)):
            if suppressed[i]:
                continue
            kept.append(i)
            rest = slice(i + 1, None)
            inter_w = np.maximum(zero, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
            inter_h = np.maximum(zero, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
            inter = inter_w * inter_h
            iou = inter / (areas[i] + areas[rest] - inter)
            suppressed[rest] |= iou.astype(np.float64) > iou_threshold
    return order[torch.as_tensor(kept, dtype=torch.long, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, categories: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """NMS within each category (torchvision's ``ops.boxes.batched_nms`` semantics, ties included): kept indices in
    decreasing score order.

    Few boxes: one NMS over boxes shifted apart by category. Many (over 4000 coordinates on CPU, 20000 elsewhere):
    one NMS per category, the union re-sorted by score.
    """
    if boxes.numel() > _VANILLA_NMS_NUMEL.get(boxes.device.type, 20000):
        keep = torch.zeros_like(scores, dtype=torch.bool)
        for category in torch.unique(categories):
            members = torch.where(categories == category)[0]
            keep[members[nms(boxes[members], scores[members], iou_threshold)]] = True
        kept = torch.where(keep)[0]
        return kept[torch.sort(scores[kept], descending=True)[1]]
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    shift = categories.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + shift[:, None], scores, iou_threshold)


FLOAT_COUNT_LIMIT = 2**24  # fp32 holds every integer below this exactly


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks ``logits > threshold + offset`` and ``logits > threshold - offset`` (the first lies inside
    the second) for ``[N, H, W]`` logits; fp32 ``[N]`` (NaN where both are empty).

    The pixel counts are exact either way. On a CPU they are made as 0/1 floats in one buffer for both cuts (a
    comparison into bool is not vectorised there, one into float is: 2x faster) and summed in fp32, exact below
    2**24 pixels per mask; larger masks, and other devices, count bools in int32."""
    if logits.device.type == "cpu" and logits.shape[1:].numel() < FLOAT_COUNT_LIMIT:
        flags = torch.empty(logits.shape, dtype=torch.float32)
        inner = torch.gt(logits, threshold + offset, out=flags).flatten(1).sum(dim=1)
        outer = torch.gt(logits, threshold - offset, out=flags).flatten(1).sum(dim=1)
        return inner / outer
    inner = (logits > threshold + offset).flatten(1).sum(dim=1, dtype=torch.int32)
    outer = (logits > threshold - offset).flatten(1).sum(dim=1, dtype=torch.int32)
    return inner.float() / outer.float()


def small_components(member: torch.Tensor, max_area: int) -> torch.Tensor:
    """Pixels of ``member`` ``[N, 1, H, W]`` (bool) that lie in 8-connected components of at most ``max_area``
    pixels.

    Every member pixel starts with its own id and takes its neighbourhood's largest id, round after round, until
    nothing changes or ``max_area`` rounds have passed (a component that small is uniform by then). A region of one
    id is a whole component iff no member neighbour of its pixels carries another id.
    """
    n, _, h, w = member.shape
    if max_area <= 0 or member.numel() == 0:
        return torch.zeros_like(member, dtype=torch.bool)
    inside = member.float()
    ids = torch.arange(1, h * w + 1, device=member.device, dtype=torch.float32).view(1, 1, h, w)
    if h * w >= 2**24:
        ids = ids.double()
        inside = inside.double()
    labels = ids * inside
    for step in range(min(max_area, h * w)):
        spread = F.max_pool2d(labels, kernel_size=3, stride=1, padding=1) * inside
        if step % 8 == 7 and torch.equal(spread, labels):
            break
        labels = spread
    big = torch.finfo(labels.dtype).max
    max_nb = F.max_pool2d(labels, kernel_size=3, stride=1, padding=1)
    min_nb = -F.max_pool2d(torch.where(member, -labels, -big), kernel_size=3, stride=1, padding=1)
    leaking = member & ((max_nb != labels) | (min_nb != labels))
    # one bin per (mask, id); id 0 marks non-members
    flat = (labels.long() + torch.arange(n, device=member.device).view(n, 1, 1, 1) * (h * w + 1)).flatten()
    area = torch.zeros(n * (h * w + 1), dtype=torch.long, device=member.device)
    area.scatter_add_(0, flat, torch.ones_like(flat))
    leaks = torch.zeros_like(area).scatter_add_(0, flat, leaking.flatten().long())
    small = (area <= max_area) & (leaks == 0)
    return small[flat].view_as(member) & member


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of an ``H x W`` bool mask: column-major run lengths, starting with a background run."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [h * w]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [h, w], "counts": counts}


def coco_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of an ``H x W`` bool mask (``counts`` as a str, JSON-ready), via pycocotools."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("utf-8")}
