"""Images section: the image job's per-task loop against a loop of the official image predictor, same images.

Both start from encoded image files on the local disk and end with a COCO RLE per object: the official loop is what
its README's users write (``Image.open(...).convert("RGB")``, ``set_image``, ``predict`` with the image's boxes,
``multimask_output=False``, then pycocotools), one image after another; ours is the image job's loop without Ray,
``pipeline.actor.image_segmenter.ImageSegmenter`` (loader threads decoding and resizing ahead, the encoder on batches
of images, every box of an image decoded at once, run boundaries on the device). Same random weights, same boxes; the
masks are compared (IoU per object).

On CPU the process is pinned to ``cores`` CPUs: with one core (nothing spare) ours must not be slower; with one more
core for decoding and resizing it should be 1.3x. On CUDA both run in bf16 (autocast), at 1024 px.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.harness import Timed, interleaved_best, run_isolated
from benchmarks.report import Figure, figure

SECTION = "images"


def write_images(folder: Path, count: int, height: int, width: int, boxes: int, seed: int
                 ) -> list[tuple[str, np.ndarray]]:
    """``count`` JPEG files of smooth random content and ``boxes`` random boxes each (pixels, XYXY)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        coarse = rng.integers(0, 255, (6, 8, 3)).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(coarse).resize((width, height), Image.BICUBIC).save(path, quality=90)
        x0 = rng.uniform(0, width * 0.6, boxes)
        y0 = rng.uniform(0, height * 0.6, boxes)
        w = rng.uniform(width * 0.1, width * 0.4, boxes)
        h = rng.uniform(height * 0.1, height * 0.4, boxes)
        out.append((str(path), np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(np.float32)))
    return out


def _official(name: str, image_size: int, device: str, seed: int) -> Any:
    """The official image predictor (as ``build_sam2`` builds it) on seeded random weights, and its state dict."""
    from testkit import torchvision_standin

    torchvision_standin.install()
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from testkit.oracle import official_predictor

    model, state = official_predictor(name, image_size, seed=seed, device=device, apply_postprocessing=True)
    predictor = SAM2ImagePredictor(model)
    s = image_size
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return predictor, state


def _official_loop(predictor: Any, images: list[tuple[str, np.ndarray]], device: str, dtype: str) -> list[list[dict]]:
    from pipeline.io.rle import encode_rles

    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    out = []
    with torch.inference_mode(), autocast:
        for path, boxes in images:
            image = np.asarray(Image.open(path).convert("RGB"))
            predictor.set_image(image)
            masks, _, _ = predictor.predict(box=boxes, multimask_output=False)
            out.append(encode_rles(masks.reshape(len(boxes), *image.shape[:2]) > 0))
    return out


def measure(name: str, image_size: int, count: int, height: int, width: int, boxes: int, batch: int,
            cores: int, loader_threads: int, dtype: str, warmup: int, runs: int, seed: int, folder: str
            ) -> dict[str, Any]:
    """Images/s of the official loop and of ours on ``cores`` CPUs (all of them on CUDA), and the masks' IoU."""
    from pipeline.actor.image_segmenter import ImageSegmenter
    from pipeline.io.rle import decode_rle
    from pipeline.plan.image_tasks import ImageItem, ImageObject
    from testkit.oracle import ours_from_official

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    images = write_images(Path(folder), count, height, width, boxes, seed)
    predictor, state = _official(name, image_size, device, seed)
    ours = ours_from_official(state, name, image_size).to(device)
    items = [ImageItem(str(i), path, path, tuple(ImageObject(j, None, None, b.tolist(), None, None)
                                                  for j, b in enumerate(bxs)))
             for i, (path, bxs) in enumerate(images)]
    segmenter = ImageSegmenter(ours, dtype, loader_threads, 2, None)
    results: dict[str, Any] = {}
    best = interleaved_best({
        "official": Timed(lambda: _official_loop(predictor, images, device, dtype)),
        "ours": Timed(lambda: segmenter.segment(items, batch)),
    }, warmup, runs, device, on_last=results.__setitem__)
    ious = []
    for ref, ann_image in zip(results["official"], _by_image(results["ours"], len(images))):
        for r, a in zip(ref, ann_image):
            m, n = decode_rle(r), decode_rle(a["segmentation"])
            union = np.logical_or(m, n).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(m, n).sum() / union))
    return {"official": count / best["official"], "ours": count / best["ours"], "min_iou": min(ious),
            "identical": float(np.mean([i == 1.0 for i in ious])), "device": device}


def _by_image(part: dict, count: int) -> list[list[dict]]:
    per: list[list[dict]] = [[] for _ in range(count)]
    for ann in sorted(part["annotations"], key=lambda a: a["obj_id"]):
        per[int(ann["image_id"])].append(ann)
    return per


def case_figures(section: str, arch: str, case: dict[str, Any], dtype: str, warmup: int, runs: int, seed: int,
                 threads: int, folder: str) -> list[Figure]:
    """One measured case (official loop, ours, the ratio against ``case["target"]``) as figures of ``section``."""
    r = run_isolated(measure, threads, name=arch, image_size=case["image_size"], count=case["images"],
                     height=case["height"], width=case["width"], boxes=case["boxes"], batch=case["batch"],
                     cores=case["cores"], loader_threads=case["loader_threads"], dtype=dtype, warmup=warmup,
                     runs=runs, seed=seed, folder=folder)
    where = (f"{arch} {case['image_size']}px {dtype}, {case['boxes']} boxes/image, {case['width']}x{case['height']} "
             f"JPEG, {r['device']}" + (f" on {case['cores']} core(s), {threads} torch thread(s)"
                                       if r["device"] == "cpu" else f", {case['loader_threads']} loader threads"))
    note = f"masks: min IoU {r['min_iou']:.4f}, {r['identical']:.0%} identical"
    return [
        figure(section, f"images: official predictor loop ({where})", r["official"], "images/s"),
        figure(section, f"images: ours, ImageSegmenter ({where})", r["ours"], "images/s", note=note),
        figure(section, f"images: ours / official ({where})", r["ours"] / r["official"], "x", case.get("target", ""),
               note=note),
    ]


def run_section(cfg: dict[str, Any], seed: int, threads: int) -> list[Figure]:
    """CPU rows (one core, then one core spare for loading) or the CUDA row, each with its target."""
    rows = cfg["cuda"] if torch.cuda.is_available() else cfg["cpu"]
    shared = {k: rows[k] for k in ("image_size", "images", "height", "width", "boxes", "batch")}
    return [f for case in rows["cases"]
            for f in case_figures(SECTION, cfg["arch"], {**shared, **case}, rows["dtype"], rows["warmup"],
                                  rows["runs"], seed, threads, cfg["folder"])]
