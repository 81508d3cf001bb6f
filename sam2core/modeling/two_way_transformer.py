"""Two-way transformer of the SAM mask decoder: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import torch
from torch import nn

from sam2core.modeling.common import MLP, Attention


class TwoWayBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention; post-norm each."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, 2)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate)

    def forward(
        self, tokens: torch.Tensor, image: torch.Tensor, token_pe: torch.Tensor, image_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.first:
            # the first block replaces the tokens by their self-attention (no position code, no residual)
            tokens = self.norm1(self.self_attn(tokens, tokens, tokens))
        else:
            with_pe = tokens + token_pe
            tokens = self.norm1(tokens + self.self_attn(with_pe, with_pe, tokens))
        image_keys = image + image_pe
        tokens = self.norm2(tokens + self.cross_attn_token_to_image(tokens + token_pe, image_keys, image))
        tokens = self.norm3(tokens + self.mlp(tokens))
        image = self.norm4(image + self.cross_attn_image_to_token(image_keys, tokens + token_pe, tokens))
        return tokens, image


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks and a final token->image attention."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayBlock(dim, num_heads, mlp_dim, downsample_rate, first=i == 0) for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, prompt_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``[B or 1, C, h, w]`` and its code ``[1, C, h, w]`` with prompt tokens ``[B, N, C]`` -> (tokens,
        image ``[B, hw, C]``). An image of batch 1 is shared by the B prompts until the first block's image update,
        which is the first step that depends on the prompt."""
        image = image.flatten(2).transpose(1, 2)
        image_pe = image_pe.flatten(2).transpose(1, 2)
        tokens = prompt_tokens
        for layer in self.layers:
            tokens, image = layer(tokens, image, prompt_tokens, image_pe)
        attended = self.final_attn_token_to_image(tokens + prompt_tokens, image + image_pe, image)
        return self.norm_final_attn(tokens + attended), image
