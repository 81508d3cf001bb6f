"""Masklets written as PNG masks: DAVIS palette PNGs or SA-V per-object folders (the layouts the readers in
``pipeline.dataset.annotations`` take back).

* ``davis``: ``{out}/{video_id}/{frame:05d}.png``, palette index = object id (1..255; 0 is background). Where
  objects overlap, the lower id wins (objects painted in descending id order, as the official VOS tool does).
* ``sav_png``: ``{out}/{video_id}/{obj:03d}/{frame:05d}.png``, value 1 inside the object, objects may overlap.
One PNG per masklet frame; ``pipeline.dataset.annotations.read_png_video`` reads both back.
"""

from __future__ import annotations

import io
from typing import Iterator

import numpy as np
from PIL import Image

from pipeline.masklets import Masklets, decode_rle
from pipeline.storage import join_uri, write_bytes

EXPORT_FORMATS = ("davis", "sav_png")


def davis_palette() -> list[int]:
    """The 256-colour DAVIS/PASCAL palette (bits of the index spread over the high bits of R, G, B)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [r, g, b]
    return palette


_PALETTE = davis_palette()


def palette_png(labels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 label image in palette mode with the DAVIS palette."""
    img = Image.fromarray(labels.astype(np.uint8))
    img.putpalette(_PALETTE)  # turns the greyscale image into palette mode
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def davis_labels(m: Masklets, pos: int) -> np.ndarray:
    """Label image of masklet frame ``pos``: each pixel the lowest id of the objects covering it, else 0."""
    labels = np.zeros((m.height, m.width), dtype=np.uint8)
    for obj, rle in sorted(zip(m.obj_ids, m.rles[pos]), key=lambda t: -t[0]):
        labels[decode_rle(rle)] = obj
    return labels


def export_files(m: Masklets, fmt: str) -> Iterator[tuple[str, bytes]]:
    """(relative path, PNG bytes) of every file of the video in format ``fmt``."""
    if fmt == "davis":
        bad = [o for o in m.obj_ids if not 1 <= o <= 255]
        if bad:
            raise ValueError(f"video {m.video_id}: object ids {bad} cannot be DAVIS palette indices (1..255); "
                             f"export as sav_png instead")
        for pos, frame in enumerate(m.frame_indices):
            yield f"{m.video_id}/{frame:05d}.png", palette_png(davis_labels(m, pos))
    elif fmt == "sav_png":
        for j, obj in enumerate(m.obj_ids):
            for pos, frame in enumerate(m.frame_indices):
                yield f"{m.video_id}/{obj:03d}/{frame:05d}.png", palette_png(decode_rle(m.rles[pos][j]))
    else:
        raise ValueError(f"unknown export format {fmt!r} (expected one of {EXPORT_FORMATS})")


def export_masklets(m: Masklets, out: str, fmt: str, storage_options: dict | None = None) -> int:
    """Write the video's PNGs under ``out``; returns the number of files written."""
    count = 0
    for rel, data in export_files(m, fmt):
        write_bytes(join_uri(out, rel), data, storage_options)
        count += 1
    return count
