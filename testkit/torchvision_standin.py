"""Plain-torch stand-ins for the few torchvision pieces the official ``sam2`` package imports (the image predictor's
``Resize``/``Normalize``/``ToTensor``, the generator's box NMS), with torchvision's semantics.

torchvision cannot be installed beside the CPU torch here; :func:`install` puts a small ``torchvision`` module into
``sys.modules`` when the real one is missing, so the official image predictor and generator can serve as oracles in
tests and benchmarks.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F


class Resize(torch.nn.Module):
    """torchvision ``Resize((h, w))`` on a float CHW tensor: bilinear, antialiased, a no-op at the same size."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if [img.shape[-2], img.shape[-1]] == self.size:
            return img
        out = F.interpolate(img.unsqueeze(0), size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return out.squeeze(0)


class Normalize(torch.nn.Module):
    """torchvision ``Normalize(mean, std)`` on a CHW tensor."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=img.dtype, device=img.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=img.dtype, device=img.device).view(-1, 1, 1)
        return (img - mean) / std


class ToTensor:
    """torchvision ``ToTensor`` for a uint8 HWC array: float CHW in [0, 1]."""

    def __call__(self, pic: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(pic.transpose(2, 0, 1))).float().div(255)


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's CPU ``nms`` kernel as a plain double loop (same sort call, same float32 IoU, ``>`` drops)."""
    order = torch.sort(scores, 0, descending=True)[1].tolist()
    b = boxes.float()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    dropped, kept = set(), []
    for pos, i in enumerate(order):
        if i in dropped:
            continue
        kept.append(i)
        for j in order[pos + 1:]:
            if j in dropped:
                continue
            w = torch.clamp(torch.minimum(b[i, 2], b[j, 2]) - torch.maximum(b[i, 0], b[j, 0]), min=0)
            h = torch.clamp(torch.minimum(b[i, 3], b[j, 3]) - torch.maximum(b[i, 1], b[j, 1]), min=0)
            inter = w * h
            if (inter / (area[i] + area[j] - inter)).item() > iou_threshold:
                dropped.add(j)
    return torch.tensor(kept, dtype=torch.long)


def reference_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                          iou_threshold: float) -> torch.Tensor:
    """torchvision's ``batched_nms``: categories shifted apart (few boxes) or NMS per category (many)."""
    if boxes.numel() > 4000:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        for c in torch.unique(idxs):
            members = torch.where(idxs == c)[0]
            keep[members[reference_nms(boxes[members], scores[members], iou_threshold)]] = True
        kept = torch.where(keep)[0]
        return kept[scores[kept].sort(descending=True)[1]]
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    shifted = boxes + (idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes)))[:, None]
    return reference_nms(shifted, scores, iou_threshold)


def install() -> None:
    """Make ``import torchvision`` (ops.boxes, transforms) resolve to the stand-ins when torchvision is missing."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return
    tv, ops, boxes, transforms = (types.ModuleType(n) for n in
                                  ("torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms"))
    boxes.batched_nms = reference_batched_nms
    boxes.box_area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    transforms.Resize, transforms.Normalize, transforms.ToTensor = Resize, Normalize, ToTensor
    tv.ops, ops.boxes, tv.transforms = ops, boxes, transforms
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
                        "torchvision.transforms": transforms})
