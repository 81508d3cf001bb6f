"""Image encoder: Hiera trunk followed by a light FPN neck that maps every stage to ``d_model`` channels."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from sam2core.modeling.hiera import Hiera


class FpnNeck(nn.Module):
    """1x1 lateral convolutions per stage, with a top-down (nearest x2) path from stride 32 into stride 16.

    ``convs[j]`` belongs to ``channel_list[j]`` (lowest resolution first). The stride-32 level only feeds the
    top-down path; the neck returns the stride 4, 8 and 16 maps.
    """

    def __init__(self, d_model: int, channel_list: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(c, d_model, kernel_size=1))) for c in channel_list
        )

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        s4, s8, s16, s32 = stages
        lateral = [conv(x) for conv, x in zip(self.convs, (s32, s16, s8, s4))]
        top_down = F.interpolate(lateral[0].float(), scale_factor=2.0, mode="nearest")
        # summed in fp32 (as the official neck), then kept in fp32 under autocast (whatever the weights' dtype: the
        # engine's bf16 weight copies give the autocast numbers), else in the weights' dtype
        autocast = torch.is_autocast_enabled(top_down.device.type)
        fused = (lateral[1] + top_down).to(torch.float32 if autocast else self.convs[1].conv.weight.dtype)
        return [lateral[3], lateral[2], fused]


class ImageEncoder(nn.Module):
    """Trunk + neck: ``[B, 3, S, S]`` images -> ``[stride4, stride8, stride16]`` maps of ``d_model`` channels."""

    def __init__(self, trunk: Hiera, neck: FpnNeck) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = neck

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(self.trunk(images))
