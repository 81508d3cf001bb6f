"""Hiera trunk: a hierarchical ViT with windowed attention and query pooling between stages."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam2core.config import HieraConfig
from sam2core.modeling.common import MLP


@dataclass(frozen=True)
class BlockSpec:
    """Shape of one Hiera block: widths, heads, attention window (0 = global) and whether it halves resolution."""

    dim: int
    dim_out: int
    num_heads: int
    window: int
    pools: bool


def block_specs(cfg: HieraConfig) -> list[BlockSpec]:
    """Per-block layout of a trunk.

    The first block of every later stage widens channels and heads and (for the first ``q_pool`` transitions)
    halves resolution; it still attends in the previous stage's window size. Global blocks use window 0.
    """
    specs = []
    dim, heads = cfg.embed_dim, cfg.num_heads
    for stage, depth in enumerate(cfg.stages):
        for j in range(depth):
            window = cfg.window_spec[stage]
            dim_out, pools = dim, False
            if stage > 0 and j == 0:
                window = cfg.window_spec[stage - 1]
                dim_out, heads = int(dim * cfg.dim_mul), int(heads * cfg.head_mul)
                pools = stage <= cfg.q_pool
            if len(specs) in cfg.global_att_blocks:
                window = 0
            specs.append(BlockSpec(dim, dim_out, heads, window, pools))
            dim = dim_out
    return specs


def stage_last_blocks(cfg: HieraConfig) -> list[int]:
    """Indices of the last block of each stage (where the trunk emits a feature map)."""
    ends, total = [], 0
    for depth in cfg.stages:
        total += depth
        ends.append(total - 1)
    return ends


def pool2x(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool of a channels-last map ``[B, H, W, C]``."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).permute(0, 2, 3, 1)


def split_windows(x: torch.Tensor, size: int) -> tuple[torch.Tensor, int, int]:
    """Zero-pad ``[B, H, W, C]`` to a multiple of ``size`` and cut it into ``[B*nh*nw, size, size, C]`` tiles."""
    b, h, w, c = x.shape
    nh, nw = -(-h // size), -(-w // size)
    x = F.pad(x, (0, 0, 0, nw * size - w, 0, nh * size - h))
    tiles = x.view(b, nh, size, nw, size, c).transpose(2, 3)
    return tiles.reshape(b * nh * nw, size, size, c), nh, nw


def merge_windows(tiles: torch.Tensor, nh: int, nw: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`split_windows`: stitch tiles back and crop the padding to ``height x width``."""
    size, c = tiles.shape[1], tiles.shape[-1]
    x = tiles.view(-1, nh, nw, size, size, c).transpose(2, 3).reshape(-1, nh * size, nw * size, c)
    return x[:, :height, :width]


class HieraAttention(nn.Module):
    """Multi-head self-attention on a channels-last map; optionally max-pools the queries (stage transition)."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.num_heads = spec.num_heads
        self.pools = spec.pools
        self.qkv = nn.Linear(spec.dim, 3 * spec.dim_out)
        self.proj = nn.Linear(spec.dim_out, spec.dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).view(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if self.pools:
            spatial_q = q.reshape(b * self.num_heads, h, w, -1)
            q = pool2x(spatial_q).reshape(b, self.num_heads, -1, q.shape[-1])
            h, w = h // 2, w // 2
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class HieraBlock(nn.Module):
    """Pre-norm transformer block on a channels-last map, attending inside windows (or globally)."""

    def __init__(self, spec: BlockSpec, mlp_ratio: float) -> None:
        super().__init__()
        self.window = spec.window
        self.pools = spec.pools
        self.norm1 = nn.LayerNorm(spec.dim, eps=1e-6)
        self.attn = HieraAttention(spec)
        self.norm2 = nn.LayerNorm(spec.dim_out, eps=1e-6)
        self.mlp = MLP(spec.dim_out, int(spec.dim_out * mlp_ratio), spec.dim_out, 2, act=nn.GELU)
        # widening blocks project the (normalised) input for the residual path
        self.proj = nn.Linear(spec.dim, spec.dim_out) if spec.dim != spec.dim_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        residual = x
        if self.proj is not None:
            residual = self.proj(normed)
            if self.pools:
                residual = pool2x(residual)
        if self.window:
            tiles, nh, nw = split_windows(normed, self.window)
            attended = merge_windows(self.attn(tiles), nh, nw, residual.shape[1], residual.shape[2])
        else:
            attended = self.attn(normed)
        x = residual + attended
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution into channels-last tokens."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """Hiera trunk; returns one channels-first feature map per stage (strides 4, 8, 16, 32)."""

    def __init__(self, cfg: HieraConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, *cfg.window_pos_embed_bkg_spatial_size))
        window0 = cfg.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, cfg.embed_dim, window0, window0))
        self.blocks = nn.ModuleList(HieraBlock(spec, cfg.mlp_ratio) for spec in block_specs(cfg))
        self.stage_ends = stage_last_blocks(cfg)
        self.channel_list = cfg.channel_list

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """Background embedding resized (bicubic) to the token grid plus the window embedding tiled over it."""
        background = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic")
        win = self.pos_embed_window.shape[-1]
        tiled = self.pos_embed_window.repeat(1, 1, height // win, width // win)
        return (background + tiled).permute(0, 2, 3, 1)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(images)
        x = x + self.position_embedding(x.shape[1], x.shape[2])
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                features.append(x.permute(0, 3, 1, 2))
        return features
