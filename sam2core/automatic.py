"""Automatic mask generation ("segment everything"): the official ``SAM2AutomaticMaskGenerator`` (sam2 1.1.0)
semantics on our :class:`SAM2Model`.

A grid of single foreground clicks is decoded batch by batch on the image (and on overlapping crops of it when
``crop_n_layers > 0``); candidates are kept when their predicted IoU and stability pass the thresholds and their box
does not touch a crop edge inside the image, duplicates are removed by box NMS within each crop and, across crops,
by a second NMS that prefers masks from smaller crops. Masks come back at image resolution.

The uncropped layer can reuse features already computed for the frame (``features=``): a video pipeline encodes
each keyframe once and shares it between tracking and discovery.

Semantics worth knowing (all as in sam2 1.1.0):
- ``min_mask_region_area`` acts on the low-resolution logits before upsampling (the official image predictor's
  ``max_hole_area`` / ``max_sprinkle_area``): 8-connected background holes and foreground specks of at most that many
  low-resolution pixels are flipped. The official package does this with its CUDA extension and silently skips it
  where the extension is not built (CPU installs); ours always applies it, in plain torch. Its
  ``postprocess_small_regions`` (OpenCV, full resolution) is not part of ``generate`` there and not offered here.
- Box NMS keeps torchvision's order for tied scores (the same ``torch.sort`` call ranks the boxes); across crops all
  masks of one crop tie, so this decides which duplicates survive.
- Without ``features`` the image (and every crop) is resized the way the official image predictor does (bilinear,
  antialiased, on the ``/255`` float image); features from a video session come from the video loader's bicubic
  resize instead, so masks on them differ slightly from the official image-only generator's.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sam2core.mask_ops import (batched_nms, box_area, coco_rle, crop_boxes, layer_point_grids, logit_boxes,
                               small_components, stability_score, uncompressed_rle)
from sam2core.image_predictor import decode, encode_images, prepare_image
from sam2core.modeling.sam2 import ImageFeatures, SAM2Model
from sam2core.thread_plan import plan_threads

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
LOGIT_CLAMP = 32.0  # mask logits fed back as an m2m mask prompt are clamped to +-32
SMALL_REGION_LOGIT = 10.0  # filled holes become +10 (above the 0 cut), removed specks -10
UPSAMPLE_CHUNK = 64  # candidates upsampled to crop resolution at a time on a GPU (bounds the fp32 full-size buffer)
# on a CPU, as many as this many bytes of fp32 logits hold (at least one): the comparisons that follow then read them
# from cache, and the buffer is reused instead of written to freshly faulted-in pages
CPU_UPSAMPLE_BYTES = 2 << 20
CROP_EDGE_TOLERANCE = 20.0  # pixels: a box this close to a crop edge (not an image edge) is cut by the crop


@dataclass
class AutoMasks:
    """The masks of one image, in the generator's output order, as tensors on the model's device."""

    masks: torch.Tensor  # [N, H, W] bool at image resolution
    predicted_iou: torch.Tensor  # [N] fp32
    stability_score: torch.Tensor  # [N] fp32
    point_coords: torch.Tensor  # [N, 2] fp32 image pixels (x, y) of the click that produced each mask
    boxes: torch.Tensor  # [N, 4] int64 x0, y0, x1, y1 (inclusive pixel indices)
    crop_boxes: torch.Tensor  # [N, 4] int64 x0, y0, x1, y1 (exclusive end) of the crop each mask came from

    def __len__(self) -> int:
        return self.masks.shape[0]


@dataclass
class _CropMasks:
    """Candidates of one crop, in crop pixels until uncropped. A candidate's mask is kept as the low-resolution
    logits it is upsampled from (small regions already edited): only the masks that survive NMS are made at full
    size, once, instead of holding every candidate's (2 MB each at 1080p)."""

    low: torch.Tensor  # [n, 4h, 4w] fp32 logits
    iou: torch.Tensor
    stability: torch.Tensor
    points: torch.Tensor
    boxes: torch.Tensor

    def select(self, keep: torch.Tensor) -> "_CropMasks":
        return _CropMasks(self.low[keep], self.iou[keep], self.stability[keep], self.points[keep], self.boxes[keep])

    @staticmethod
    def empty(low_hw: tuple[int, int], device: torch.device) -> "_CropMasks":
        """No candidates (every click of the crop skipped)."""
        return _CropMasks(torch.zeros(0, *low_hw, device=device), torch.zeros(0, device=device),
                          torch.zeros(0, device=device), torch.zeros(0, 2, device=device),
                          torch.zeros(0, 4, dtype=torch.int64, device=device))

    @staticmethod
    def cat(parts: list["_CropMasks"]) -> "_CropMasks":
        return _CropMasks(*(torch.cat([getattr(p, f) for p in parts]) for f in
                            ("low", "iou", "stability", "points", "boxes")))


@dataclass(frozen=True)
class GeneratorOptions:
    """The generator's settings, under the official keyword names and with the official defaults.

    Grid: ``points_per_side`` clicks per side (or explicit normalised ``point_grids``, one per crop layer), decoded
    ``points_per_batch`` at a time. Filters: ``pred_iou_thresh``, ``stability_score_thresh`` (stability measured
    at ``mask_threshold`` ± ``stability_score_offset``), then box NMS at ``box_nms_thresh``. Crops:
    ``crop_n_layers`` extra layers of overlapping crops (``crop_overlap_ratio``), each with
    ``crop_n_points_downscale_factor`` fewer clicks per side and merged by NMS at ``crop_nms_thresh``.
    ``min_mask_region_area`` > 0 fills background holes and removes foreground specks of at most that many
    low-resolution pixels before upsampling; ``use_m2m`` re-decodes each candidate with its own logits as mask
    prompt; ``dynamic_multimask_via_stability`` (a model setting in the official package, on for models built by
    ``build_sam2``): an unstable single-mask output is replaced by the best multimask candidate.
    """

    # the click grid
    points_per_side: int | None = 32
    point_grids: list[np.ndarray] | None = None
    points_per_batch: int = 64
    multimask_output: bool = True
    dynamic_multimask_via_stability: bool = True
    use_m2m: bool = False
    # which candidates survive
    mask_threshold: float = 0.0
    pred_iou_thresh: float = 0.8
    stability_score_offset: float = 1.0
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    # crop layers
    crop_n_layers: int = 0
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    crop_nms_thresh: float = 0.7
    # what comes out
    output_mode: str = "binary_mask"

    def __post_init__(self) -> None:
        if (self.points_per_side is None) == (self.point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if self.output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {self.output_mode!r}")
        if self.points_per_batch < 1 or self.crop_n_layers < 0:
            raise ValueError("points_per_batch must be >= 1 and crop_n_layers >= 0")

    def grids(self) -> list[np.ndarray]:
        """Normalised click positions of every crop layer."""
        if self.point_grids is None:
            grids = layer_point_grids(self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor)
        else:
            grids = [np.asarray(g, dtype=np.float64) for g in self.point_grids]
            if len(grids) < self.crop_n_layers + 1:
                raise ValueError(f"need {self.crop_n_layers + 1} point grids (one per crop layer), got {len(grids)}")
        if any(len(g) == 0 for g in grids[:self.crop_n_layers + 1]):
            raise ValueError("every crop layer needs at least one point (points_per_side too small for the "
                             "downscale factor?)")
        return grids


class AutomaticMaskGenerator:
    """Masks for everything in an image from a grid of point prompts: ``AutomaticMaskGenerator(model, **options)``
    with the official generator's keywords and defaults (see ``GeneratorOptions``); an unknown keyword is refused."""

    def __init__(self, model: SAM2Model, **options: Any) -> None:
        self.model = model
        self.options = GeneratorOptions(**options)
        self.point_grids = self.options.grids()

    # ---- public ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, image: np.ndarray | torch.Tensor, features: ImageFeatures | None = None) -> list[dict[str, Any]]:
        """Mask records for a uint8 ``H x W x 3`` RGB image, with the official keys: ``segmentation`` (per
        ``output_mode``), ``area``, ``bbox`` (XYWH), ``predicted_iou``, ``point_coords``, ``stability_score``,
        ``crop_box`` (XYWH). ``features``: see :meth:`generate_masks`."""
        found = self.generate_masks(image, features)
        masks = found.masks.cpu().numpy()
        boxes = found.boxes.tolist()
        crops = found.crop_boxes.tolist()
        ious, stabilities = found.predicted_iou.tolist(), found.stability_score.tolist()
        points = found.point_coords.tolist()
        records = []
        for i, mask in enumerate(masks):
            x0, y0, x1, y1 = boxes[i]
            cx0, cy0, cx1, cy1 = crops[i]
            records.append({
                "segmentation": self._encode_mask(mask),
                "area": int(mask.sum()),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "predicted_iou": ious[i],
                "point_coords": [points[i]],
                "stability_score": stabilities[i],
                "crop_box": [float(cx0), float(cy0), float(cx1 - cx0), float(cy1 - cy0)],
            })
        return records

    @torch.inference_mode()
    def generate_masks(self, image: np.ndarray | torch.Tensor, features: ImageFeatures | None = None,
                       skip: torch.Tensor | None = None) -> AutoMasks:
        """The masks of a uint8 ``H x W x 3`` image as device tensors (what :meth:`generate` turns into records).

        ``features``: the image's raw backbone features (``model.encode_image`` of the preprocessed frame, batch 1,
        no memory embedding), e.g. the ones a video session computed for this frame; they replace the encoder pass
        of the uncropped layer (crops are always encoded from the image). Without them the image is encoded the
        way the official image predictor does (bilinear antialiased resize of the ``/255`` image).

        ``skip``: an ``H x W`` bool mask of the image; grid clicks on its pixels are not decoded (object discovery
        passes the objects it already knows: a click on one finds that object or a part of it). Without it, every
        click is decoded, as the official generator does.
        """
        frame = torch.as_tensor(image)
        if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"expected a uint8 HxWx3 image, got {tuple(frame.shape)} {frame.dtype}")
        if features is not None and features.feat.shape[0] != 1:
            raise ValueError(f"features must hold one frame, got a batch of {features.feat.shape[0]}")
        frame = frame.to(self.model.device)
        h, w = frame.shape[:2]
        if skip is not None and tuple(skip.shape) != (h, w):
            raise ValueError(f"skip must be a {h}x{w} mask of the image, got {tuple(skip.shape)}")
        boxes, layers = crop_boxes((h, w), self.options.crop_n_layers, self.options.crop_overlap_ratio)
        per_crop = []
        for box, layer in zip(boxes, layers):
            x0, y0, x1, y1 = box
            if layer == 0 and features is not None:
                feats = ImageFeatures(self.model.add_no_memory(features.feat), features.pos, features.high_res)
            else:
                feats = self._encode(frame[y0:y1, x0:x1])
            per_crop.append(self._process_crop(feats, box, layer, (h, w), skip))
        return self._merge_crops(per_crop, boxes, (h, w))

    def _merge_crops(self, per_crop: list[_CropMasks], boxes: list[list[int]], image_hw: tuple[int, int]) -> AutoMasks:
        """Every crop's candidates in image pixels; with several crops, NMS across them preferring smaller crops."""
        device = self.model.device
        h, w = image_hw
        crop_of = torch.cat([torch.full((len(c.iou),), i, dtype=torch.long, device=device)
                             for i, c in enumerate(per_crop)])
        index_in_crop = torch.cat([torch.arange(len(c.iou), device=device) for c in per_crop])
        offsets = torch.tensor([[b[0], b[1], b[0], b[1]] for b in boxes], device=device)
        all_boxes = torch.cat([c.boxes for c in per_crop]) + offsets[crop_of]
        iou = torch.cat([c.iou for c in per_crop])
        stability = torch.cat([c.stability for c in per_crop])
        points = torch.cat([c.points for c in per_crop]) + offsets[crop_of, :2]
        crops = torch.tensor(boxes, device=device)[crop_of]
        if len(boxes) > 1:
            prefer_small_crops = 1 / box_area(crops)
            keep = batched_nms(all_boxes.float(), prefer_small_crops, torch.zeros_like(crop_of),
                               self.options.crop_nms_thresh)
            crop_of, index_in_crop = crop_of[keep], index_in_crop[keep]
            all_boxes, iou, stability, points, crops = (t[keep] for t in (all_boxes, iou, stability, points, crops))

        masks = torch.zeros(len(crop_of), h, w, dtype=torch.bool, device=device)
        for crop, (x0, y0, x1, y1) in enumerate(boxes):
            rows = (crop_of == crop).nonzero()[:, 0]
            masks[rows, y0:y1, x0:x1] = self._masks(per_crop[crop].low[index_in_crop[rows]], (y1 - y0, x1 - x0))
        return AutoMasks(masks, iou, stability, points, all_boxes, crops)

    # ---- one crop --------------------------------------------------------------------------------------------

    def _encode(self, image: torch.Tensor) -> ImageFeatures:
        """Features (with the no-memory embedding) of a uint8 ``h x w x 3`` image, preprocessed like the official
        image predictor: ``/255``, bilinear antialiased resize to the model input (skipped at that size already),
        ImageNet mean and std."""
        return encode_images(self.model, prepare_image(image, self.model.image_size)[None])

    def _process_crop(self, feats: ImageFeatures, box: list[int], layer: int, image_hw: tuple[int, int],
                      skip: torch.Tensor | None) -> _CropMasks:
        """Candidates of one crop after its own NMS (boxes and points still in crop pixels); clicks on ``skip``
        pixels are left out."""
        x0, y0, x1, y1 = box
        crop_hw = (y1 - y0, x1 - x0)
        scaled = self.point_grids[layer] * np.array([[crop_hw[1], crop_hw[0]]])
        points = torch.as_tensor(scaled, dtype=torch.float32).to(self.model.device)
        if skip is not None:
            xs = (points[:, 0].long() + x0).clamp(0, image_hw[1] - 1)
            ys = (points[:, 1].long() + y0).clamp(0, image_hw[0] - 1)
            points = points[~skip.to(points.device, torch.bool)[ys, xs]]
            if len(points) == 0:
                side = self.model.sam_prompt_encoder.mask_size
                return _CropMasks.empty((side, side), points.device)
        batches = [points[i:i + self.options.points_per_batch]
                   for i in range(0, len(points), self.options.points_per_batch)]
        found = _CropMasks.cat(self._decode_and_score(feats, batches, crop_hw, box, image_hw))
        keep = batched_nms(found.boxes.float(), found.iou, torch.zeros_like(found.boxes[:, 0]),
                           self.options.box_nms_thresh)
        return found.select(keep)

    def _decode_and_score(self, feats: ImageFeatures, batches: list[torch.Tensor], crop_hw: tuple[int, int],
                          box: list[int], image_hw: tuple[int, int]) -> list[_CropMasks]:
        """Each batch of clicks (crop pixels) decoded, and its candidates that pass every filter.

        On a CPU with a core spare beside the caller's threads (``sam2core.thread_plan``), a batch's candidates are
        scored on a thread of its own while the next batch is decoded, one batch behind (the decoder would leave
        that core idle). The results are the same: scoring does the same exact work on either thread."""
        device = self.model.device
        plan = plan_threads(device.type == "cpu", device)
        if not plan.overlap or len(batches) < 2:
            return [self._score(*self._candidates(feats, b, crop_hw), crop_hw, box, image_hw) for b in batches]
        scored: list[_CropMasks] = []
        with ThreadPoolExecutor(1, "generator-scoring", torch.set_num_threads, (plan.side_threads,)) as side:
            pending: Future[_CropMasks] | None = None
            for b in batches:
                candidates = self._candidates(feats, b, crop_hw)
                if pending is not None:
                    scored.append(pending.result())  # at most one batch waits: its logits are freed as it goes
                pending = side.submit(self._score_inference, *candidates, crop_hw, box, image_hw)
            scored.append(pending.result())
        return scored

    def _candidates(self, feats: ImageFeatures, points: torch.Tensor,
                    crop_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch of clicks (crop pixels) decoded: the candidates' low-resolution logits, predicted IoU and
        click, those under ``pred_iou_thresh`` left out."""
        low, iou = self._decode(feats, self._model_coords(points, crop_hw), None, self.options.multimask_output)
        per_point = low.shape[1]
        low, iou = low.flatten(0, 1), iou.flatten(0, 1)
        points = points.repeat_interleave(per_point, dim=0)
        if self.options.use_m2m:
            coords = self._model_coords(points, crop_hw)
            prompts = low.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
            refined = [self._decode(feats, coords[i:i + self.options.points_per_batch], prompts[i:i + self.options.points_per_batch],
                                    False) for i in range(0, len(points), self.options.points_per_batch)]
            low = torch.cat([r[0][:, 0] for r in refined])
            iou = torch.cat([r[1][:, 0] for r in refined])
        if self.options.pred_iou_thresh > 0.0:
            keep = iou > self.options.pred_iou_thresh
            low, iou, points = low[keep], iou[keep], points[keep]
        return low, iou, points

    def _score(self, low: torch.Tensor, iou: torch.Tensor, points: torch.Tensor, crop_hw: tuple[int, int],
               box: list[int], image_hw: tuple[int, int]) -> _CropMasks:
        """The candidates of one batch that pass the stability and crop-edge filters, upsampled and scored a chunk
        at a time."""
        step = self._upsample_step(low.device, crop_hw)
        parts = [self._score_and_box(low[i:i + step], iou[i:i + step], points[i:i + step], crop_hw, box, image_hw)
                 for i in range(0, len(low), step)]
        if not parts:
            return self._score_and_box(low, iou, points, crop_hw, box, image_hw)
        return _CropMasks.cat(parts)

    @torch.inference_mode()
    def _score_inference(self, *args: Any) -> _CropMasks:
        """``_score`` on the scoring thread, in inference mode as the caller's thread is."""
        return self._score(*args)

    def _score_and_box(self, low: torch.Tensor, iou: torch.Tensor, points: torch.Tensor, crop_hw: tuple[int, int],
                       box: list[int], image_hw: tuple[int, int]) -> _CropMasks:
        """Candidates scored at crop resolution: stability filter, boxes of the binary masks, crop-edge filter."""
        low = self._edit_small_regions(low)
        logits = self._interpolate(low, crop_hw)
        stability = stability_score(logits, self.options.mask_threshold, self.options.stability_score_offset)
        if self.options.stability_score_thresh > 0.0:
            keep = stability >= self.options.stability_score_thresh
            low, logits, iou, points, stability = low[keep], logits[keep], iou[keep], points[keep], stability[keep]
        boxes = logit_boxes(logits, self.options.mask_threshold)
        keep = ~self._cut_by_crop(boxes, box, image_hw)
        return _CropMasks(low[keep], iou[keep], stability[keep], points[keep], boxes[keep])

    def _model_coords(self, points: torch.Tensor, crop_hw: tuple[int, int]) -> torch.Tensor:
        """Crop pixels ``[N, 2]`` -> model-input pixels ``[N, 1, 2]`` (normalised by the crop size, then scaled)."""
        h, w = crop_hw
        coords = torch.stack([points[:, 0] / w, points[:, 1] / h], dim=1)
        return (coords * self.model.image_size)[:, None]

    def _decode(self, feats: ImageFeatures, coords: torch.Tensor, mask_prompt: torch.Tensor | None,
                multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw decoder logits ``[B, M, 4h, 4w]`` (fp32) and predicted IoU ``[B, M]`` of one foreground click per
        row (``coords [B, 1, 2]``), optionally with a mask prompt ``[B, 4h, 4w]``; M = 3 when ``multimask``."""
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int32, device=coords.device)
        mask_input = None if mask_prompt is None else mask_prompt[:, None]
        return decode(self.model, feats, coords, labels, mask_input, multimask,
                      stable=self.options.dynamic_multimask_via_stability)

    def _edit_small_regions(self, low: torch.Tensor) -> torch.Tensor:
        """``[n, 4h, 4w]`` logits with ``min_mask_region_area``'s edit: small background holes and small foreground
        specks (8-connected, in low-resolution pixels, cut at 0) flipped; as they are without it."""
        area = self.options.min_mask_region_area
        if area <= 0 or len(low) == 0:
            return low
        x = low[:, None]
        holes = small_components(x <= 0, area)
        specks = small_components(x > 0, area)
        x = torch.where(holes, SMALL_REGION_LOGIT, x)
        return torch.where(specks, -SMALL_REGION_LOGIT, x)[:, 0]

    @staticmethod
    def _interpolate(low: torch.Tensor, crop_hw: tuple[int, int]) -> torch.Tensor:
        """``[n, 4h, 4w]`` logits -> ``[n, crop_h, crop_w]`` (bilinear)."""
        if len(low) == 0:
            return low.new_zeros(0, *crop_hw)
        return F.interpolate(low[:, None], size=crop_hw, mode="bilinear", align_corners=False)[:, 0]

    @staticmethod
    def _upsample_step(device: torch.device, crop_hw: tuple[int, int]) -> int:
        """How many candidates to upsample to crop resolution at a time on ``device``."""
        if device.type != "cpu":
            return UPSAMPLE_CHUNK
        return max(1, CPU_UPSAMPLE_BYTES // (4 * crop_hw[0] * crop_hw[1]))

    def _masks(self, low: torch.Tensor, crop_hw: tuple[int, int]) -> torch.Tensor:
        """The binary masks ``[n, crop_h, crop_w]`` of candidates' (edited) low-resolution logits."""
        step = self._upsample_step(low.device, crop_hw)
        parts = [self._interpolate(low[i:i + step], crop_hw) > self.options.mask_threshold
                 for i in range(0, len(low), step)]
        return torch.cat(parts) if parts else low.new_zeros(0, *crop_hw, dtype=torch.bool)

    @staticmethod
    def _cut_by_crop(boxes: torch.Tensor, box: list[int], image_hw: tuple[int, int]) -> torch.Tensor:
        """Boxes (crop pixels) within 20 px of an edge of the crop that is not also an edge of the image."""
        x0, y0 = box[0], box[1]
        shifted = (boxes + boxes.new_tensor([x0, y0, x0, y0])).float()
        crop = shifted.new_tensor(box)
        image = shifted.new_tensor([0, 0, image_hw[1], image_hw[0]])
        near_crop = torch.isclose(shifted, crop[None], atol=CROP_EDGE_TOLERANCE, rtol=0)
        near_image = torch.isclose(shifted, image[None], atol=CROP_EDGE_TOLERANCE, rtol=0)
        return (near_crop & ~near_image).any(dim=1)

    def _encode_mask(self, mask: np.ndarray) -> Any:
        """One output mask in ``output_mode``: the bool array itself, or its uncompressed or COCO RLE."""
        if self.options.output_mode == "coco_rle":
            return coco_rle(mask)
        if self.options.output_mode == "uncompressed_rle":
            return uncompressed_rle(mask)
        return mask
