"""Single-image prompting with a SAM 2 model (points, box, mask logits -> masks at image resolution)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sam2core.modeling.sam2 import ImageFeatures, SAM2Model


class ImagePredictor:
    """Encode an image once, then decode masks for any number of prompts.

    The image is treated like the first frame of a video: features plus the no-memory embedding, so a mask
    predicted here is the one a video session would produce on a prompted first frame.
    """

    def __init__(self, model: SAM2Model) -> None:
        self.model = model
        self._features: ImageFeatures | None = None
        self._hw: tuple[int, int] = (0, 0)

    @torch.inference_mode()
    def set_image(self, image: np.ndarray | torch.Tensor) -> None:
        """Encode one uint8 ``H x W x 3`` RGB image."""
        frame = torch.as_tensor(image)
        if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"expected a uint8 HxWx3 image, got {tuple(frame.shape)} {frame.dtype}")
        feats = self.model.encode_image(self.model.preprocess(frame[None]))
        self._features = ImageFeatures(self.model.add_no_memory(feats.feat), feats.pos, feats.high_res)
        self._hw = (frame.shape[0], frame.shape[1])

    @torch.inference_mode()
    def predict(
        self,
        points: np.ndarray | torch.Tensor | None = None,
        labels: np.ndarray | torch.Tensor | None = None,
        box: np.ndarray | torch.Tensor | None = None,
        mask_logits: np.ndarray | torch.Tensor | None = None,
        multimask: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for one prompt, in image pixels: ``points [N, 2]`` (x, y) with ``labels [N]`` (1 fg, 0 bg),
        ``box [4]`` (x0, y0, x1, y1), ``mask_logits [4h, 4w]`` (a previous ``low_res_logits`` entry).

        Returns boolean masks ``[K, H, W]``, predicted IoU ``[K]`` and low-resolution logits ``[K, 4h, 4w]``, with
        K = 3 candidates when ``multimask`` else 1.
        """
        if self._features is None:
            raise RuntimeError("call set_image() before predict()")
        coords, point_labels = self._prompt_points(points, labels, box)
        device = self.model.device
        if coords is not None:
            coords, point_labels = coords.to(device), point_labels.to(device)
        if mask_logits is not None:
            mask_logits = torch.as_tensor(mask_logits, dtype=torch.float32, device=device)
            mask_logits = mask_logits.reshape(1, 1, *mask_logits.shape[-2:])
        feats = self._features
        out = self.model.decode_masks(feats.feat, feats.high_res, coords, point_labels, mask_logits, multimask)
        low_res = out.candidates[0]
        full = F.interpolate(low_res[None], size=self._hw, mode="bilinear", align_corners=False)[0]
        return full > 0, out.candidate_iou[0], low_res

    def _prompt_points(
        self, points: object, labels: object, box: object
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Points and box corners (labels 2, 3 first) scaled from image pixels to model-input pixels."""
        coords, tags = [], []
        if box is not None:
            corners = torch.as_tensor(box, dtype=torch.float32).reshape(2, 2)
            coords.append(corners)
            tags.append(torch.tensor([2, 3], dtype=torch.int32))
        if points is not None:
            pts = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
            if labels is None or len(labels) != len(pts):
                raise ValueError("points need one label each (1 foreground, 0 background)")
            coords.append(pts)
            tags.append(torch.as_tensor(labels, dtype=torch.int32).reshape(-1))
        if not coords:
            return None, None
        h, w = self._hw
        scale = torch.tensor([self.model.image_size / w, self.model.image_size / h])
        return (torch.cat(coords) * scale)[None], torch.cat(tags)[None]
