"""Reading one image for the model, as the official README's users load theirs: Pillow, EXIF orientation applied,
any mode (grayscale, palette, RGBA, 16-bit) converted to RGB; then, on the loader's thread, the model input.

An image that cannot be read or decoded is an ``ImageError`` (that image fails, the rest of its task goes on); a
storage outage is ``InputUnavailable`` (the task is retried).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from pipeline.actor.decoding import InputUnavailable
from pipeline.io.storage import is_transient, read_bytes
from pipeline.plan.image_tasks import ImageItem
from sam2core.image_predictor import ImagePrompt, prepare_image


class ImageError(RuntimeError):
    """An image that cannot be read, decoded or prompted; the message names its URI or its object."""


def decode_image(data: bytes, uri: str) -> np.ndarray:
    """uint8 ``H x W x 3`` RGB pixels of an encoded image, upright (its EXIF orientation applied)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            upright = ImageOps.exif_transpose(img)
            if upright.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray: scale to 8 bits before RGB
                gray = np.asarray(upright, dtype=np.float64)
                upright = Image.fromarray(np.clip(gray / 257.0, 0, 255).round().astype(np.uint8))
            rgb = upright.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{uri}: not a readable image ({type(exc).__name__}: {exc})") from exc


def read_image(uri: str, storage_options: dict | None) -> np.ndarray:
    """The image at ``uri`` (any fsspec URI) as uint8 RGB pixels."""
    try:
        data = read_bytes(uri, storage_options)
    except FileNotFoundError as exc:
        raise ImageError(f"{uri}: not found") from exc
    except Exception as exc:  # noqa: BLE001 - any backend's error: an outage is retried, the rest fail the image
        if is_transient(exc):
            raise InputUnavailable(f"{uri}: storage unavailable: {type(exc).__name__}: {exc}") from exc
        raise ImageError(f"{uri}: cannot be read ({type(exc).__name__}: {exc})") from exc
    return decode_image(data, uri)


@dataclass
class LoadedImage:
    """One image ready for the model: its pixels, its model input when resized on the loader's thread, and its
    objects' prompts."""

    pixels: torch.Tensor  # [H, W, 3] uint8 (pinned when a GPU will take it)
    model_input: torch.Tensor | None  # [3, S, S] fp32, or None: resized on the device
    prompts: list[ImagePrompt]

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[0], self.pixels.shape[1]


def load(item: ImageItem, storage_options: dict | None, image_size: int, prepare: bool) -> LoadedImage:
    """Read and decode an image, decode its mask prompts and check their size; with ``prepare`` also resize it to
    the model input here, off the model's thread (a CPU worker), else pin it for the copy to the GPU, where it is
    resized."""
    uri = item.uri
    pixels = torch.from_numpy(read_image(uri, storage_options))
    prompts = [o.prompt() for o in item.objects]
    h, w = pixels.shape[:2]
    for p in prompts:
        if p.mask is not None and p.mask.shape != (h, w):
            raise ImageError(f"{uri}: a mask prompt is {p.mask.shape[0]}x{p.mask.shape[1]} (HxW) but the image is "
                             f"{h}x{w}")
    if prepare:
        return LoadedImage(pixels, prepare_image(pixels, image_size), prompts)
    return LoadedImage(pixels.pin_memory() if torch.cuda.is_available() else pixels, None, prompts)
