"""Masklets in the formats other tools read.

* ``davis``: ``{out}/{video_id}/{frame:05d}.png`` palette PNGs with the DAVIS palette, index = object id, 0 the
  background. Ids that are not already 1..N (id 0, gaps, ids > 255) are renumbered 1..N in id order and the mapping
  is written beside the PNGs as ``{out}/{video_id}/object_ids.json`` (``{"palette_index": object id}``); a video with
  more than 255 objects cannot be one palette PNG per frame and fails (export it as ``sav_png``). Where objects
  overlap the lower id wins (objects painted in descending id order, as the official VOS tool does).
* ``sav_png``: ``{out}/{video_id}/{obj:03d}/{frame:05d}.png``, value 1 inside the object, objects may overlap.
* ``ytvis``: one YouTube-VIS / COCO-video JSON for the whole job, ``{out}/annotations.json``: ``videos``,
  ``categories`` (one, ``object``) and per object one annotation with per-frame COCO RLE ``segmentations``,
  ``bboxes`` ``[x, y, w, h]`` and ``areas`` (``null`` on frames where the object is absent), plus ``score`` (mean
  object score) and ``sam2_obj_id``.
* ``yolo``: YOLO-seg labels ``{out}/{video_id}/{frame:05d}.txt``, one line per present object: ``0 x1 y1 x2 y2 …``
  (class 0, the polygon's pixel-corner vertices normalised by width and height). A mask of several parts gives one
  polygon joining them with zero-width bridges; holes are filled (YOLO polygons have none).

Frames are the masklets' own under their original numbers: a run that tracked every 4th frame, or a clip, gives
``00000.png``, ``00004.png``, … or ``00300.png``, … (YouTube-VIS ``frame_indices`` and ``file_names`` likewise), and a
frame that was not tracked gets no file. ``pipeline.dataset.annotations.read_png_video`` reads ``davis`` and
``sav_png`` back.
"""

from __future__ import annotations

import io
import json
from typing import Iterator

import numpy as np
from PIL import Image

from pipeline.io.masklets import Masklets
from pipeline.io.rle import decode_rle
from pipeline.io.storage import join_uri, write_bytes

EXPORT_FORMATS = ("davis", "sav_png", "ytvis", "yolo")
DAVIS_MAX_OBJECTS = 255
DAVIS_ID_MAP = "object_ids.json"
YTVIS_FILE = "annotations.json"


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


def davis_indices(m: Masklets) -> dict[int, int]:
    """object id → palette index: the ids themselves when they are 1..N, else 1..N in id order."""
    if len(m.obj_ids) > DAVIS_MAX_OBJECTS:
        raise ValueError(f"video {m.video_id}: {len(m.obj_ids)} objects do not fit a DAVIS palette (at most "
                         f"{DAVIS_MAX_OBJECTS}); export as sav_png instead")
    ordered = sorted(m.obj_ids)
    if ordered == list(range(1, len(ordered) + 1)):
        return {o: o for o in ordered}
    return {o: k for k, o in enumerate(ordered, start=1)}


def davis_labels(m: Masklets, pos: int, indices: dict[int, int] | None = None) -> np.ndarray:
    """Label image of masklet frame ``pos``: each pixel the palette index of the lowest id covering it, else 0."""
    indices = indices or davis_indices(m)
    labels = np.zeros((m.height, m.width), dtype=np.uint8)
    for obj, rle in sorted(zip(m.obj_ids, m.rles[pos]), key=lambda t: -t[0]):
        labels[decode_rle(rle)] = indices[obj]
    return labels


def _outline_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed pixel-edge boundary of ``mask``: start and end corners ``(x, y)`` of each edge, the object on the
    right of the direction of travel (outer boundaries run clockwise on screen, holes anticlockwise)."""
    p = np.pad(mask, 1)
    inner = p[1:-1, 1:-1]
    starts, ends = [], []
    for neighbour, a, b in (
        (p[:-2, 1:-1], (0, 0), (1, 0)),      # background above: top edge, left to right
        (p[1:-1, 2:], (1, 0), (1, 1)),       # right: downwards
        (p[2:, 1:-1], (1, 1), (0, 1)),       # below: right to left
        (p[1:-1, :-2], (0, 1), (0, 0)),      # left: upwards
    ):
        r, c = np.nonzero(inner & ~neighbour)
        starts.append(np.stack([c + a[0], r + a[1]], axis=1))
        ends.append(np.stack([c + b[0], r + b[1]], axis=1))
    return np.concatenate(starts), np.concatenate(ends)


def _corners(loop: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The loop's vertices where the direction changes (collinear ones dropped)."""
    n = len(loop)
    out = []
    for k in range(n):
        (x0, y0), (x1, y1), (x2, y2) = loop[k - 1], loop[k], loop[(k + 1) % n]
        if (x1 - x0, y1 - y0) != (x2 - x1, y2 - y1):
            out.append(loop[k])
    return out


def _signed_area(poly: list[tuple[int, int]]) -> float:
    """Shoelace area, positive for clockwise loops on screen (y down)."""
    xs = np.asarray([p[0] for p in poly], dtype=np.float64)
    ys = np.asarray([p[1] for p in poly], dtype=np.float64)
    return float((xs * np.roll(ys, -1) - np.roll(xs, -1) * ys).sum()) / 2


def mask_polygons(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Outer boundaries of the parts of a boolean mask as polygons of pixel corners ``(x, y)``, largest first.

    The boundary follows pixel edges, so each polygon filled is exactly its part (holes filled); parts that touch
    only at a corner are separate polygons.
    """
    starts, ends = _outline_edges(np.asarray(mask, dtype=bool))
    outgoing: dict[tuple[int, int], list[int]] = {}
    for k, (x, y) in enumerate(starts.tolist()):
        outgoing.setdefault((x, y), []).append(k)
    used = np.zeros(len(starts), dtype=bool)
    polygons = []
    for first in range(len(starts)):
        if used[first]:
            continue
        loop, k = [], first
        while not used[k]:
            used[k] = True
            sx, sy = starts[k]
            ex, ey = ends[k]
            loop.append((int(sx), int(sy)))
            choices = [j for j in outgoing[(int(ex), int(ey))] if not used[j]]
            if not choices:
                break
            if len(choices) > 1:   # a saddle corner: turn right, keeping diagonal parts apart
                dx, dy = ex - sx, ey - sy
                choices.sort(key=lambda j: 0 if (ends[j][0] - ex, ends[j][1] - ey) == (-dy, dx) else 1)
            k = choices[0]
        poly = _corners(loop)
        if len(poly) >= 3 and _signed_area(poly) > 0:
            polygons.append(poly)
    polygons.sort(key=_signed_area, reverse=True)
    return polygons


def joined_polygon(polygons: list[list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """One polygon through every part: each next part entered from the first vertex and left back to it (zero-width
    bridges), so one YOLO line covers a mask of several parts."""
    if not polygons:
        return []
    out = list(polygons[0])
    anchor = polygons[0][0]
    for poly in polygons[1:]:
        out += [anchor, *poly, poly[0]]
    return out


def yolo_lines(m: Masklets, pos: int) -> str:
    """YOLO-seg label text of masklet frame ``pos`` (one line per present object, class 0)."""
    lines = []
    for rle in m.rles[pos]:
        poly = joined_polygon(mask_polygons(decode_rle(rle)))
        if poly:
            coords = " ".join(f"{x / m.width:.6f} {y / m.height:.6f}" for x, y in poly)
            lines.append(f"0 {coords}")
    return "".join(f"{line}\n" for line in lines)


def _bbox_area(mask: np.ndarray) -> tuple[list[float] | None, int | None]:
    """COCO ``[x, y, w, h]`` box and pixel area of a mask; (None, None) when it is empty."""
    area = int(mask.sum())
    if area == 0:
        return None, None
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)], area


def ytvis_video(m: Masklets, video_num: int, first_ann: int) -> tuple[dict, list[dict]]:
    """(``videos`` entry, ``annotations`` entries) of one video in the YouTube-VIS layout; ids count from the
    given numbers."""
    video = {"id": video_num, "name": m.video_id, "width": m.width, "height": m.height,
             "length": len(m.frame_indices), "frame_indices": list(m.frame_indices),
             "file_names": [f"{m.video_id}/{f:05d}.jpg" for f in m.frame_indices]}
    annotations = []
    for j, obj in enumerate(m.obj_ids):
        segs, boxes, areas = [], [], []
        for rles in m.rles:
            box, area = _bbox_area(decode_rle(rles[j]))
            segs.append({"size": [m.height, m.width], "counts": rles[j]["counts"]} if area else None)
            boxes.append(box)
            areas.append(area)
        scores = [s[j] for s in m.scores if s[j] == s[j]]
        annotations.append({"id": first_ann + j, "video_id": video_num, "category_id": 1, "iscrowd": 0,
                            "width": m.width, "height": m.height, "length": 1, "segmentations": segs,
                            "bboxes": boxes, "areas": areas, "sam2_obj_id": int(obj),
                            "score": float(np.mean(scores)) if scores else None})
    return video, annotations


class YtvisWriter:
    """Collects videos into one YouTube-VIS JSON; ``finish`` writes ``{out}/annotations.json``."""

    def __init__(self, out: str, storage_options: dict | None = None) -> None:
        self.out, self.storage_options = out, storage_options
        self.videos: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, m: Masklets) -> int:
        """Add one video; returns its number of annotations (objects)."""
        video, anns = ytvis_video(m, len(self.videos) + 1, len(self.annotations) + 1)
        self.videos.append(video)
        self.annotations += anns
        return len(anns)

    def finish(self) -> str:
        """Write the JSON; returns its URI."""
        uri = join_uri(self.out, YTVIS_FILE)
        doc = {"info": {"description": "SAM 2 masklets (sam2-propagate)"}, "licenses": [],
               "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
               "videos": self.videos, "annotations": self.annotations}
        write_bytes(uri, json.dumps(doc).encode(), self.storage_options)
        return uri


def export_files(m: Masklets, fmt: str) -> Iterator[tuple[str, bytes]]:
    """(relative path, file bytes) of every file of the video in a per-video format (davis, sav_png, yolo)."""
    if fmt == "davis":
        indices = davis_indices(m)
        if any(o != i for o, i in indices.items()):
            mapping = {str(i): o for o, i in indices.items()}
            yield f"{m.video_id}/{DAVIS_ID_MAP}", json.dumps({"palette_index": mapping}, indent=1).encode()
        for pos, frame in enumerate(m.frame_indices):
            yield f"{m.video_id}/{frame:05d}.png", palette_png(davis_labels(m, pos, indices))
    elif fmt == "sav_png":
        for j, obj in enumerate(m.obj_ids):
            for pos, frame in enumerate(m.frame_indices):
                yield f"{m.video_id}/{obj:03d}/{frame:05d}.png", palette_png(decode_rle(m.rles[pos][j]))
    elif fmt == "yolo":
        for pos, frame in enumerate(m.frame_indices):
            yield f"{m.video_id}/{frame:05d}.txt", yolo_lines(m, pos).encode()
    else:
        raise ValueError(f"unknown per-video export format {fmt!r} (expected davis, sav_png or yolo)")


def export_masklets(m: Masklets, out: str, fmt: str, storage_options: dict | None = None) -> int:
    """Write the video's files under ``out``; returns the number of files written."""
    count = 0
    for rel, data in export_files(m, fmt):
        write_bytes(join_uri(out, rel), data, storage_options)
        count += 1
    return count
