"""Automatic discovery: which objects a video has, when nobody prompted them (``prompts=auto``).

Keyframes are frame 0 and every ``auto.every``-th frame after it (default 4: SA-V annotates every 4th frame of its
24 fps videos, i.e. 6 fps). The walk goes over the keyframes in order, one short chunk at a time: a session is
prompted on keyframe ``k`` with every known object's mask there (its tracked mask, or the generator's mask for an
object found at ``k``) and tracks forward to the next keyframe only, so memory is bounded and the cost is linear in
video length. On each keyframe the generator's masks are compared with the tracked ones: a mask that matches a known
object (IoU ≥ ``match_iou``, or covered by it for ≥ ``match_coverage`` of its own area) is dropped, the rest become
new objects, largest first, up to ``max_objects``. The worker then runs one final pass with every discovered object
prompted on the keyframe where it was found (``propagate(direction="both")``, so objects are also tracked backward to
where they first appear) and ``prune`` removes near-empty and duplicate masklets from its output.

Mixed mode (``prompts=manifest+auto``): the manifest's objects are known from their first prompt frame on (a
prompt frame is also a chunk boundary, where the manifest prompt replaces the tracked mask); new ids start above the
manifest's. The cap counts discovered objects only.

Every frame is encoded once by the walk: a chunk's tracking stops on the next keyframe, whose features the session
keeps (``VideoSession.features``), and the generator and the next chunk's prompts reuse them there.

Both the session and the generator are parameters (any object with ``VideoSession``'s ``reset``/``add_mask``/
``propagate``, any callable (frame index, image) → masks): the worker passes the real ones (its generator reads the
session's features of that frame); tests pass stand-ins that know the true masks of a synthetic video.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from pipeline.io.masklets import Masklets
from pipeline.io.rle import coco_form, decode_rle, encode_rle
from pipeline.specs import AutoSpec
from pipeline.plan.tasks import Prompt

# (keyframe index, its image) → masks [N, H, W] bool, stability [N]
Generate = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]
ApplyPrompt = Callable[[Any, Prompt], Any]  # (session, manifest prompt) → FrameResult of its frame


@dataclass(frozen=True)
class Discovered:
    """An object the generator found: its id, the keyframe where it was found, its mask there (COCO RLE) and the
    generator's stability score for that mask."""

    obj_id: int
    frame_idx: int
    mask: dict
    stability: float


def session_generator(generator: Any, session: Any) -> Generate:
    """``generate`` for ``discover`` from an ``AutomaticMaskGenerator`` and the walk's ``VideoSession``: the
    generator runs on the features the session keeps for the keyframe (tracking computed them: encoded once), in
    the session's compute dtype."""
    def generate(frame_idx: int, image: Any) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), session.compute_context():
            found = generator.generate_masks(np.array(image), session.features(frame_idx))  # a writable copy
        return found.masks.cpu().numpy(), found.stability_score.float().cpu().numpy()

    return generate


def keyframes(num_frames: int, every: int) -> list[int]:
    """Frame 0 and every ``every``-th frame after it."""
    return list(range(0, num_frames, every))


def _iou_and_coverage(new: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For masks ``new`` [N, P] and ``known`` [M, P] (flattened bool): IoU [N, M] and the share of each new mask
    covered by each known one [N, M]."""
    inter = new.astype(np.float32) @ known.T.astype(np.float32)
    area_new = new.sum(axis=1, dtype=np.float64)[:, None]
    area_known = known.sum(axis=1, dtype=np.float64)[None, :]
    union = area_new + area_known - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)
    coverage = np.divide(inter, area_new, out=np.zeros_like(inter, dtype=np.float64), where=area_new > 0)
    return iou, coverage


def admit(candidates: np.ndarray, known: Sequence[np.ndarray], spec: AutoSpec, room: int) -> list[int]:
    """Indices of the generator masks ``candidates`` [N, H, W] that are new objects, largest first, at most
    ``room``: a mask smaller than ``min_area`` pixels, or matching a known mask or an already admitted one (IoU ≥
    ``match_iou`` or covered ≥ ``match_coverage``), is dropped."""
    if room <= 0 or len(candidates) == 0:
        return []
    flat = candidates.reshape(len(candidates), -1)
    areas = flat.sum(axis=1)
    kept: list[np.ndarray] = [np.asarray(k, dtype=bool).reshape(-1) for k in known]
    admitted: list[int] = []
    for i in sorted(range(len(flat)), key=lambda i: (-int(areas[i]), i)):
        if len(admitted) >= room:
            break
        if areas[i] < max(spec.min_area, 1):
            continue
        if kept:
            iou, cov = _iou_and_coverage(flat[i:i + 1], np.stack(kept))
            if (iou >= spec.match_iou).any() or (cov >= spec.match_coverage).any():
                continue
        admitted.append(i)
        kept.append(flat[i])
    return admitted


def _track(session: Any, start: int, end: int, masks: dict[int, np.ndarray], prompts: Sequence[Prompt],
           apply_prompt: ApplyPrompt) -> dict[int, np.ndarray]:
    """Masks of the objects at ``end`` after tracking from ``start`` (prompted there with ``masks`` and the manifest
    ``prompts`` of that frame); objects with an empty mask at ``start`` stay empty."""
    shape = next(iter(masks.values())).shape if masks else None
    session.reset()
    prompted = {p.obj_id for p in prompts}
    for obj_id, mask in masks.items():
        if obj_id not in prompted and mask.any():
            session.add_mask(start, obj_id, mask)
    for p in prompts:
        apply_prompt(session, p)
    out = {o: np.zeros(shape, dtype=bool) for o in masks} if shape is not None else {}
    if not session.obj_ids:
        return out
    for result in session.propagate(start_frame=start, direction="forward", max_frames=end - start):
        if result.frame_idx == end:
            logits = result.mask_logits.detach().cpu().numpy()
            out.update({o: logits[j] > 0 for j, o in enumerate(result.obj_ids)})
    return out


def _prompted_masks(session: Any, frame_idx: int, prompts: Sequence[Prompt],
                    apply_prompt: ApplyPrompt) -> dict[int, np.ndarray]:
    """The masks the manifest ``prompts`` of one frame give their objects there (a throwaway session state)."""
    session.reset()
    result = None
    for p in prompts:
        result = apply_prompt(session, p)
    logits = result.mask_logits.detach().cpu().numpy()
    return {o: logits[j] > 0 for j, o in enumerate(result.obj_ids)}


def discover(session: Any, source: Any, generate: Generate, spec: AutoSpec,
             prompts: Sequence[Prompt] = (), apply_prompt: ApplyPrompt | None = None,
             on_frame: Callable[[int], None] | None = None) -> list[Discovered]:
    """The objects of the video ``source`` that ``prompts`` (mixed mode) do not already cover, found by
    ``generate`` on the keyframes and tracked between them with ``session``. ``on_frame(k)`` is called as the walk
    reaches boundary ``k`` (progress). Holds one mask per object, never the frames' masks."""
    n = source.num_frames
    keys = set(keyframes(n, spec.every))
    by_frame: dict[int, list[Prompt]] = {}
    for p in prompts:
        by_frame.setdefault(p.frame_idx, []).append(p)
    boundaries = sorted(keys | {f for f in by_frame if 0 <= f < n})
    next_id = max((p.obj_id for p in prompts), default=-1) + 1
    known: dict[int, np.ndarray] = {}  # every known object's mask at the current boundary
    found: list[Discovered] = []
    for b, nxt in zip(boundaries, boundaries[1:] + [None]):
        if on_frame is not None:
            on_frame(b)
        here = by_frame.get(b, [])
        if here:
            known.update(_prompted_masks(session, b, here, apply_prompt))
        if b in keys and len(found) < spec.max_objects:
            image = next(iter(source.iter_frames([b])))
            masks, stability = generate(b, image)
            masks = np.asarray(masks, dtype=bool)
            for i in admit(masks, list(known.values()), spec, spec.max_objects - len(found)):
                found.append(Discovered(next_id, b, encode_rle(masks[i]), float(stability[i])))
                known[next_id] = masks[i]
                next_id += 1
        if nxt is not None and known:
            known = _track(session, b, nxt, known, here, apply_prompt)
    return found


def prune(m: Masklets, min_area: int, dedupe_iou: float, keep: Sequence[int] = (),
          overlap_share: float = 0.9) -> Masklets:
    """``m`` without near-empty masklets (fewer than ``min_area`` pixels on every frame) and duplicates; objects in
    ``keep`` (manifest objects) are never removed.

    Two masklets are one object when, on at least ``overlap_share`` of the frames where the shorter one is present,
    both are present with IoU ≥ ``dedupe_iou``: the shorter one then adds nothing and is removed (the unprotected one
    when one is in ``keep``; the later one when equally long). Containment, not equality, is what catches an object
    that left and came back: discovery gave it a second id on reappearing, and the final pass tracked the first one
    through the gap too. Compares the RLEs frame by frame (pycocotools, no decoding), keeping per-object and
    per-pair counters only."""
    n = len(m.obj_ids)
    max_area = np.zeros(n, dtype=np.int64)
    shown = np.zeros(n, dtype=np.int64)  # frames where each masklet is present
    same = np.zeros((n, n), dtype=np.int64)  # frames where both are present and match
    for frame in m.rles:
        coded = [coco_form(r) for r in frame]
        areas = mask_utils.area(coded).astype(np.int64) if coded else np.zeros(0, dtype=np.int64)
        max_area = np.maximum(max_area, areas)
        present = areas > 0
        shown += present
        idx = np.flatnonzero(present)
        if len(idx) > 1:
            iou = np.asarray(mask_utils.iou([coded[i] for i in idx], [coded[i] for i in idx], [0] * len(idx)))
            same[np.ix_(idx, idx)] += iou >= dedupe_iou
    protected = {int(o) for o in keep}
    is_kept = [m.obj_ids[j] in protected for j in range(n)]
    # protected first, then the longest masklets, then id order: each is removed when a kept one contains it
    order = sorted(range(n), key=lambda j: (not is_kept[j], -int(shown[j]), j))
    kept: list[int] = []
    for j in order:
        if not is_kept[j]:
            if max_area[j] < min_area:
                continue
            if any(same[i, j] >= overlap_share * min(shown[i], shown[j]) for i in kept):
                continue
        kept.append(j)
    return select_objects(m, sorted(kept))


def select_objects(m: Masklets, columns: Sequence[int]) -> Masklets:
    """The masklets of the objects at positions ``columns`` only (every per-object field follows)."""
    cols = list(columns)

    def pick(rows: list[list] | None) -> list[list] | None:
        return None if rows is None else [[row[j] for j in cols] for row in rows]

    return replace(m, obj_ids=[m.obj_ids[j] for j in cols], rles=pick(m.rles), scores=pick(m.scores),
                   first_appeared=[m.first_appeared[j] for j in cols], stability=pick(m.stability),
                   types=None if m.types is None else [m.types[j] for j in cols])


def prompt_of(d: Discovered) -> np.ndarray:
    """The boolean mask a discovered object is prompted with in the final pass."""
    return decode_rle(d.mask)
