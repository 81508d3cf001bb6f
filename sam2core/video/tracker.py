"""Model steps of the video engine: image encoding, prompt steps for one object, and a tracking step for the objects
of a frame, all under the session's compute dtype.

A tracking step sees every object's memory in fixed slots: ``c`` conditioning slots, then one per temporal slot
(``num_maskmem - 1``), then ``c + max_obj_ptrs - 1`` pointer slots (conditioning pointers, then one per distance).
Empty slots are zeros, hidden from attention by a validity mask, so the keys have the same length whatever the
object's history and the masks equal those of attending to the filled slots alone. Objects are stacked along the
batch dimension in chunks of at most ``max_objects_per_batch`` (one memory-attention, mask-decoder and
memory-encoder call per chunk); the memory-independent start of memory attention is computed once per frame.

With static shapes (``compile``) a frame's objects go through the compiled step in buckets (1, 2, 4, … the cap;
``split_objects``: the last call padded by repeating its first object, at most 25% padded rows), each call of one
``Layout``. Until every object fills every slot the calls are masked, with ``c`` the most conditioning frames an
object of the pass has; from then on (steady state: about ``max_obj_ptrs`` frames into a pass) they have exactly the
filled slots and no mask, the shapes of the official arithmetic, so SDPA may pick flash attention. A frame's calls
form its ``Pattern``; ``pass_patterns`` lists those a pass can meet and ``warm_up`` runs each once (with CUDA graphs:
records its call path) before the pass, so nothing compiles or records while it runs. Eager steps (CPU by default)
drop instead the slots no object of the chunk fills, and pass no mask when every remaining slot is filled (the
official predictor's arithmetic, with no padded keys and no masking cost).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sam2core.modeling.sam2 import ImageFeatures, SAM2Model

from .compile import compiled, compute_weights, object_buckets, shared, split_objects
from .memory import (MemoryParams, MemoryPlan, cond_count, memory_frames, plan_memory, pointer_frames,
                     split_cond_frames)
from .postprocess import fill_holes
from .state import FrameOutput, ObjectState, PointPrompt

MEMORY_DTYPE = torch.bfloat16  # spatial memories are stored in bf16, as the official predictor does
PREV_MASK_CLAMP = 32.0


def slot_layout(num_cond: int, num_maskmem: int) -> tuple[int, ...]:
    """Rows of the temporal memory code of the memory slots: ``num_cond`` conditioning slots, then temporal slots
    1 … ``num_maskmem - 1`` (nearest last)."""
    return (num_maskmem - 1,) * num_cond + tuple(range(num_maskmem - 2, -1, -1))


def stored_memory(memory: torch.Tensor) -> torch.Tensor:
    """A memory as it is stored: bf16, contiguous (the memory encoder may leave channels-last strides), so every
    stacked memory batch has one layout."""
    return memory.to(MEMORY_DTYPE, memory_format=torch.contiguous_format)


def unpack_slots(packed: torch.Tensor, b: int, s: int, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(memory_valid [b,s], ptr_valid [b,p], normalised pointer offsets [b,p]) from one packed float vector."""
    memory_valid = packed[:b * s].view(b, s) > 0
    ptr_valid = packed[b * s:b * (s + p)].view(b, p) > 0
    return memory_valid, ptr_valid, packed[b * (s + p):].view(b, p)


class Slots(NamedTuple):
    """A batch's memory-slot inputs (see ``Tracker._slots``)."""

    memory: torch.Tensor  # [b, s, 64, h, w] bf16
    packed: torch.Tensor  # validity of memories and pointers, then pointer offsets (normalised), on the device
    ptrs: torch.Tensor  # [b, p, 256]
    tpos: tuple[int, ...]  # temporal code row of each memory slot
    masked: bool  # some slot is empty: attention needs the key mask


class Layout(NamedTuple):
    """The shape of one compiled tracking call: ``rows`` objects, ``num_cond`` conditioning memory slots and
    ``num_cond_ptrs`` conditioning pointer slots (then ``num_maskmem - 1`` temporal slots and one pointer slot per
    distance); ``masked``: empty slots are hidden by a key mask, else every slot is filled and attention runs with
    no mask (flash attention's case)."""

    rows: int
    num_cond: int
    num_cond_ptrs: int
    masked: bool


Pattern = tuple[Layout, ...]  # the compiled tracking calls of one frame, in order (after its prefix)


def _ptr_slot(plan: MemoryPlan, i: int, cond_ptr_slots: int) -> int:
    """Pointer slot of a plan's ``i``-th pointer: conditioning pointers first, then one slot per distance."""
    return i if i < plan.num_cond_ptrs else cond_ptr_slots + plan.offsets[i] - 1


def _cond_counts(frames: Collection[int], frame_idx: int, reverse: bool, p: MemoryParams) -> tuple[int, int]:
    """(conditioning memories, conditioning pointers) of a step at ``frame_idx`` of an object conditioned on
    ``frames`` (as ``plan_memory`` selects them)."""
    selected, _ = split_cond_frames(frame_idx, dict.fromkeys(frames), p.max_cond_frames)
    return len(selected), sum(1 for t in selected if (t >= frame_idx if reverse else t <= frame_idx))


class TrackingStep(nn.Module):
    """One tracking step for a batch of objects of one frame, from fixed-slot inputs (the graph ``compile``
    compiles): memory attention, mask decoder (multimask), memory encoder. Holds the model, changes nothing in it."""

    def __init__(self, model: nn.Module, stability_fallback: bool) -> None:
        super().__init__()
        self.model = model
        self.stability_fallback = stability_fallback

    def forward(self, prefix_x: torch.Tensor, prefix_q: torch.Tensor, feat: torch.Tensor, high_res_0: torch.Tensor,
                high_res_1: torch.Tensor, memory: torch.Tensor, packed: torch.Tensor, ptrs: torch.Tensor,
                tpos: tuple[int, ...] | None = None, masked: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(low-res logits [b,1,S/4,S/4], pointers [b,256], scores [b,1], bf16 memories [b,64,h,w]) of ``b`` objects
        with memories ``memory [b,s,64,h,w]`` and pointers ``ptrs [b,p,256]``; frame inputs have batch 1. ``tpos``:
        the slots' temporal codes (default: every slot, ``slot_layout``); ``masked=False`` when every slot is filled
        (no key mask at all)."""
        b, s = memory.shape[:2]
        p = ptrs.shape[1]
        model = self.model
        num_maskmem = model.maskmem_tpos_enc.shape[0]
        memory_valid, ptr_valid, offsets = unpack_slots(packed, b, s, p)
        if tpos is None:
            tpos = slot_layout(s - (num_maskmem - 1), num_maskmem)
        if not masked:
            memory_valid = ptr_valid = None
        pix = model.attend_memory_slots((prefix_x, prefix_q), memory, memory_valid, tpos, ptrs, offsets, ptr_valid)
        high_res = (high_res_0.expand(b, -1, -1, -1), high_res_1.expand(b, -1, -1, -1))
        out = model.decode_masks(pix, high_res, None, None, None, multimask=True,
                                 stability_fallback=self.stability_fallback)
        mem, _ = model.encode_memory(feat.expand(b, -1, -1, -1), out.high_res, out.object_score_logits,
                                     binarize=False)
        return out.low_res, out.obj_ptr, out.object_score_logits, stored_memory(mem)


class EngineSteps:
    """The callables a tracker runs for one model, dtype and switch set: ``encode_image``, ``memory_prefix`` and
    ``track`` (a ``TrackingStep``), eager or compiled; shared by the sessions on that model."""

    def __init__(self, model: nn.Module, stability_fallback: bool, compile_steps: bool) -> None:
        self.step = TrackingStep(model, stability_fallback)
        self.compiled = compile_steps
        self.cuda_graphs = compile_steps and model.device.type == "cuda"
        self.warmed: set[Hashable] = set()  # the shape sets warmed up (``Tracker.warm_up`` keys)
        if compile_steps:
            # the encoder runs on its own thread and stream: no CUDA graphs there (its kernels are large anyway)
            self.encode_image = compiled(model.encode_image, cuda_graphs=False)
            self.memory_prefix = compiled(model.memory_prefix, self.cuda_graphs)
            self.track = compiled(self.step, self.cuda_graphs)
        else:
            self.encode_image = model.encode_image
            self.memory_prefix = model.memory_prefix
            self.track = self.step


class Tracker:
    """Runs the model for the session; ``model`` is a ``SAM2Model``, ``feats`` arguments its ``ImageFeatures``.

    ``max_batch``: objects per tracking call (``SessionOptions.max_objects_per_batch``); ``static``: fixed shapes and
    compiled entry points (``SessionOptions.compile``); ``encoder_batch``: frames per image-encoder call.
    """

    def __init__(self, model: SAM2Model, params: MemoryParams, fill_hole_area: int, apply_postprocessing: bool,
                 dtype: torch.dtype = torch.float32, max_batch: int = 1, static: bool = False,
                 encoder_batch: int = 1) -> None:
        self.model = compute_weights(model, dtype)
        self.params = params
        self.fill_hole_area = fill_hole_area
        self.apply_postprocessing = apply_postprocessing
        self.dtype = dtype
        self.device = next(model.parameters()).device
        self.max_batch = max_batch
        self.static = static
        self.encoder_batch = encoder_batch
        self.buckets = object_buckets(max_batch)
        self.steps: EngineSteps = shared(self.model, ("steps", apply_postprocessing, static),
                                         lambda: EngineSteps(self.model, apply_postprocessing, static))
        cfg = model.config
        side = cfg.feat_size
        self._zero_memory = torch.zeros(1, cfg.mem_dim, side, side, dtype=MEMORY_DTYPE, device=self.device)
        self._zero_ptr = torch.zeros(1, cfg.d_model, device=self.device)
        self._frame_pos: torch.Tensor | None = None

    def _pos(self, pos: torch.Tensor) -> torch.Tensor:
        """The frame position code is the same for every frame (a broadcast view whose strides depend on the encoder
        batch): one contiguous copy serves every frame, so the compiled prefix always sees one layout."""
        if self._frame_pos is None or self._frame_pos.dtype != pos.dtype:
            self._frame_pos = pos[:1].contiguous()
        return self._frame_pos

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context every model step runs in: autocast to the compute dtype (nothing for float32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def encode(self, frames: torch.Tensor) -> ImageFeatures:
        """Image features of frames [B,H,W,3] uint8 on the model device (may run on the encoder thread). With static
        shapes a batch between 1 and ``encoder_batch`` frames is padded to ``encoder_batch``."""
        with torch.inference_mode(), self.autocast():
            images = self.model.preprocess(frames)
            n = images.shape[0]
            if not self.static:
                return self.steps.encode_image(images)
            if 1 < n < self.encoder_batch:
                images = torch.cat([images, images[-1:].expand(self.encoder_batch - n, -1, -1, -1)])
            feats = self.steps.encode_image(images.contiguous())
            return feats.index(slice(0, n)) if feats.feat.shape[0] != n else feats

    def _finish_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        return fill_holes(low_res, self.fill_hole_area) if self.fill_hole_area > 0 else low_res

    def _slots(self, plans: list[MemoryPlan], num_frames: int, layout: Layout | None = None) -> Slots:
        """Slot inputs of a batch: memories [b,s,64,h,w], the packed validity and pointer offsets (one host vector,
        one copy to the device), pointers [b,p,256], the slots' temporal codes and whether any slot is empty.
        With a ``layout`` (static shapes) the slots and rows are the layout's (padded rows repeat the first object);
        without, only the slots some object of the batch fills (usually all of them: no mask)."""
        p = self.params
        if layout is not None:
            num_cond, cond_ptrs, size = layout.num_cond, layout.num_cond_ptrs, layout.rows
            temporal = tuple(range(p.num_maskmem - 2, -1, -1))  # nearest last
            ptr_cols = range(cond_ptrs + p.max_obj_ptrs - 1)
        else:
            num_cond = cond_ptrs = max(plan.num_cond for plan in plans)
            size = len(plans)
            temporal = tuple(sorted({t for plan in plans for t in plan.tpos[plan.num_cond:]}, reverse=True))
            ptr_cols = sorted({_ptr_slot(plan, i, cond_ptrs) for plan in plans for i in range(len(plan.pointers))})
        column = {t: num_cond + k for k, t in enumerate(temporal)}
        ptr_column = {c: k for k, c in enumerate(ptr_cols)}
        s, n_ptr = num_cond + len(temporal), max(len(ptr_column), 1)
        memories = [self._zero_memory] * (size * s)
        pointers = [self._zero_ptr] * (size * n_ptr)
        packed = [0.0] * (size * (s + 2 * n_ptr))
        ptr_valid, ptr_offsets = size * s, size * (s + n_ptr)
        filled = 0
        for row in range(size):
            plan = plans[row] if row < len(plans) else plans[0]
            for i, out in enumerate(plan.memories):
                slot = row * s + (i if i < plan.num_cond else column[plan.tpos[i]])
                memories[slot] = out.memory
                packed[slot] = 1.0
            for i, out in enumerate(plan.pointers):
                slot = row * n_ptr + ptr_column[_ptr_slot(plan, i, cond_ptrs)]
                pointers[slot] = out.obj_ptr
                packed[ptr_valid + slot] = 1.0
                packed[ptr_offsets + slot] = float(plan.offsets[i])
            filled += len(plan.memories) + len(plan.pointers)
        # pinned on CUDA: the copy below is then truly asynchronous (no wait for the stream)
        host = torch.tensor(packed, dtype=torch.float32, pin_memory=self.device.type == "cuda")
        host[ptr_offsets:].div_(max(min(num_frames, p.max_obj_ptrs) - 1, 1))
        memory = torch.cat(memories).view(size, s, *memories[0].shape[1:])
        ptrs = torch.cat(pointers).float().view(size, n_ptr, -1)
        tpos = (p.num_maskmem - 1,) * num_cond + temporal
        masked = layout.masked if layout is not None else filled < size * (s + n_ptr)
        return Slots(memory, host.to(self.device, non_blocking=True), ptrs, tpos, masked)

    def _attend(self, prefix: tuple[torch.Tensor, torch.Tensor], plans: list[MemoryPlan], num_frames: int) -> torch.Tensor:
        """Memory-conditioned features [B,256,h,w] of objects from the frame's ``memory_prefix`` (eager)."""
        slots = self._slots(plans, num_frames)
        b, s, p = slots.memory.shape[0], slots.memory.shape[1], slots.ptrs.shape[1]
        memory_valid, ptr_valid, offsets = unpack_slots(slots.packed, b, s, p)
        if not slots.masked:
            memory_valid = ptr_valid = None
        return self.model.attend_memory_slots(prefix, slots.memory, memory_valid, slots.tpos, slots.ptrs, offsets,
                                              ptr_valid)

    def track(self, feats: ImageFeatures, objects: list[ObjectState], frame_idx: int, reverse: bool, num_frames: int,
              keep_masks: bool, num_cond: int) -> tuple[torch.Tensor, list[FrameOutput]]:
        """One propagation step for ``objects`` on a frame none of them is conditioned on (``num_cond``: the pass's
        ``pass_cond``, the conditioning slots of masked compiled calls).

        Returns the (hole-filled) low-res logits [n,1,S/4,S/4] in the order of ``objects`` and their new outputs
        (memory encoded; ``low_res`` kept only when ``keep_masks``).
        """
        plans = [plan_memory(obj, frame_idx, reverse, num_frames, self.params) for obj in objects]
        calls: list[tuple[Slots, int]] = []
        if self.static:
            start = 0
            for layout in self.frame_pattern(plans, num_cond):
                chunk = plans[start:start + layout.rows]
                calls.append((self._slots(chunk, num_frames, layout), len(chunk)))
                start += len(chunk)
        else:
            for start in range(0, len(plans), self.max_batch):
                chunk = plans[start:start + self.max_batch]
                calls.append((self._slots(chunk, num_frames), len(chunk)))
        low_res: list[torch.Tensor] = []
        outputs: list[FrameOutput] = []
        for (_, n), (low, ptr, score, mem) in zip(calls, self._run_frame(feats, calls)):
            masks = self._finish_masks(low)
            low_res.append(masks[:n])
            for j in range(n):
                outputs.append(FrameOutput(low_res=masks[j:j + 1] if keep_masks else None, obj_ptr=ptr[j:j + 1],
                                           score=score[j:j + 1], memory=mem[j:j + 1]))
        stacked = low_res[0] if len(low_res) == 1 else torch.cat(low_res)
        return stacked, outputs

    def _run_frame(self, feats: ImageFeatures, calls: list[tuple[Slots, int]]) -> list[tuple[torch.Tensor, ...]]:
        """The frame prefix, then one tracking call per (slot inputs, real rows): the call sequence ``warm_up`` runs
        for each pattern. Returns each call's (low-res logits, pointers, scores, bf16 memories)."""
        steps = self.steps
        if steps.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        prefix = steps.memory_prefix(feats.feat, self._pos(feats.pos))
        frame_inputs = (prefix[0], prefix[1], feats.feat, feats.high_res[0], feats.high_res[1])
        outs = []
        for slots, n in calls:
            out = steps.track(*frame_inputs, slots.memory, slots.packed, slots.ptrs, slots.tpos, slots.masked)
            if steps.cuda_graphs:  # graph outputs are overwritten by the next replay; these are kept
                out = tuple(t[:n].clone() for t in out)
            outs.append(out)
        return outs

    def frame_pattern(self, plans: list[MemoryPlan], num_cond: int) -> Pattern:
        """The compiled calls of a frame whose objects attend to ``plans``: buckets by ``split_objects``; without a
        mask when every object fills every slot of one layout (steady state), else masked with ``num_cond``
        conditioning slots."""
        p = self.params
        split = split_objects(len(plans), self.buckets)
        kinds = {(plan.num_cond, plan.num_cond_ptrs) for plan in plans}
        if len(kinds) == 1 and all(len(plan.memories) == plan.num_cond + p.num_maskmem - 1
                                   and len(plan.pointers) == plan.num_cond_ptrs + p.max_obj_ptrs - 1
                                   for plan in plans):
            c, cp = kinds.pop()
            return tuple(Layout(b, c, cp, False) for b in split)
        return tuple(Layout(b, num_cond, num_cond, True) for b in split)

    def pass_cond(self, cond_frames: Sequence[Collection[int]]) -> int:
        """Conditioning slots of the masked calls of a pass whose objects are conditioned on ``cond_frames`` (one
        collection per object): the most any of them attends to."""
        return max((cond_count(len(frames), self.params) for frames in cond_frames), default=1)

    def pass_patterns(self, cond_frames: Sequence[Collection[int]], order: Sequence[int], reverse: bool,
                      num_frames: int) -> set[Pattern]:
        """Every pattern ``frame_pattern`` can give on a pass over ``order`` of objects conditioned on
        ``cond_frames``: on each frame the masked one of the objects tracked there, and the unmasked one where
        these share their conditioning counts and the frame's memory and pointer windows lie inside the video.
        Empty without static shapes (nothing to warm up)."""
        if not self.static:
            return set()
        p = self.params
        num_cond = self.pass_cond(cond_frames)
        groups = Counter(frozenset(frames) for frames in cond_frames)
        window = p.num_maskmem - 1 + p.max_obj_ptrs - 1
        patterns: set[Pattern] = set()
        for t in order:
            tracked = [frames for frames in groups if t not in frames]
            if not tracked:
                continue
            split = split_objects(sum(groups[frames] for frames in tracked), self.buckets)
            patterns.add(tuple(Layout(b, num_cond, num_cond, True) for b in split))
            reads = memory_frames(t, reverse, p) + pointer_frames(t, reverse, num_frames, p)
            kinds = {_cond_counts(frames, t, reverse, p) for frames in tracked}
            if len(kinds) == 1 and len(reads) == window and all(0 <= f < num_frames for f in reads):
                c, cp = kinds.pop()
                patterns.add(tuple(Layout(b, c, cp, False) for b in split))
        return patterns

    def warm_up(self, patterns: Iterable[Pattern] = ()) -> None:
        """Run the image encoder (at 1 and ``encoder_batch`` frames) and every frame pattern not run yet (its prefix
        and tracking calls, as ``track`` makes them) once, on this thread, so that nothing compiles during a pass;
        with CUDA graphs each pattern runs twice, recording its call path. Done once per pattern for the sessions
        on a model; the session calls it when it is built (with a prompt plan) and each pass before its first
        frame (before the encoder thread starts)."""
        if not self.static:
            return
        warmed = self.steps.warmed
        encoder_key = ("encoder", self.dtype, self.encoder_batch)
        todo = sorted(pattern for pattern in set(patterns) if (self.dtype, pattern) not in warmed)
        if encoder_key in warmed and not todo:
            return
        size = self.model.config.image_size
        frames = torch.zeros(self.encoder_batch, size, size, 3, dtype=torch.uint8, device=self.device)
        with torch.inference_mode():
            if self.encoder_batch > 1 and encoder_key not in warmed:
                self.encode(frames)
            feats = self.encode(frames[:1])
            for pattern in todo:
                # CUDA graphs are recorded on a call path's second run (the first warms each function up)
                for _ in range(2 if self.steps.cuda_graphs else 1):
                    with self.autocast():
                        self._run_frame(feats, [(self._blank_slots(layout), layout.rows) for layout in pattern])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        warmed.update([encoder_key, *((self.dtype, pattern) for pattern in todo)])

    def _blank_slots(self, layout: Layout) -> Slots:
        """Warm-up inputs of one ``layout``: zero memories and pointers, every slot marked filled."""
        p = self.params
        b, s = layout.rows, layout.num_cond + p.num_maskmem - 1
        n_ptr = layout.num_cond_ptrs + p.max_obj_ptrs - 1
        memory = self._zero_memory.expand(b * s, -1, -1, -1).contiguous()
        packed = torch.zeros(b * (s + 2 * n_ptr))
        packed[:b * (s + n_ptr)] = 1.0
        ptrs = self._zero_ptr.expand(b * n_ptr, -1).contiguous()
        return Slots(memory.view(b, s, *memory.shape[1:]), packed.to(self.device), ptrs.view(b, n_ptr, -1),
                     slot_layout(layout.num_cond, p.num_maskmem), layout.masked)

    def points_step(self, feats: ImageFeatures, obj: ObjectState, frame_idx: int, prompt: PointPrompt,
                    prev_logits: torch.Tensor | None, initial: bool, reverse: bool, num_frames: int) -> FrameOutput:
        """Decode one object's clicks: an initial frame uses no memory; a correction on a tracked frame attends to
        the object's memory and also feeds the previous logits (clamped) as a mask prompt."""
        model = self.model
        if initial:
            pix = model.add_no_memory(feats.feat)
        else:
            plan = plan_memory(obj, frame_idx, reverse, num_frames, self.params)
            pix = self._attend(model.memory_prefix(feats.feat, feats.pos), [plan], num_frames)
        if prev_logits is not None:
            prev_logits = prev_logits.clamp(-PREV_MASK_CLAMP, PREV_MASK_CLAMP)
        out = model.decode_masks(pix, feats.high_res, prompt.coords, prompt.labels, prev_logits,
                                 multimask=prompt.labels.shape[1] <= 1, stability_fallback=self.apply_postprocessing)
        return FrameOutput(low_res=self._finish_masks(out.low_res), obj_ptr=out.obj_ptr,
                           score=out.object_score_logits)

    def mask_step(self, feats: ImageFeatures, mask: torch.Tensor) -> FrameOutput:
        """A mask prompt [1,1,S,S] (0/1) is taken as the output itself; the pointer comes from the raw features."""
        out = self.model.mask_as_output(feats.feat, feats.high_res, mask)
        return FrameOutput(low_res=self._finish_masks(out.low_res), obj_ptr=out.obj_ptr,
                           score=out.object_score_logits)

    def encode_prompt_memories(self, feats: ImageFeatures, outputs: list[FrameOutput]) -> None:
        """Memories of prompted outputs on one frame, from their stored low-res logits upsampled to S×S (batched)."""
        low = outputs[0].low_res if len(outputs) == 1 else torch.cat([o.low_res for o in outputs])
        size = self.model.config.image_size
        high = F.interpolate(low.to(self.device), size=(size, size), mode="bilinear", align_corners=False)
        scores = torch.cat([o.score for o in outputs])
        memory, _ = self.model.encode_memory(feats.expand(len(outputs)).feat, high, scores,
                                             binarize=self.apply_postprocessing)
        memory = stored_memory(memory)
        for j, out in enumerate(outputs):
            out.memory = memory[j:j + 1]
