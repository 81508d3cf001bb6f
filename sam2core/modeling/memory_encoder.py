"""Memory encoder: fuses a frame's features with its predicted mask into a compact spatial memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam2core.modeling.common import LayerNorm2d


class MaskDownSampler(nn.Module):
    """Four stride-2 3x3 convolutions (channels 1 -> 4 -> 16 -> 64 -> 256), each with LayerNorm2d + GELU, then 1x1."""

    def __init__(self, embed_dim: int = 256, num_stages: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 1
        for _ in range(num_stages):
            conv = nn.Conv2d(width, width * 4, kernel_size=3, stride=2, padding=1)
            layers += [conv, LayerNorm2d(width * 4), nn.GELU()]
            width *= 4
        layers.append(nn.Conv2d(width, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(mask)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7, channel LayerNorm, pointwise MLP x4 with GELU, layer-scaled residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(y))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """A few CXBlocks in sequence."""

    def __init__(self, dim: int, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """``feat [B, C, h, w]`` + mask input ``[B, 1, S, S]`` (already scaled logits) -> memory ``[B, mem_dim, h, w]``."""

    def __init__(self, dim: int = 256, mem_dim: int = 64) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(dim)
        self.pix_feat_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.fuser = Fuser(dim)
        self.out_proj = nn.Conv2d(dim, mem_dim, kernel_size=1)

    def forward(self, feat: torch.Tensor, mask_input: torch.Tensor) -> torch.Tensor:
        x = self.pix_feat_proj(feat) + self.mask_downsampler(mask_input)
        return self.out_proj(self.fuser(x))
