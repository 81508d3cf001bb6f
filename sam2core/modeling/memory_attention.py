"""Memory attention: conditions the current frame's features on memories of past frames and object pointers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam2core.modeling.common import Attention
from sam2core.modeling.position_encoding import apply_rope, axial_rope_tables


class RoPEAttention(Attention):
    """Attention with 2-D axial rotary embedding on queries and on the leading spatial keys.

    Keys may hold several frames of the same grid (the rotary table is repeated per frame) followed by
    ``num_plain_keys`` tokens (object pointers) that stay unrotated.
    """

    def __init__(self, dim: int, feat_size: int, kv_dim: int | None = None, theta: float = 10000.0) -> None:
        super().__init__(dim, num_heads=1, kv_dim=kv_dim)
        cos, sin = axial_rope_tables(feat_size, dim, theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_plain_keys: int = 0) -> torch.Tensor:
        return self.forward_query_heads(self.query_heads(q), k, v, num_plain_keys)

    def query_heads(self, q: torch.Tensor) -> torch.Tensor:
        """Queries projected, split into heads and rotated: the part of ``forward`` that does not see the keys."""
        return apply_rope(self.split_heads(self.q_proj(q)), self.rope_cos, self.rope_sin)

    def forward_query_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            num_plain_keys: int = 0, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` with queries already through ``query_heads`` (they may broadcast over the batch);
        ``key_mask [B, M]`` (True = valid) hides padded keys."""
        k, v = self.split_heads(self.k_proj(k)), self.split_heads(self.v_proj(v))
        if q.shape[0] != k.shape[0]:
            q = q.expand(k.shape[0], -1, -1, -1)
        num_rotated = k.shape[-2] - num_plain_keys
        frames = num_rotated // self.rope_cos.shape[0]
        rotated = apply_rope(k[..., :num_rotated, :], self.rope_cos.repeat(frames, 1), self.rope_sin.repeat(frames, 1))
        k = torch.cat((rotated, k[..., num_rotated:, :]), dim=-2)
        return self.attend(q, k, v, key_mask)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm: RoPE self-attention, RoPE cross-attention to memory (keys carry memory position), ReLU FFN."""

    def __init__(self, dim: int, mem_dim: int, feat_size: int, ffn_dim: int = 2048) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(dim, feat_size)
        self.cross_attn_image = RoPEAttention(dim, feat_size, kv_dim=mem_dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, memory_keys: torch.Tensor, num_ptr_tokens: int,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.forward_from_prefix(self.shared_prefix(x), memory, memory_keys, num_ptr_tokens, key_mask)

    def shared_prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``forward`` computes before it reads the memory: the tokens after self-attention and the rotated
        cross-attention queries. Equal for every object of a frame when this is the first layer."""
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h)
        return x, self.cross_attn_image.query_heads(self.norm2(x))

    def forward_from_prefix(self, prefix: tuple[torch.Tensor, torch.Tensor], memory: torch.Tensor,
                            memory_keys: torch.Tensor, num_ptr_tokens: int,
                            key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` continued from ``shared_prefix`` (computed for one object, broadcast to the batch)."""
        x, queries = prefix
        x = x + self.cross_attn_image.forward_query_heads(queries, memory_keys, memory, num_plain_keys=num_ptr_tokens,
                                                          key_mask=key_mask)
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class MemoryAttention(nn.Module):
    """Stack of memory-attention layers over ``[B, hw, C]`` tokens; memory tokens are ``[B, M, mem_dim]``."""

    def __init__(self, dim: int, mem_dim: int, feat_size: int, num_layers: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(dim, mem_dim, feat_size) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        tokens: torch.Tensor,
        tokens_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_ptr_tokens: int = 0,
    ) -> torch.Tensor:
        x = tokens + 0.1 * tokens_pos
        memory_keys = memory + memory_pos
        for layer in self.layers:
            x = layer(x, memory, memory_keys, num_ptr_tokens)
        return self.norm(x)

    def shared_prefix(self, tokens: torch.Tensor, tokens_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory-independent start of ``forward`` for one frame's tokens ``[1, hw, C]``: computed once per
        frame, shared by all objects through ``forward_from_prefix``."""
        return self.layers[0].shared_prefix(tokens + 0.1 * tokens_pos)

    def forward_from_prefix(self, prefix: tuple[torch.Tensor, torch.Tensor], memory: torch.Tensor,
                            memory_pos: torch.Tensor, num_ptr_tokens: int = 0,
                            key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` for a batch of objects ``memory [B, M, mem_dim]`` of the frame ``prefix`` was computed for;
        ``key_mask [B, M]`` (True = valid) hides padded memory tokens."""
        memory_keys = memory + memory_pos
        first, *rest = self.layers
        x = first.forward_from_prefix(prefix, memory, memory_keys, num_ptr_tokens, key_mask)
        for layer in rest:
            x = layer(x, memory, memory_keys, num_ptr_tokens, key_mask)
        return self.norm(x)
