"""Prompt encoder: points (and box corners) to sparse tokens, a mask prompt to a dense embedding."""

from __future__ import annotations

import torch
from torch import nn

from sam2core.modeling.common import LayerNorm2d
from sam2core.modeling.position_encoding import RandomFourierEncoding


class PromptEncoder(nn.Module):
    """Embeds SAM prompts.

    Point labels: 1 positive, 0 negative, 2/3 box top-left/bottom-right corner, -1 padding (no point).
    Coordinates are pixels of the ``input_size`` square model input.
    """

    def __init__(self, embed_dim: int, feat_size: int, input_size: int, mask_channels: int = 16) -> None:
        super().__init__()
        self.feat_size = feat_size
        self.input_size = input_size
        self.pe_layer = RandomFourierEncoding(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        hidden = mask_channels // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, hidden, kernel_size=2, stride=2),
            LayerNorm2d(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, mask_channels, kernel_size=2, stride=2),
            LayerNorm2d(mask_channels),
            nn.GELU(),
            nn.Conv2d(mask_channels, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def mask_size(self) -> int:
        """Side of the mask prompt the downscaler expects (4x the feature map)."""
        return 4 * self.feat_size

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[B, N, 2]`` pixel coords + ``[B, N]`` labels -> ``[B, N + 1, C]`` tokens (a padding point is appended)."""
        b = coords.shape[0]
        coords = torch.cat((coords.float() + 0.5, coords.new_zeros(b, 1, 2, dtype=torch.float32)), dim=1)
        labels = torch.cat((labels, labels.new_full((b, 1), -1)), dim=1)
        codes = self.pe_layer.encode(coords / self.input_size)
        label_table = torch.cat([self.not_a_point_embed.weight] + [e.weight for e in self.point_embeddings])
        is_point = (labels != -1).unsqueeze(-1)
        return torch.where(is_point, codes, torch.zeros_like(codes)) + label_table[(labels + 1).long()]

    def embed_mask(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 4h, 4w]`` mask logits -> ``[B, C, h, w]`` dense embedding."""
        return self.mask_downscaling(mask_logits)

    def no_mask_dense(self, batch: int) -> torch.Tensor:
        """Dense embedding used when there is no mask prompt, ``[B, C, h, w]``."""
        return self.no_mask_embed.weight.view(1, -1, 1, 1).expand(batch, -1, self.feat_size, self.feat_size)

    def dense_pe(self) -> torch.Tensor:
        """Position code of the image-feature grid, ``[1, C, h, w]``."""
        return self.pe_layer.grid(self.feat_size, self.feat_size).unsqueeze(0)
