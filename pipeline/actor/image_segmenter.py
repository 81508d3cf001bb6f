"""The per-task loop of an image replica, without Ray (the ``ImageWorker`` actor holds one; the image benchmark
runs it alone).

Loader threads read, decode and (on a CPU worker) resize the images ahead of the model, a bounded number of encoder
batches ahead (``pipeline.actor.image_loading``); the image encoder runs on a batch of images, the decoder on all
prompts of an image at once (``sam2core.image_predictor``), the logits are upsampled to the image on the device and
the masks leave it as run boundaries (``pipeline.io.rle``); the loader threads turn those into COCO RLE strings while
the model goes on. Decoding and post-processing of a batch run on a thread of their own while the next batch is
encoded. With a generator (``prompts=auto``) it runs on each image, reusing the batch's features.
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from pipeline.actor.image_loading import ImageError, LoadedImage, load
from pipeline.io.coco import annotation_records, image_record
from pipeline.io.rle import Boundaries, coco_rles, full_boundaries
from pipeline.plan.image_tasks import ImageItem
from sam2core.automatic import AutomaticMaskGenerator
from sam2core.image_predictor import decode_objects, prepare_image, upsample
from sam2core.mask_ops import stability_score
from sam2core.modeling.sam2 import ImageFeatures, SAM2Model

STABILITY_OFFSET = 1.0  # the stability score written: IoU of the masks cut at +1 and -1 (the generator's default)


class ImageSegmenter:
    """The per-task loop of a replica, without Ray: loader threads ahead of the model, batched encoding, every object
    of an image decoded at once, masks out as run boundaries and COCO strings built on the loader threads."""

    def __init__(self, model: SAM2Model, dtype: str, loader_threads: int, ahead: int,
                 storage_options: dict | None, generator: AutomaticMaskGenerator | None = None) -> None:
        self.model = model
        self.device = model.device
        self.dtype = dtype
        self.ahead = ahead
        self.storage_options = storage_options
        self.generator = generator
        self.loader = ThreadPoolExecutor(loader_threads, thread_name_prefix="image-loader")
        self.decoder = ThreadPoolExecutor(1, thread_name_prefix="image-decoder")

    def segment(self, items: list[ImageItem], batch: int, progress: Callable[[int], None] | None = None) -> dict:
        """The COCO part of ``items``: ``images`` and ``annotations`` records and ``failed`` images (id → reason).
        ``progress`` gets the count of images done after each encoder batch. An ``InputUnavailable`` (storage
        outage) is raised; an ``ImageError`` fails its image only."""
        pending: deque[tuple[ImageItem, Future]] = deque()
        queued = iter(items)
        ahead = batch * (self.ahead + 1)
        prepare_here = self.device.type == "cpu"
        size = self.model.image_size
        so = self.storage_options

        def refill() -> None:
            while len(pending) < ahead:
                item = next(queued, None)
                if item is None:
                    return
                pending.append((item, self.loader.submit(load, item, so, size, prepare_here)))

        images, annotations, failed = [], [], {}
        encoded: list[Future] = []  # RLE strings being built on the loader threads
        decoding: deque[Future] = deque()  # encoded batches on the decoder thread, in order

        def collect(segmented: list[tuple]) -> None:
            for item, image, bounds, iou, stability, obj_ids, cats in segmented:
                h, w = image.size
                images.append(image_record(item.image_id, item.file_name, h, w))
                encoded.append(self.loader.submit(_annotations, item.image_id, obj_ids, cats, bounds, iou,
                                                  stability))
            if progress is not None:
                progress(len(images) + len(failed))

        refill()
        while pending:
            loaded: list[tuple[ImageItem, LoadedImage]] = []
            while pending and len(loaded) < batch:
                item, future = pending.popleft()
                try:
                    loaded.append((item, future.result()))
                except ImageError as exc:
                    failed[item.image_id] = str(exc)
            refill()
            if loaded:
                decoding.append(self.decoder.submit(self._decode, loaded, self._encode(loaded)))
            while len(decoding) > 1 or (decoding and not pending):  # one batch decodes while the next encodes
                collect(decoding.popleft().result())
        for future in encoded:
            annotations += future.result()
        return {"images": images, "annotations": annotations, "failed": failed}

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def _encode(self, loaded: list[tuple[ImageItem, LoadedImage]]) -> ImageFeatures:
        """Raw image features of a batch (resized here on the device when the loaders did not)."""
        model = self.model
        with self._autocast():
            if loaded[0][1].model_input is not None:
                inputs = torch.stack([image.model_input for _, image in loaded]).to(self.device)
            else:
                inputs = torch.stack([prepare_image(image.pixels.to(self.device, non_blocking=True), model.image_size)
                                      for _, image in loaded])
            return model.encode_image(inputs)

    @torch.inference_mode()
    def _decode(self, loaded: list[tuple[ImageItem, LoadedImage]], raw: ImageFeatures) -> list[tuple]:
        """Per image of an encoded batch (on the decoder thread): every object's mask (or the generator's masks) as
        run boundaries on the host, with predicted IoU and stability, object ids and categories."""
        model = self.model
        segmented = []
        with self._autocast():
            feats = ImageFeatures(model.add_no_memory(raw.feat), raw.pos, raw.high_res)
            for i, (item, image) in enumerate(loaded):
                hw = image.size
                if self.generator is not None:
                    found = self.generator.generate_masks(image.pixels.to(self.device), features=raw.index(i))
                    masks, iou, stability = found.masks, found.predicted_iou, found.stability_score
                    obj_ids, cats = list(range(len(found))), [None] * len(found)
                else:
                    out = decode_objects(model, feats.index(i), hw, image.prompts)
                    logits = upsample(out.logits.float(), hw)
                    masks, iou = logits > 0, out.iou
                    stability = stability_score(logits, 0.0, STABILITY_OFFSET)
                    obj_ids = [o.obj_id for o in item.objects]
                    cats = [o.category_id for o in item.objects]
                bounds = full_boundaries(masks) if len(masks) else None
                segmented.append((item, image, bounds, iou.float().cpu().numpy(),
                                  torch.nan_to_num(stability.float(), nan=0.0).cpu().numpy(), obj_ids, cats))
        return segmented


def _annotations(image_id: str, obj_ids: list[int], cats: list, bounds: Boundaries | None, iou: np.ndarray,
                 stability: np.ndarray) -> list[dict]:
    """COCO annotations of one image from its masks' run boundaries (runs on a loader thread)."""
    if bounds is None:
        return []
    return annotation_records(image_id, obj_ids, cats, coco_rles(bounds), iou.tolist(), stability.tolist())
