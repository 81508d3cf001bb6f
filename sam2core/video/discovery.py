"""Object discovery: which objects a video has when nobody prompted them all, found by an automatic mask generator
on keyframes and tracked between them by a ``VideoSession``.

Keyframes are frame 0 and every ``every``-th frame after it. The walk needs to know where the known objects are on
each keyframe, nothing in between, so the session walks the keyframes alone, as a video of their own (at SA-V's
cadence, 24 fps video with ``every=4``, that is tracking at 6 fps, the rate SA-V is annotated at), one step at a
time: it is prompted on keyframe ``k`` with every known object's mask there (its tracked mask, or the generator's
mask for an object found at ``k``) and tracks to the next keyframe only, so memory is bounded and the cost is linear
in the number of keyframes; the frames between keyframes are never decoded nor encoded. On each keyframe the
generator's masks are compared with the known ones (``admit``): a mask that matches a known object (IoU ≥
``match_iou``, or covered by it for ≥ ``match_coverage`` of its own area) is dropped, the rest become new objects,
largest first, up to ``max_objects``; once that many are found the walk stops (nothing later could be admitted).
The generator does not decode the grid's clicks that land on a known object (``skip``): such a click finds that
object or a part of it, which matching would drop, so on later keyframes it decodes only the part of the frame no
known object covers.

Given prompts (``ObjectPrompt``: clicks, a box or a mask of one object on one frame) make their objects known from
their first prompt frame on; a prompt frame is also a boundary of the walk, where the prompt replaces the tracked
mask. New ids start above the prompted ones; ``max_objects`` counts discovered objects only.

Each boundary frame is read and encoded once, by one feature stream ahead of the walk
(``VideoSession.stream_features``: the next keyframe is encoded while the generator works on the current one); the
generator (in the session's compute dtype), the step's prompts and its tracking all use those features. The features
of the keyframes where objects were found are handed to the session when the walk ends (``VideoSession.keep_features``,
within its budget for kept frames): the final pass prompts those objects there, and neither the prompts nor the pass
encode those frames again. Masks stay tensors on the model's device: tracked masks are the session's video-resolution
logits > 0, and the matching runs there too; only the admission decisions come back to the host. What to do with the
found objects is the caller's: typically prompt each one where it was found and ``propagate(direction="both")``
over the whole video.

    from sam2core import AutomaticMaskGenerator, DiscoveryOptions, discover_objects
    found = discover_objects(session, AutomaticMaskGenerator(model), DiscoveryOptions(every=4, max_objects=20))
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from sam2core.automatic import AutomaticMaskGenerator
from sam2core.mask_ops import mask_boxes
from sam2core.modeling.sam2 import ImageFeatures

from .feature_stream import KEPT_FEATURES_BYTES, FrameSource, KeptFeatures, features_nbytes
from .results import FrameResult
from .session import VideoSession


@dataclass(frozen=True)
class ObjectPrompt:
    """One object's prompt on one frame, in video pixels: clicks (``points`` with ``labels``: 1 positive, 0
    negative) and/or a ``box`` [x0, y0, x1, y1], or a 2-D ``mask`` (what ``VideoSession.add_points`` / ``add_mask``
    take)."""

    frame_idx: int
    obj_id: int
    points: Sequence[Sequence[float]] | None = None
    labels: Sequence[int] | None = None
    box: Sequence[float] | None = None
    mask: np.ndarray | torch.Tensor | None = None

    def apply(self, session: VideoSession) -> FrameResult:
        """Give the prompt to ``session``; returns the masks of all objects on its frame."""
        if self.mask is not None:
            return session.add_mask(self.frame_idx, self.obj_id, self.mask)
        return session.add_points(self.frame_idx, self.obj_id, points=self.points, labels=self.labels, box=self.box)


@dataclass(frozen=True)
class DiscoveryOptions:
    """Keyframe cadence (``every``; SA-V annotates every 4th frame of 24 fps video), the cap on discovered objects
    (``max_objects``, largest first), the smallest generator mask considered (``min_area`` pixels), and when a
    generator mask is a known object (``match_iou``, ``match_coverage``; both in (0, 1])."""

    every: int = 4
    max_objects: int = 50
    min_area: int = 100
    match_iou: float = 0.5
    match_coverage: float = 0.8

    def __post_init__(self) -> None:
        if self.every < 1 or self.max_objects < 1 or self.min_area < 0:
            raise ValueError(f"need every >= 1, max_objects >= 1, min_area >= 0, got {self}")
        if not (0 < self.match_iou <= 1 and 0 < self.match_coverage <= 1):
            raise ValueError(f"match_iou and match_coverage must be in (0, 1], got {self}")


@dataclass(frozen=True)
class FoundObject:
    """An object the generator found: its id, the keyframe where it was found, its mask there (``[H, W]`` bool at
    video resolution, on the model's device) and the generator's stability score for that mask."""

    obj_id: int
    frame_idx: int
    mask: torch.Tensor
    stability: float


def keyframes(num_frames: int, every: int) -> list[int]:
    """Frame 0 and every ``every``-th frame after it."""
    return list(range(0, num_frames, every))


def _matches(inter: torch.Tensor, area_new: torch.Tensor, area_other: torch.Tensor,
             options: DiscoveryOptions) -> torch.Tensor:
    """[N, K] bool: new mask i is object j (IoU ≥ ``match_iou`` or covered ≥ ``match_coverage``), from the
    intersection counts ``inter`` [N, K] and the areas, divided in float64 as the former host rule did (the same
    decisions at the thresholds). Monotone in ``inter``: an upper bound that does not match rules the pair out."""
    inter = inter.double()
    a_new = area_new.double()[:, None]
    union = a_new + area_other.double()[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), 0.0)
    coverage = torch.where(a_new > 0, inter / a_new.clamp(min=1), 0.0)
    return (iou >= options.match_iou) | (coverage >= options.match_coverage)


def _boxes_and_areas(masks: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
    """Inclusive boxes (host ints; [0, 0, 0, 0] when empty) and pixel counts (device, int64) of bool masks
    [K, H, W]; each count reads only its mask's box."""
    boxes = mask_boxes(masks).tolist()
    counts = [masks[k, y0:y1 + 1, x0:x1 + 1].view(torch.uint8).sum(dtype=torch.int32)
              for k, (x0, y0, x1, y1) in enumerate(boxes)]
    areas = torch.stack(counts).long() if counts else masks.new_zeros(0, dtype=torch.int64)
    return boxes, areas


def _overlap_bound(boxes_new: torch.Tensor, area_new: torch.Tensor, boxes: torch.Tensor,
                   area: torch.Tensor) -> torch.Tensor:
    """[N, K] upper bound of the intersections: neither mask's area, nor the overlap of their (inclusive) boxes."""
    x0 = torch.maximum(boxes_new[:, None, 0], boxes[None, :, 0])
    y0 = torch.maximum(boxes_new[:, None, 1], boxes[None, :, 1])
    x1 = torch.minimum(boxes_new[:, None, 2], boxes[None, :, 2])
    y1 = torch.minimum(boxes_new[:, None, 3], boxes[None, :, 3])
    box = (x1 - x0 + 1).clamp(min=0) * (y1 - y0 + 1).clamp(min=0)
    return torch.minimum(torch.minimum(area_new[:, None], area[None, :]), box)


def _pair_counts(candidates: torch.Tensor, cand_boxes: list[list[int]], others: torch.Tensor,
                 other_boxes: list[list[int]], may: np.ndarray) -> torch.Tensor:
    """[N, K] int64 intersections of candidate i with mask j of ``others``, counted where ``may`` [N, K] says the
    pair could match (0 elsewhere), inside the overlap of i's box with the box around those j's boxes."""
    inter = torch.zeros(may.shape, dtype=torch.int64, device=candidates.device)
    for i, row in enumerate(may):
        js = np.flatnonzero(row)
        if not len(js):
            continue
        x0, y0, x1, y1 = cand_boxes[i]
        x0 = max(x0, min(other_boxes[j][0] for j in js))
        y0 = max(y0, min(other_boxes[j][1] for j in js))
        x1 = min(x1, max(other_boxes[j][2] for j in js))
        y1 = min(y1, max(other_boxes[j][3] for j in js))
        index = torch.from_numpy(js).to(candidates.device)
        crops = others[:, y0:y1 + 1, x0:x1 + 1].index_select(0, index)
        both = crops & candidates[i, y0:y1 + 1, x0:x1 + 1]
        inter[i, index] = both.view(torch.uint8).flatten(1).sum(dim=1, dtype=torch.int32).long()
    return inter


def match_decisions(candidates: torch.Tensor, known: torch.Tensor,
                    options: DiscoveryOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For bool masks ``candidates`` [N, H, W] and ``known`` [M, H, W] on one device: each candidate's area [N],
    whether it is a known object [N] and whether candidate i is candidate j [N, N], decided as on full-resolution
    masks (exact pixel counts) but computed on the device, boxes first: a pair whose upper bound
    (``_overlap_bound``) cannot match is never counted, the others only where their boxes meet. The host learns the
    boxes and which pairs to count, never a mask."""
    cand_boxes, cand_areas = _boxes_and_areas(candidates)
    known_boxes, known_areas = _boxes_and_areas(known)
    device = candidates.device
    cand_t = torch.tensor(cand_boxes, dtype=torch.int64, device=device).view(-1, 4)
    known_t = torch.tensor(known_boxes, dtype=torch.int64, device=device).view(-1, 4)
    may_known = _matches(_overlap_bound(cand_t, cand_areas, known_t, known_areas), cand_areas, known_areas, options)
    may_cand = _matches(_overlap_bound(cand_t, cand_areas, cand_t, cand_areas), cand_areas, cand_areas, options)
    may_cand.fill_diagonal_(False)
    inter_known = _pair_counts(candidates, cand_boxes, known, known_boxes, may_known.cpu().numpy())
    inter_cand = _pair_counts(candidates, cand_boxes, candidates, cand_boxes, may_cand.cpu().numpy())
    is_known = (may_known & _matches(inter_known, cand_areas, known_areas, options)).any(dim=1)
    same = may_cand & _matches(inter_cand, cand_areas, cand_areas, options)
    return cand_areas, is_known, same


def admit(candidates: torch.Tensor, known: torch.Tensor, options: DiscoveryOptions, room: int) -> list[int]:
    """Indices of the generator masks ``candidates`` [N, H, W] (bool) that are new objects, largest first (ties:
    lower index first), at most ``room``: a mask smaller than ``min_area`` pixels, or matching a known mask
    (``known`` [M, H, W] bool) or an already admitted candidate, is dropped."""
    if room <= 0 or len(candidates) == 0:
        return []
    known = known.to(candidates.device, torch.bool)
    areas, is_known, same = (t.cpu() for t in match_decisions(candidates.bool(), known, options))
    areas, is_known, same = areas.tolist(), is_known.tolist(), same.numpy()
    admitted: list[int] = []
    for i in sorted(range(len(areas)), key=lambda i: (-areas[i], i)):
        if len(admitted) >= room:
            break
        if areas[i] < max(options.min_area, 1) or is_known[i] or same[i, admitted].any():
            continue
        admitted.append(i)
    return admitted


def _result_masks(result: FrameResult) -> dict[int, torch.Tensor]:
    """Each object's mask in a frame's result: its video-resolution logits > 0 (on the device)."""
    masks = result.mask_logits > 0
    return {o: masks[j] for j, o in enumerate(result.obj_ids)}


def _keep(session: VideoSession, frame_idx: int, feats: ImageFeatures) -> None:
    """Give the session a walk frame's features until its next reset: it then reads no frame while the walk's
    stream is reading the video (a decoder is not shared between threads)."""
    if not session.keep_features(frame_idx, feats, lasting=False):
        raise RuntimeError(f"one frame's image features ({features_nbytes(feats)} bytes) exceed what a session "
                           f"keeps ({KEPT_FEATURES_BYTES} bytes): the image size is too large for discovery")


def _track(session: VideoSession, start: int, end: int, known: dict[int, torch.Tensor],
           prompts: Sequence[ObjectPrompt], feats: tuple[ImageFeatures, ImageFeatures]) -> dict[int, torch.Tensor]:
    """Masks of the objects at ``end`` after tracking from ``start`` (prompted there with ``known`` and the
    ``prompts`` of that frame), on the two frames' features ``feats`` (the step encodes nothing); objects with an
    empty mask at ``start`` stay empty."""
    session.reset()
    _keep(session, start, feats[0])
    _keep(session, end, feats[1])
    prompted = {p.obj_id for p in prompts}
    nonempty = torch.stack([m.any() for m in known.values()]).tolist() if known else []
    for (obj_id, mask), present in zip(known.items(), nonempty):
        if obj_id not in prompted and present:
            session.add_mask(start, obj_id, mask)
    for p in prompts:
        p.apply(session)
    out = {o: torch.zeros_like(m) for o, m in known.items()}
    if not session.obj_ids:
        return out
    for result in session.propagate(start_frame=start, direction="forward", max_frames=end - start):
        if result.frame_idx == end:
            out.update(_result_masks(result))
    return out


def _prompted_masks(session: VideoSession, prompts: Sequence[ObjectPrompt],
                    feats: ImageFeatures) -> dict[int, torch.Tensor]:
    """The masks the ``prompts`` of one frame (whose features are ``feats``) give their objects there, on the
    session's video (a throwaway session state)."""
    session.reset()
    _keep(session, prompts[0].frame_idx, feats)
    result = None
    for p in prompts:
        result = p.apply(session)
    return _result_masks(result)


class _WalkFrames:
    """The walk's frames of ``source`` (its keyframes and prompt frames, ascending) as a video of their own,
    numbered 0..n-1: the session tracks from one to the next directly. Frames past the source's count (one that
    was lowered when a read ended early) are not part of it.

    The pictures of the frames ``held`` (the keyframes' numbers) are kept from when they are read (the walk's
    feature stream reads ahead) until the walk ``take``s them for the generator: a second read of a frame a video
    decoder has passed would restart it at the keyframe of the file before it (up to a whole group of pictures
    decoded again)."""

    def __init__(self, source: FrameSource, frames: Sequence[int], held: Collection[int]) -> None:
        self.source = source
        self.frames = list(frames)
        self.height, self.width = source.height, source.width
        self._held = set(held)
        self._pictures: dict[int, np.ndarray | torch.Tensor] = {}

    @property
    def num_frames(self) -> int:
        return bisect_left(self.frames, self.source.num_frames)  # the frames are ascending

    def iter_frames(self, indices: Sequence[int]) -> Iterator[np.ndarray | torch.Tensor]:
        indices = list(indices)
        for i, frame in zip(indices, self.source.iter_frames([self.frames[i] for i in indices])):
            if i in self._held:
                self._pictures[i] = frame
            yield frame

    def take(self, i: int) -> np.ndarray | torch.Tensor:
        """The picture of held frame ``i``, read by the stream (it is forgotten here)."""
        return self._pictures.pop(i)


def discover_objects(session: VideoSession, generator: AutomaticMaskGenerator, options: DiscoveryOptions,
                     prompts: Sequence[ObjectPrompt] = (),
                     on_frame: Callable[[int], None] | None = None) -> list[FoundObject]:
    """The objects of the session's video that ``prompts`` do not already cover, found by ``generator`` on the
    keyframes and tracked from boundary to boundary with ``session`` (which walks a video of the boundary frames
    only, and is left reset on its own video; ``reset()`` it before the final pass). ``on_frame(k)`` is called as
    the walk reaches boundary ``k`` (progress); the walk ends early once ``max_objects`` are found, and where the
    video ends when that is before its count. Holds one mask per object, never the frames' masks."""
    source = session.source
    n = source.num_frames
    keys = set(keyframes(n, options.every))
    by_frame: dict[int, list[ObjectPrompt]] = {}
    for p in prompts:
        by_frame.setdefault(p.frame_idx, []).append(p)
    boundaries = sorted(keys | {f for f in by_frame if 0 <= f < n})
    walk = _WalkFrames(source, boundaries, [i for i, b in enumerate(boundaries) if b in keys])
    next_id = max((p.obj_id for p in prompts), default=-1) + 1
    known: dict[int, torch.Tensor] = {}  # every known object's mask at the current boundary
    found: list[FoundObject] = []
    found_on = KeptFeatures()  # features of the keyframes where objects were found, for the final pass
    session.reset(walk)
    stream = session.stream_features(range(walk.num_frames))
    features = iter(stream)
    try:
        ahead = next(features, None)  # the boundary's features; the stream encodes the next ones meanwhile
        for i, b in enumerate(walk.frames):
            # a source that claimed more frames than it has: a read that ended early lowered its count (a pipeline
            # decoder), or it yields nothing past its end
            if ahead is None or ahead[0] != i:
                break  # the video ends before this boundary
            feats = ahead[1]
            if on_frame is not None:
                on_frame(b)
            if b in by_frame:  # given on the video, so that a bad prompt's error names the video's frame
                session.reset(source)
                known.update(_prompted_masks(session, by_frame[b], feats))  # no read: the stream is reading
                session.reset(walk)
            here = [replace(p, frame_idx=i) for p in by_frame.get(b, [])]  # in the walk's numbering
            if b in keys:
                image = np.array(walk.take(i))  # a writable copy
                stacked = torch.stack(list(known.values())) if known else None
                with torch.inference_mode(), session.compute_context():
                    masks = generator.generate_masks(image, feats,
                                                     skip=None if stacked is None else stacked.any(dim=0))
                candidates = masks.masks.bool()
                stability = masks.stability_score.float().tolist()
                if stacked is None:
                    stacked = candidates.new_zeros((0, *candidates.shape[-2:]))
                for j in admit(candidates, stacked, options, options.max_objects - len(found)):
                    found.append(FoundObject(next_id, b, candidates[j].clone(), stability[j]))
                    known[next_id] = found[-1].mask
                    next_id += 1
                    found_on.keep(b, feats, lasting=True)
            if len(found) >= options.max_objects:
                break  # nothing later can be admitted: tracking on would find nothing
            ahead = next(features, None)
            if ahead is not None and known:
                known = _track(session, i, i + 1, known, here, (feats, ahead[1]))
    finally:
        stream.close()
        session.reset(source)
    for b, feats in found_on.lasting():
        session.keep_features(b, feats)
    return found
