"""SAM mask decoder: predicts 4 candidate masks, their IoU, and an object-presence score from prompt tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sam2core.modeling.common import MLP, LayerNorm2d
from sam2core.modeling.two_way_transformer import TwoWayTransformer


@dataclass
class DecoderOutput:
    """All candidates: index 0 is the single-mask output, 1..3 the multimask outputs."""

    masks: torch.Tensor  # [B, 4, 4h, 4w] logits
    iou: torch.Tensor  # [B, 4]
    mask_tokens: torch.Tensor  # [B, 4, C] output tokens (the object pointer is projected from one of them)
    object_score_logits: torch.Tensor  # [B, 1]


class MaskDecoder(nn.Module):
    """Two-way transformer over [object-score, IoU, 4 mask] tokens + prompt tokens, then hypernetwork masks."""

    num_masks = 4

    def __init__(self, dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(depth=2, dim=dim, num_heads=num_heads, mlp_dim=mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_masks, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_masks))
        self.iou_prediction_head = MLP(dim, 256, self.num_masks, 3, sigmoid_output=True)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)

    def upscale(self, image: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Stride-16 map -> stride-4 map, mixing in the projected stride-8 and stride-4 backbone features.

        The sums and activations are made in place, on the fresh outputs of the transposed convolutions and the norm:
        those are tens of MB for a batch of clicks (33 MB for 64 at 256 px), and on a CPU each new buffer that size
        is written to freshly faulted-in pages. The same numbers as new tensors would hold."""
        up1, norm, act, up2, _ = self.output_upscaling
        s0, s1 = high_res
        x = torch.ops.aten.gelu_(norm(up1(image).add_(s1)), approximate=act.approximate)
        return torch.ops.aten.gelu_(up2(x).add_(s0), approximate=act.approximate)

    def forward(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
    ) -> DecoderOutput:
        """``image [B,C,h,w]`` (+ ``dense`` prompt), ``image_pe [1,C,h,w]``, ``sparse [B,N,C]`` prompt tokens.

        ``image``, ``dense`` and ``high_res`` may have batch 1 for B prompts on one image (the image predictor, the
        automatic generator): the image side of the first block then runs once instead of B times, same numbers."""
        b = sparse.shape[0]
        _, c, h, w = image.shape
        learned = torch.cat((self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight))
        tokens = torch.cat((learned.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)
        tokens, image_tokens = self.transformer(image + dense, image_pe, tokens)
        mask_tokens = tokens[:, 2 : 2 + self.num_masks]
        upscaled = self.upscale(image_tokens.transpose(1, 2).reshape(b, c, h, w), high_res)
        weights = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        masks = (weights @ upscaled.flatten(2)).unflatten(-1, upscaled.shape[-2:])
        return DecoderOutput(
            masks=masks,
            iou=self.iou_prediction_head(tokens[:, 1]),
            mask_tokens=mask_tokens,
            object_score_logits=self.pred_obj_score_head(tokens[:, 0]),
        )
