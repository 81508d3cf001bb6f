"""Which stored outputs a tracking step attends to, and which stored outputs later steps can still need.

Selection follows the official predictor: conditioning frames first (all of them in insertion order, or the
``max_cond_frames`` temporally closest), then up to ``num_maskmem - 1`` recent tracked frames (the previous frame,
then every ``stride``-th frame further back), then object pointers of the past conditioning frames and of up to
``min(num_frames, 16) - 1`` preceding tracked frames. "Back" means towards the start of the pass, so a backward
pass mirrors every window.
"""

from __future__ import annotations

from dataclasses import dataclass

from .state import FrameOutput, ObjectState


@dataclass(frozen=True)
class MemoryParams:
    """The model switches memory selection depends on."""

    num_maskmem: int = 7
    stride: int = 1
    max_cond_frames: int = -1
    max_obj_ptrs: int = 16
    signed_ptr_offsets: bool = True


@dataclass
class MemoryPlan:
    """What one object attends to at one frame: conditioning memories then tracked ones (``tpos``: their rows of the
    temporal code), conditioning pointers then tracked ones (``offsets``: signed frame offsets; a tracked pointer's
    offset is its distance, 1 … ``max_obj_ptrs - 1``). ``num_cond`` / ``num_cond_ptrs``: how many of each lead."""

    memories: list[FrameOutput]
    tpos: list[int]
    pointers: list[FrameOutput]
    offsets: list[int]
    num_cond: int = 0
    num_cond_ptrs: int = 0


def cond_count(num_cond_frames: int, p: MemoryParams) -> int:
    """How many of an object's ``num_cond_frames`` conditioning frames a step attends to."""
    return num_cond_frames if p.max_cond_frames == -1 else min(num_cond_frames, p.max_cond_frames)


def split_cond_frames(frame_idx: int, cond: dict[int, FrameOutput], limit: int
                      ) -> tuple[dict[int, FrameOutput], dict[int, FrameOutput]]:
    """(selected, unselected) conditioning outputs: all of them if ``limit`` is -1 or not exceeded, else the closest
    one before ``frame_idx``, the closest at-or-after it, then the nearest others by |Δt| up to ``limit``."""
    if limit == -1 or len(cond) <= limit:
        return cond, {}
    if limit < 2:
        raise ValueError(f"max_cond_frames must be -1 or at least 2, got {limit}")
    before = [t for t in cond if t < frame_idx]
    after = [t for t in cond if t >= frame_idx]
    chosen: list[int] = []
    if before:
        chosen.append(max(before))
    if after:
        chosen.append(min(after))
    rest = sorted((t for t in cond if t not in chosen), key=lambda t: abs(t - frame_idx))
    chosen += rest[:limit - len(chosen)]
    selected = {t: cond[t] for t in chosen}
    return selected, {t: out for t, out in cond.items() if t not in selected}


def memory_frames(frame_idx: int, reverse: bool, p: MemoryParams) -> list[int]:
    """Tracked frames whose spatial memory a step reads, farthest first (temporal slots 1 … num_maskmem-1)."""
    step = 1 if reverse else -1
    r = p.stride
    if reverse:
        nearest_strided = -(-(frame_idx + 2) // r) * r
    else:
        nearest_strided = ((frame_idx - 2) // r) * r
    frames = []
    for slot in range(1, p.num_maskmem):
        back = p.num_maskmem - slot
        frames.append(frame_idx + step if back == 1 else nearest_strided + step * (back - 2) * r)
    return frames


def pointer_frames(frame_idx: int, reverse: bool, num_frames: int, p: MemoryParams) -> list[int]:
    """Tracked frames whose object pointer a step reads, nearest first (stops at the video border)."""
    step = 1 if reverse else -1
    frames = []
    for dist in range(1, min(num_frames, p.max_obj_ptrs)):
        t = frame_idx + step * dist
        if t < 0 or t >= num_frames:
            break
        frames.append(t)
    return frames


def plan_memory(obj: ObjectState, frame_idx: int, reverse: bool, num_frames: int, p: MemoryParams) -> MemoryPlan:
    """The memories, temporal slots, pointers and pointer offsets of ``obj`` for a non-initial step at ``frame_idx``."""
    selected, unselected = split_cond_frames(frame_idx, obj.cond, p.max_cond_frames)
    memories = list(selected.values())
    num_cond = len(memories)
    tpos = [p.num_maskmem - 1] * num_cond
    for slot, t in enumerate(memory_frames(frame_idx, reverse, p), start=1):
        out = obj.non_cond.get(t) or unselected.get(t)
        if out is not None:
            memories.append(out)
            tpos.append(p.num_maskmem - 1 - slot)

    sign = -1 if reverse else 1
    pointers, offsets = [], []
    for t, out in selected.items():
        if (t >= frame_idx) if reverse else (t <= frame_idx):
            pointers.append(out)
            offsets.append((frame_idx - t) * sign if p.signed_ptr_offsets else abs(frame_idx - t))
    num_cond_ptrs = len(pointers)
    for dist, t in enumerate(pointer_frames(frame_idx, reverse, num_frames, p), start=1):
        out = obj.non_cond.get(t) or unselected.get(t)
        if out is not None:
            pointers.append(out)
            offsets.append(dist)
    return MemoryPlan(memories, tpos, pointers, offsets, num_cond, num_cond_ptrs)


def frames_to_keep(frame_idx: int, reverse: bool, num_frames: int, p: MemoryParams) -> tuple[set[int], set[int]]:
    """(frames whose pointer, frames whose spatial memory) a step at ``frame_idx`` or any later step of the same pass
    may read from earlier steps; windows only slide forward, so the next step's window covers all later ones."""
    return set(pointer_frames(frame_idx, reverse, num_frames, p)), set(memory_frames(frame_idx, reverse, p))


def prune(obj: ObjectState, keep_ptr: set[int], keep_mem: set[int]) -> None:
    """Drop tracked outputs no later step can read: whole entries outside ``keep_ptr | keep_mem``, spatial memories
    outside ``keep_mem``. Emitted masks are never kept here (the caller stores none)."""
    for t in [t for t in obj.non_cond if t not in keep_ptr and t not in keep_mem]:
        del obj.non_cond[t]
    for t, out in obj.non_cond.items():
        if t not in keep_mem:
            out.memory = None
