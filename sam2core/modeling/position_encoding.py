"""Position encodings: 2-D sine grids, random-Fourier point/grid codes, axial RoPE and 1-D sine codes."""

from __future__ import annotations

import math

import torch
from torch import nn


def sine_grid_encoding(height: int, width: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Normalised 2-D sine/cosine code of an ``height x width`` grid, ``[dim, height, width]``.

    Each axis gets ``dim / 2`` channels: cell index 1..n scaled to (0, 2*pi], divided by a geometric ladder of
    wavelengths, sine and cosine interleaved; the y code comes first.
    """
    half = dim // 2
    rung = torch.arange(half // 2, dtype=torch.float32)
    wavelengths = temperature ** (2 * rung / half)

    def axis_code(n: int) -> torch.Tensor:
        steps = torch.arange(1, n + 1, dtype=torch.float32)
        angles = (steps / (n + 1e-6) * (2 * math.pi))[:, None] / wavelengths
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)  # [n, half]

    ys = axis_code(height)[:, None, :].expand(height, width, half)
    xs = axis_code(width)[None, :, :].expand(height, width, half)
    return torch.cat((ys, xs), dim=-1).permute(2, 0, 1).contiguous()


def sine_1d_encoding(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Transformer-style 1-D code of real-valued positions ``[P] -> [P, dim]`` (all sines, then all cosines)."""
    half = dim // 2
    rung = torch.arange(half, device=positions.device).div(2, rounding_mode="floor").float()
    wavelengths = temperature ** (2 * rung / half)
    angles = positions.float()[:, None] / wavelengths
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class RandomFourierEncoding(nn.Module):
    """Code of 2-D points through a fixed random Gaussian projection (SAM's prompt position encoding)."""

    def __init__(self, num_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode(self, unit_xy: torch.Tensor) -> torch.Tensor:
        """Points with coordinates in [0, 1] (``[..., 2]``) -> ``[..., 2 * num_feats]``."""
        proj = (2 * unit_xy.float() - 1) @ self.positional_encoding_gaussian_matrix.float()
        proj = proj * (2 * math.pi)
        return torch.cat((proj.sin(), proj.cos()), dim=-1)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """Code of every cell centre of a ``height x width`` grid, ``[2 * num_feats, height, width]``."""
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return self.encode(torch.stack((xx, yy), dim=-1)).permute(2, 0, 1)


def axial_rope_tables(side: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables ``[side*side, head_dim/2]`` of 2-D axial rotary embedding on a square grid.

    Tokens are the row-major cells of the grid; the first half of the rotated channel pairs turn with the column
    index, the second half with the row index, at frequencies ``theta ** (-4k / head_dim)``.
    """
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim)
    cell = torch.arange(side * side, dtype=torch.float32)
    col, row = cell % side, torch.div(cell, side, rounding_mode="floor")
    angles = torch.cat((torch.outer(col, freqs), torch.outer(row, freqs)), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x [..., N, D]`` by the angles of ``cos/sin [N, D/2]`` (in fp32)."""
    pairs = x.float().unflatten(-1, (-1, 2))
    re, im = pairs[..., 0], pairs[..., 1]
    cos, sin = cos.float(), sin.float()
    rotated = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
