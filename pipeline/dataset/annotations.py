"""Readers of ground-truth annotations into ``Masklets``: SA-V JSON files and PNG mask folders.

Layouts (those of SA-V and DAVIS):

* SA-V JSON ``{video_id}_manual.json`` / ``{video_id}_auto.json`` (or ``{video_id}.json``): ``masklet`` lists the
  annotated frames, every 4th frame of the 24 fps video, so annotated position ``i`` is video frame ``4·i``
  (files written by this project carry explicit ``frame_indices`` instead).
* DAVIS: ``{video}/{frame:05d}.png`` palette PNGs, every non-zero index an object id.
* SA-V per object: ``{video}/{obj:03d}/{frame:05d}.png`` binary PNGs, objects may overlap.

PNG file names are video frame indices. Every reader names the file at fault in its errors.
"""

from __future__ import annotations

import io
import json
from typing import Sequence

import numpy as np
from PIL import Image

from pipeline.io.masklets import Masklets
from pipeline.io.rle import encode_rles, rle_areas
from pipeline.io.storage import join_uri, list_sizes, read_bytes

SAV_ANNOTATION_STEP = 4
SAV_KINDS = ("manual", "auto")
_SAV_KEYS = ("video_id", "video_frame_count", "video_height", "video_width", "masklet", "masklet_id")


class AnnotationError(ValueError):
    """An annotation file or folder that cannot be read as SA-V JSON or PNG masks (message names it)."""


def _rle_area(rle: dict) -> int:
    return int(rle_areas([rle])[0])


def _first_appeared(rles: list[list[dict]], n_obj: int) -> list[int]:
    first = [-1] * n_obj
    for pos, frame in enumerate(rles):
        for j, rle in enumerate(frame):
            if first[j] < 0 and _rle_area(rle) > 0:
                first[j] = pos
    return first


def masklets_from_sav(d: object, source: str, annotation_step: int = SAV_ANNOTATION_STEP) -> Masklets:
    """Masklets of an SA-V annotation dict; ``source`` names it in errors and provenance.

    Frame indices: the file's ``frame_indices`` if present, else ``annotation_step`` × annotated position.
    """
    if not isinstance(d, dict):
        raise AnnotationError(f"{source}: not an SA-V annotation (top level is {type(d).__name__}, not an object)")
    missing = [k for k in _SAV_KEYS if k not in d]
    if missing:
        raise AnnotationError(f"{source}: not an SA-V annotation, missing keys {missing}")
    try:
        height, width = int(d["video_height"]), int(d["video_width"])
        obj_ids = [int(o) for o in d["masklet_id"]]
        frame_count = int(d["video_frame_count"])
    except (TypeError, ValueError) as e:
        raise AnnotationError(f"{source}: bad SA-V video fields ({e})") from e
    rles = d["masklet"]
    if not isinstance(rles, list):
        raise AnnotationError(f"{source}: 'masklet' must be a list over frames")
    for pos, frame in enumerate(rles):
        if not isinstance(frame, list) or len(frame) != len(obj_ids):
            raise AnnotationError(f"{source}: masklet frame {pos} must list {len(obj_ids)} RLEs (one per object)")
        for j, rle in enumerate(frame):
            if not isinstance(rle, dict) or "counts" not in rle or list(rle.get("size", [])) != [height, width]:
                raise AnnotationError(f"{source}: masklet frame {pos} object {obj_ids[j]}: not a COCO RLE of size "
                                      f"[{height}, {width}]")
    frames = d.get("frame_indices")
    frame_indices = [int(f) for f in frames] if frames is not None else [annotation_step * i for i in range(len(rles))]
    if len(frame_indices) != len(rles):
        raise AnnotationError(f"{source}: {len(frame_indices)} frame_indices for {len(rles)} masklet frames")
    return Masklets(
        video_id=str(d["video_id"]), frame_count=frame_count, height=height, width=width, obj_ids=obj_ids,
        frame_indices=frame_indices, rles=rles, scores=[[float("nan")] * len(obj_ids) for _ in rles],
        first_appeared=_first_appeared(rles, len(obj_ids)), provenance={"source": source},
    )


def read_sav_json(uri: str, storage_options: dict | None = None,
                  annotation_step: int = SAV_ANNOTATION_STEP) -> Masklets:
    """Masklets of one SA-V annotation JSON file."""
    try:
        d = json.loads(read_bytes(uri, storage_options))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{uri}: not JSON ({e})") from e
    return masklets_from_sav(d, uri, annotation_step)


def merge_masklets(parts: Sequence[Masklets]) -> Masklets:
    """One video's masklets from several annotation files (e.g. manual + auto) over the same frames.

    Object ids of each later part are shifted past the largest id so far, so ids stay unique.
    """
    first = parts[0]
    obj_ids = list(first.obj_ids)
    rles = [list(frame) for frame in first.rles]
    appeared = list(first.first_appeared)
    for part in parts[1:]:
        if part.frame_indices != first.frame_indices or (part.height, part.width) != (first.height, first.width):
            raise AnnotationError(f"{part.provenance.get('source')}: frames or size differ from "
                                  f"{first.provenance.get('source')}")
        offset = max(obj_ids, default=-1) + 1
        obj_ids += [offset + o for o in part.obj_ids]
        for frame, extra in zip(rles, part.rles):
            frame.extend(extra)
        appeared += part.first_appeared
    return Masklets(
        video_id=first.video_id, frame_count=first.frame_count, height=first.height, width=first.width,
        obj_ids=obj_ids, frame_indices=list(first.frame_indices), rles=rles,
        scores=[[float("nan")] * len(obj_ids) for _ in rles], first_appeared=appeared,
        provenance={"source": [p.provenance.get("source") for p in parts]},
    )


def _frame_index(name: str, where: str) -> int:
    stem = name[: -len(".png")]
    if not stem.isdigit():
        raise AnnotationError(f"{where}/{name}: PNG name is not a frame index")
    return int(stem)


def _read_png(uri: str, storage_options: dict | None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(read_bytes(uri, storage_options))) as img:
            if img.mode not in ("P", "L", "1"):
                raise AnnotationError(f"{uri}: mask PNG must be palette or greyscale, not mode {img.mode}")
            return np.asarray(img)
    except (OSError, SyntaxError) as e:
        raise AnnotationError(f"{uri}: unreadable PNG ({e})") from e


def _check_size(arr: np.ndarray, shape: tuple[int, ...] | None, uri: str) -> tuple[int, ...]:
    if shape is not None and arr.shape != shape:
        raise AnnotationError(f"{uri}: mask is {arr.shape[0]}x{arr.shape[1]}, earlier masks of the video are "
                              f"{shape[0]}x{shape[1]}")
    return arr.shape


def _build(video_id: str, source: str, frames: list[int], obj_ids: list[int], rles: list[list[dict]],
           shape: tuple[int, ...]) -> Masklets:
    """Masklets from per-frame RLE lists of images of ``shape``."""
    h, w = shape[:2]
    return Masklets(
        video_id=video_id, frame_count=frames[-1] + 1, height=int(h), width=int(w), obj_ids=obj_ids,
        frame_indices=frames, rles=rles, scores=[[float("nan")] * len(obj_ids) for _ in frames],
        first_appeared=_first_appeared(rles, len(obj_ids)), provenance={"source": source},
    )


def _read_palette_video(uri: str, video_id: str, names: list[str], so: dict | None) -> Masklets:
    """One pass over the frames, keeping only RLEs: ids are collected as they appear, absent ones filled empty."""
    frames = sorted((_frame_index(n, uri), n) for n in names)
    per_frame: list[dict[int, dict]] = []
    shape = None
    for _, name in frames:
        arr = _read_png(join_uri(uri, name), so)
        shape = _check_size(arr, shape, join_uri(uri, name))
        ids = [int(v) for v in np.unique(arr) if v != 0]
        rles = encode_rles(arr[None] == np.asarray(ids, dtype=arr.dtype).reshape(-1, 1, 1)) if ids else []
        per_frame.append(dict(zip(ids, rles)))
    obj_ids = sorted(set().union(*per_frame))
    empty = encode_rles(np.zeros((1, *shape[:2]), dtype=bool))[0]
    rles = [[found.get(o, empty) for o in obj_ids] for found in per_frame]
    return _build(video_id, uri, [f for f, _ in frames], obj_ids, rles, shape)


def _read_object_folders(uri: str, video_id: str, obj_dirs: list[str], so: dict | None) -> Masklets:
    bad = [d for d in obj_dirs if not d.isdigit()]
    if bad:
        raise AnnotationError(f"{uri}: object folder names must be integers, got {bad}")
    obj_dirs = sorted(obj_dirs, key=int)
    per_obj: list[dict[int, str]] = []
    for d in obj_dirs:
        names = [n for n in list_sizes(join_uri(uri, d), so) if n.endswith(".png")]
        per_obj.append({_frame_index(n, join_uri(uri, d)): n for n in names})
    frames = sorted(per_obj[0])
    if not frames:
        raise AnnotationError(f"{join_uri(uri, obj_dirs[0])}: no PNG masks")
    for d, files in zip(obj_dirs, per_obj):
        if sorted(files) != frames:
            raise AnnotationError(f"{join_uri(uri, d)}: frames differ from those of object {obj_dirs[0]}")
    shape = None
    rles = []
    for f in frames:
        stack = []
        for d, files in zip(obj_dirs, per_obj):
            png = join_uri(uri, d, files[f])
            arr = _read_png(png, so)
            shape = _check_size(arr, shape, png)
            stack.append(arr > 0)
        rles.append(encode_rles(np.stack(stack)))
    return _build(video_id, uri, frames, [int(d) for d in obj_dirs], rles, shape)


def read_png_video(uri: str, storage_options: dict | None = None, video_id: str | None = None) -> Masklets:
    """Masklets of one video's PNG folder: DAVIS palette PNGs, or SA-V per-object folders of binary PNGs."""
    entries = list_sizes(uri, storage_options)
    if not entries:
        raise AnnotationError(f"{uri}: no such folder or it is empty")
    video_id = video_id or uri.rstrip("/").rsplit("/", 1)[-1]
    pngs = [n for n, size in entries.items() if size is not None and n.endswith(".png")]
    dirs = [n for n, size in entries.items() if size is None]
    if pngs and not dirs:
        return _read_palette_video(uri, video_id, pngs, storage_options)
    if dirs and not pngs:
        return _read_object_folders(uri, video_id, dirs, storage_options)
    raise AnnotationError(f"{uri}: expected either frame PNGs (DAVIS) or object folders (SA-V), found "
                          f"{len(pngs)} PNGs and {len(dirs)} folders")


def find_annotations(root: str, storage_options: dict | None = None,
                     kinds: Sequence[str] = ("manual",)) -> dict[str, list[str]]:
    """video_id → annotation URIs under ``root``: the SA-V JSON files of ``kinds`` (in that order; a plain
    ``{video_id}.json`` counts as manual) or the video's PNG folder."""
    unknown = [k for k in kinds if k not in SAV_KINDS]
    if unknown or not kinds:
        raise ValueError(f"annotation kinds must be among {SAV_KINDS}, got {list(kinds)}")
    entries = list_sizes(root, storage_options)
    if not entries:
        raise AnnotationError(f"{root}: no annotations (folder absent or empty)")
    found: dict[str, dict[str, str]] = {}
    for name, size in entries.items():
        if size is None:
            found.setdefault(name, {})["png"] = join_uri(root, name)
        elif name.endswith(".json"):
            stem = name[: -len(".json")]
            video_id, _, kind = stem.rpartition("_")
            if kind not in SAV_KINDS:
                video_id, kind = stem, "manual"
            found.setdefault(video_id, {})[kind] = join_uri(root, name)
    out: dict[str, list[str]] = {}
    for video_id, files in sorted(found.items()):
        uris = [files[k] for k in kinds if k in files]
        if uris:
            out[video_id] = uris
        elif "png" in files and not any(k in files for k in SAV_KINDS):
            out[video_id] = [files["png"]]
    return out


def read_annotation(uris: Sequence[str], video_id: str, storage_options: dict | None = None,
                    annotation_step: int = SAV_ANNOTATION_STEP) -> Masklets:
    """Masklets of one video from ``find_annotations``' URIs (JSON files merged, or one PNG folder)."""
    if len(uris) == 1 and not uris[0].endswith(".json"):
        return read_png_video(uris[0], storage_options, video_id)
    parts = [read_sav_json(u, storage_options, annotation_step) for u in uris]
    for u, p in zip(uris, parts):
        if p.video_id != video_id:
            raise AnnotationError(f"{u}: video_id {p.video_id!r} does not match its file name ({video_id!r})")
    return merge_masklets(parts) if len(parts) > 1 else parts[0]
