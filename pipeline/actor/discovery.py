"""Automatic discovery in a job (``prompts=auto`` / ``manifest+auto``): the pipeline's side of it.

The walk itself (keyframes, the generator on them skipping clicks on known objects, tracking from keyframe to
keyframe, matching and admission on the device) is sam2core's (``sam2core.video.discovery``). Here the job's terms
become its terms: manifest prompts become ``ObjectPrompt`` objects (in mixed mode the manifest's objects are known
from their first prompt frame on, and new ids start above the manifest's) and ``auto.*`` becomes
``DiscoveryOptions``. The worker then runs one final pass with every discovered object prompted on the keyframe
where it was found (``propagate(direction="both")``, so objects are also tracked backward to where they first
appear), writes SA-V's auto layout, and ``prune`` removes near-empty and duplicate masklets from its output. The
session sees the tracked frames only (``data.frame_step``, a clip: ``pipeline.actor.sampling``), so keyframes are
every ``auto.every`` tracked frames and prompts come in the session's numbering.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.io.masklets import Masklets
from pipeline.io.rle import coco_form, decode_rle
from pipeline.plan.tasks import Prompt
from pipeline.specs import AutoSpec
from sam2core.automatic import AutomaticMaskGenerator
from sam2core.video import VideoSession
from sam2core.video.discovery import DiscoveryOptions, FoundObject, ObjectPrompt, discover_objects


def object_prompt(p: Prompt) -> ObjectPrompt:
    """A manifest prompt as sam2core's prompt (its mask decoded to a bool array)."""
    return ObjectPrompt(p.frame_idx, p.obj_id, points=p.points, labels=p.point_labels, box=p.box,
                        mask=None if p.mask is None else decode_rle(p.mask))


def discovery_options(spec: AutoSpec) -> DiscoveryOptions:
    """The walk's options from the job's ``auto.*``."""
    return DiscoveryOptions(every=spec.every, max_objects=spec.max_objects, min_area=spec.min_area,
                            match_iou=spec.match_iou, match_coverage=spec.match_coverage)


def discover(session: VideoSession, generator: AutomaticMaskGenerator, spec: AutoSpec, prompts: Sequence[Prompt] = (),
             on_frame: Callable[[int], None] | None = None) -> list[FoundObject]:
    """The objects of the session's video that the manifest ``prompts`` (mixed mode) do not already cover;
    ``on_frame(k)`` is told each boundary the walk reaches (progress)."""
    return discover_objects(session, generator, discovery_options(spec), [object_prompt(p) for p in prompts],
                            on_frame=on_frame)


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
