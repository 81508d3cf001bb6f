"""SAM2Model: the SAM 2 / 2.1 components under the official checkpoint key tree, with single-frame operations.

Every method works on a batch along dim 0 (frames or objects) and does no tracking bookkeeping: choosing which
memories and pointers a frame sees is the video engine's job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam2core.config import ModelConfig
from sam2core.modeling.common import MLP
from sam2core.modeling.hiera import Hiera
from sam2core.modeling.image_encoder import FpnNeck, ImageEncoder
from sam2core.modeling.mask_decoder import MaskDecoder
from sam2core.modeling.memory_attention import MemoryAttention
from sam2core.modeling.memory_encoder import MemoryEncoder
from sam2core.modeling.position_encoding import sine_1d_encoding, sine_grid_encoding
from sam2core.modeling.prompt_encoder import PromptEncoder
from sam2core.modeling.resize import pil_bicubic_resize

NO_OBJECT_LOGIT = -1024.0  # logits of an absent object (and of an object without an output on a frame)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_PROMPT_SCALE, MASK_PROMPT_BIAS = 20.0, -10.0  # binary mask -> logits when a mask prompt is the output
STABILITY_DELTA, STABILITY_THRESH = 0.05, 0.98


@dataclass
class ImageFeatures:
    """Backbone output of a batch of frames (h = w = S/16)."""

    feat: torch.Tensor  # [B, 256, h, w] raw stride-16 features
    pos: torch.Tensor  # [B, 256, h, w] their sine position code
    high_res: tuple[torch.Tensor, torch.Tensor]  # ([B, 32, 4h, 4w], [B, 64, 2h, 2w]) after conv_s0 / conv_s1

    def index(self, i: int | slice | torch.Tensor) -> "ImageFeatures":
        """Features of some frames of the batch (an int keeps the batch dim)."""
        sel = slice(i, i + 1) if isinstance(i, int) else i
        return ImageFeatures(self.feat[sel], self.pos[sel], (self.high_res[0][sel], self.high_res[1][sel]))

    def expand(self, n: int) -> "ImageFeatures":
        """Broadcast one frame's features to ``n`` objects (views, no copy)."""
        return ImageFeatures(
            self.feat.expand(n, -1, -1, -1),
            self.pos.expand(n, -1, -1, -1),
            (self.high_res[0].expand(n, -1, -1, -1), self.high_res[1].expand(n, -1, -1, -1)),
        )


@dataclass
class MaskOutput:
    """Decoded (or mask-prompted) result for a batch of objects."""

    low_res: torch.Tensor  # [B, 1, 4h, 4w] chosen mask logits (fp32)
    high_res: torch.Tensor  # [B, 1, S, S] the same upsampled to the model input
    iou: torch.Tensor  # [B, 1] predicted IoU of the chosen mask
    obj_ptr: torch.Tensor  # [B, 256] object pointer
    object_score_logits: torch.Tensor  # [B, 1] > 0 means the object is present
    candidates: torch.Tensor | None = None  # [B, M, 4h, 4w] every returned candidate (M = 3 multimask, else 1)
    candidate_iou: torch.Tensor | None = None  # [B, M]


class SAM2Model(nn.Module):
    """SAM 2 / SAM 2.1 with the official parameter names, built from a :class:`ModelConfig`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d, mem, side = config.d_model, config.mem_dim, config.feat_size
        trunk = Hiera(config.trunk)
        self.image_encoder = ImageEncoder(trunk, FpnNeck(d, trunk.channel_list))
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.memory_attention = MemoryAttention(d, mem, side)
        self.memory_encoder = MemoryEncoder(d, mem)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, mem))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, d))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, d))
        if config.no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem))
        self.sam_prompt_encoder = PromptEncoder(d, side, config.image_size)
        self.sam_mask_decoder = MaskDecoder(d)
        self.obj_ptr_proj = MLP(d, d, d, 3)
        if config.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = nn.Linear(d, mem)
        self.register_buffer("feat_pos", sine_grid_encoding(side, side, d), persistent=False)
        self.register_buffer("memory_pos", sine_grid_encoding(side, side, mem), persistent=False)
        # the input normalisation lives on the model's device: preprocessing a frame copies nothing from the host
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random init of the free-standing embeddings (submodules keep their PyTorch defaults)."""
        for param in self.parameters(recurse=False):
            nn.init.trunc_normal_(param, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.no_obj_ptr.device

    @property
    def image_size(self) -> int:
        return self.config.image_size

    # ---- image ---------------------------------------------------------------------------------------------

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` frames -> normalised ``[B, 3, S, S]`` fp32 model input on the model's device.

        Pixel for pixel the official frame loader: Pillow's bicubic resize (no aspect preservation, reproduced by
        :func:`pil_bicubic_resize`), then ``/ 255`` and the ImageNet mean and std in fp32.
        """
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        size = self.config.image_size
        x = pil_bicubic_resize(x, (size, size)).float()
        return x.div_(255.0).sub_(self.pixel_mean).div_(self.pixel_std)

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Backbone features of ``[B, 3, S, S]`` images, high-resolution levels already projected for the decoder.

        Images are cast to the weights' dtype, so a model converted with ``.to(torch.bfloat16)`` takes fp32 input.
        """
        s4, s8, s16 = self.image_encoder(images.to(self.no_mem_embed.dtype))
        dec = self.sam_mask_decoder
        pos = self.feat_pos.to(s16.dtype).expand(s16.shape[0], -1, -1, -1)
        return ImageFeatures(feat=s16, pos=pos, high_res=(dec.conv_s0(s4), dec.conv_s1(s8)))

    # ---- SAM heads -----------------------------------------------------------------------------------------

    def decode_masks(
        self,
        feat: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_logits: torch.Tensor | None,
        multimask: bool,
        stability_fallback: bool = False,
    ) -> MaskOutput:
        """Run prompt encoder + mask decoder on (memory-conditioned) features and pick the output mask.

        ``points`` are pixels of the model input (0..S), labels 1/0/2/3. With ``multimask`` the candidate with
        the best predicted IoU wins; otherwise the single-mask output, or with ``stability_fallback`` the best
        multimask candidate when the single mask is unstable. Absent objects (score <= 0) get -1024 logits and
        the learned no-object pointer.
        """
        b = feat.shape[0]
        prompt = self.sam_prompt_encoder
        if points is None:
            points = feat.new_zeros(b, 1, 2, dtype=torch.float32)
            labels = torch.full((b, 1), -1, dtype=torch.int32, device=feat.device)
        sparse = prompt.embed_points(points, labels).to(feat.dtype)
        if mask_logits is None:
            dense = prompt.no_mask_dense(b)
        else:
            side = prompt.mask_size
            if mask_logits.shape[-2:] != (side, side):
                mask_logits = F.interpolate(mask_logits.float(), size=(side, side), mode="bilinear",
                                            align_corners=False, antialias=True)
            dense = prompt.embed_mask(mask_logits.to(feat.dtype))
        out = self.sam_mask_decoder(feat, prompt.dense_pe().to(feat.dtype), sparse, dense, high_res)

        if multimask:
            candidates, candidate_iou, tokens = out.masks[:, 1:], out.iou[:, 1:], out.mask_tokens[:, 1:]
        elif stability_fallback:
            candidates, candidate_iou = stable_or_best(out.masks, out.iou)
            tokens = out.mask_tokens[:, :1]
        else:
            candidates, candidate_iou, tokens = out.masks[:, :1], out.iou[:, :1], out.mask_tokens[:, :1]
        present = out.object_score_logits > 0
        candidates = torch.where(present[..., None, None], candidates, NO_OBJECT_LOGIT).float()
        best = candidate_iou.argmax(dim=1, keepdim=True)
        low_res = candidates.gather(1, best[..., None, None].expand(-1, -1, *candidates.shape[-2:]))
        token = tokens.gather(1, best[..., None].expand(-1, -1, tokens.shape[-1]))[:, 0]
        obj_ptr = self._gate_pointer(self.obj_ptr_proj(token), present)
        return MaskOutput(
            low_res=low_res,
            high_res=self._upsample(low_res),
            iou=candidate_iou.gather(1, best),
            obj_ptr=obj_ptr,
            object_score_logits=out.object_score_logits,
            candidates=candidates,
            candidate_iou=candidate_iou,
        )

    def mask_as_output(
        self, feat_raw: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor
    ) -> MaskOutput:
        """Turn a mask prompt ``[B, 1, S, S]`` directly into the output (logits +-10); the decoder only supplies
        the object pointer, prompted by the mask on the raw (memory-free) features."""
        binary = mask.float()
        high = binary * MASK_PROMPT_SCALE + MASK_PROMPT_BIAS
        low = F.interpolate(high, size=(high.shape[-2] // 4, high.shape[-1] // 4), mode="bilinear",
                            align_corners=False, antialias=True)
        decoded = self.decode_masks(feat_raw, high_res, None, None, self.mask_downsample(binary.to(feat_raw.dtype)),
                                    multimask=False)
        present = (binary.flatten(1) > 0).any(dim=1, keepdim=True)
        ones = binary.new_ones(binary.shape[0], 1)
        return MaskOutput(
            low_res=low,
            high_res=high,
            iou=ones,
            obj_ptr=self._gate_pointer(decoded.obj_ptr, present),
            object_score_logits=present.float() * MASK_PROMPT_SCALE + MASK_PROMPT_BIAS,
            candidates=low,
            candidate_iou=ones,
        )

    def _gate_pointer(self, obj_ptr: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Replace the pointer of absent objects by the learned no-object pointer."""
        weight = present.to(obj_ptr.dtype)
        return weight * obj_ptr + (1 - weight) * self.no_obj_ptr

    def _upsample(self, low_res: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        return F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)

    # ---- memory --------------------------------------------------------------------------------------------

    def encode_memory(
        self,
        feat_raw: torch.Tensor,
        mask_high_res_logits: torch.Tensor,
        object_score_logits: torch.Tensor,
        binarize: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory of a frame from its raw features and output mask logits ``[B, 1, S, S]``.

        The mask enters as ``sigmoid(logits)`` (or ``logits > 0`` when ``binarize``), scaled to +-10. On SAM 2.1
        an absent object (score <= 0) adds the learned no-object embedding. Returns (features, position code),
        both ``[B, 64, h, w]`` in the compute dtype.
        """
        cfg = self.config
        probs = (mask_high_res_logits > 0).float() if binarize else mask_high_res_logits.float().sigmoid()
        mask_input = probs * cfg.sigmoid_scale_for_mem_enc + cfg.sigmoid_bias_for_mem_enc
        memory = self.memory_encoder(feat_raw, mask_input.to(feat_raw.dtype))
        if cfg.no_obj_embed_spatial:
            absent = (object_score_logits <= 0).to(memory.dtype)
            memory = memory + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        pos = self.memory_pos.to(memory.dtype).expand(memory.shape[0], -1, -1, -1)
        return memory, pos

    def add_no_memory(self, feat: torch.Tensor) -> torch.Tensor:
        """Features of an initial conditioning frame: raw features plus the learned no-memory embedding."""
        return feat + self.no_mem_embed.view(1, -1, 1, 1)

    def pointer_tokens(
        self, obj_ptrs: torch.Tensor, ptr_offsets: torch.Tensor, num_frames: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Object pointers ``[B, P, C]`` -> memory tokens ``[B, P*C/mem, mem]`` and their position code.

        SAM 2.1 codes the signed frame offset, normalised by the pointer window ``min(num_frames, 16) - 1``, with
        a 1-D sine code projected to ``mem`` channels; SAM 2.0 uses no temporal code.
        """
        cfg = self.config
        b, p, c = obj_ptrs.shape
        split = c // cfg.mem_dim
        if cfg.add_tpos_enc_to_obj_ptrs:
            span = min(num_frames, cfg.max_obj_ptrs_in_encoder) - 1
            code = sine_1d_encoding(ptr_offsets.to(obj_ptrs.device) / span, c).to(obj_ptrs.dtype)
            tpos = self.obj_ptr_tpos_proj(code)
        else:
            tpos = obj_ptrs.new_zeros(p, cfg.mem_dim)
        tokens = obj_ptrs.reshape(b, p * split, cfg.mem_dim)
        return tokens, tpos.repeat_interleave(split, dim=0).expand(b, -1, -1)

    def attend_memory(
        self,
        feat: torch.Tensor,
        pos: torch.Tensor,
        memories: list[torch.Tensor],
        memory_tpos: list[int],
        obj_ptrs: torch.Tensor | None,
        ptr_offsets: torch.Tensor | None,
        num_frames: int,
    ) -> torch.Tensor:
        """Condition raw features ``[B, C, h, w]`` on spatial memories and object pointers.

        ``memories[i]`` is ``[B, 64, h, w]`` (any float dtype; cast to the compute dtype) and ``memory_tpos[i]``
        its row of ``maskmem_tpos_enc``. ``obj_ptrs [B, P, C]`` with signed frame offsets ``ptr_offsets [P]``.
        """
        return self.attend_memory_from_prefix(self.memory_prefix(feat, pos), memories, memory_tpos, obj_ptrs,
                                              ptr_offsets, num_frames)

    def memory_prefix(self, feat: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The part of ``attend_memory`` that only depends on the frame's features ``[B, C, h, w]``: with B = 1,
        compute it once per frame and pass it to ``attend_memory_from_prefix`` for every object (or batch)."""
        tokens = feat.flatten(2).transpose(1, 2)
        return self.memory_attention.shared_prefix(tokens, pos.flatten(2).transpose(1, 2).to(feat.dtype))

    def attend_memory_from_prefix(
        self,
        prefix: tuple[torch.Tensor, torch.Tensor],
        memories: list[torch.Tensor],
        memory_tpos: list[int],
        obj_ptrs: torch.Tensor | None,
        ptr_offsets: torch.Tensor | None,
        num_frames: int,
    ) -> torch.Tensor:
        """``attend_memory`` of the frame ``prefix`` belongs to, for the batch of objects of ``memories``."""
        memory, memory_pos, num_ptr_tokens = self._memory_tokens(memories, memory_tpos, obj_ptrs, ptr_offsets,
                                                                 num_frames, prefix[0].dtype)
        out = self.memory_attention.forward_from_prefix(prefix, memory, memory_pos, num_ptr_tokens)
        side = self.config.feat_size
        return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)

    def attend_memory_slots(
        self,
        prefix: tuple[torch.Tensor, torch.Tensor],
        memory: torch.Tensor,
        memory_valid: torch.Tensor | None,
        memory_tpos: tuple[int, ...],
        obj_ptrs: torch.Tensor,
        ptr_offsets: torch.Tensor,
        ptr_valid: torch.Tensor | None,
    ) -> torch.Tensor:
        """``attend_memory_from_prefix`` with shapes that do not depend on how full the memory is: spatial memories
        ``memory [B, S, mem, h, w]`` in S slots (slot i takes row ``memory_tpos[i]`` of ``maskmem_tpos_enc``), object
        pointers ``obj_ptrs [B, P, C]`` with their offsets already divided by the pointer window ``ptr_offsets
        [B, P]``; ``memory_valid [B, S]`` and ``ptr_valid [B, P]`` (bool) mark the filled slots. Empty slots are
        hidden from attention, so the result is the attention of the filled ones alone; ``None`` for both when every
        slot is filled (no mask)."""
        cfg = self.config
        dtype = prefix[0].dtype
        b, s, _, h, w = memory.shape
        p, c = obj_ptrs.shape[1:]
        split = c // cfg.mem_dim
        tokens = memory.to(dtype).flatten(3).transpose(2, 3).reshape(b, s * h * w, cfg.mem_dim)
        mem_pos = self._memory_pos(dtype)
        tpos = torch.stack([self.maskmem_tpos_enc[t].view(1, -1) for t in memory_tpos]).to(dtype)
        positions = (mem_pos[None] + tpos).reshape(1, s * h * w, cfg.mem_dim).expand(b, -1, -1)
        ptr_tokens = obj_ptrs.to(dtype).reshape(b, p * split, cfg.mem_dim)
        if cfg.add_tpos_enc_to_obj_ptrs:
            code = sine_1d_encoding(ptr_offsets.reshape(-1), c).to(dtype).view(b, p, c)
            ptr_pos = self.obj_ptr_tpos_proj(code).repeat_interleave(split, dim=1)
        else:
            ptr_pos = ptr_tokens.new_zeros(b, p * split, cfg.mem_dim)
        key_mask = None
        if memory_valid is not None:
            key_mask = torch.cat((memory_valid.repeat_interleave(h * w, dim=1),
                                  ptr_valid.repeat_interleave(split, dim=1)), dim=1)
        out = self.memory_attention.forward_from_prefix(prefix, torch.cat((tokens, ptr_tokens), dim=1),
                                                        torch.cat((positions, ptr_pos), dim=1), p * split, key_mask)
        side = cfg.feat_size
        return out.transpose(1, 2).reshape(b, out.shape[2], side, side)

    def _memory_pos(self, dtype: torch.dtype) -> torch.Tensor:
        """The memories' sine position code ``[hw, mem]`` as the memory encoder gives it, in the compute dtype
        (autocast's when it is on: the official predictor keeps it so before adding the temporal code), then as
        ``dtype`` for that sum."""
        device = self.memory_pos.device.type
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.memory_pos.dtype
        return self.memory_pos.to(compute).to(dtype).flatten(1).t()

    def _memory_tokens(
        self,
        memories: list[torch.Tensor],
        memory_tpos: list[int],
        obj_ptrs: torch.Tensor | None,
        ptr_offsets: torch.Tensor | None,
        num_frames: int,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Memory tokens ``[B, M, mem]`` (spatial memories, then pointer tokens), their position code and the
        number of pointer tokens."""
        b = memories[0].shape[0] if memories else obj_ptrs.shape[0]
        mem_pos = self._memory_pos(dtype)
        tokens = [m.to(dtype).flatten(2).transpose(1, 2) for m in memories]
        positions = [(mem_pos + self.maskmem_tpos_enc[t].view(1, -1).to(dtype)).expand(b, -1, -1) for t in memory_tpos]
        num_ptr_tokens = 0
        if obj_ptrs is not None and obj_ptrs.shape[1] > 0:
            ptr_tokens, ptr_pos = self.pointer_tokens(obj_ptrs.to(dtype), ptr_offsets, num_frames)
            tokens.append(ptr_tokens)
            positions.append(ptr_pos)
            num_ptr_tokens = ptr_tokens.shape[1]
        return torch.cat(tokens, dim=1), torch.cat(positions, dim=1), num_ptr_tokens


def stable_or_best(masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-mask output where it is stable (area at +delta / area at -delta >= thresh), else the multimask
    candidate with the best predicted IoU; returns ``[B, 1, ...]`` mask and ``[B, 1]`` IoU."""
    single, single_iou = masks[:, :1], iou[:, :1]
    flat = single.flatten(1)
    inner = (flat > STABILITY_DELTA).sum(1).float()
    outer = (flat > -STABILITY_DELTA).sum(1).float()
    stability = torch.where(outer > 0, inner / outer.clamp(min=1), torch.ones_like(outer))
    stable = (stability >= STABILITY_THRESH)[:, None]
    best = iou[:, 1:].argmax(dim=1, keepdim=True) + 1
    best_mask = masks.gather(1, best[..., None, None].expand(-1, -1, *masks.shape[-2:]))
    chosen = torch.where(stable[..., None, None], single, best_mask)
    return chosen, torch.where(stable, single_iou, iou.gather(1, best))
