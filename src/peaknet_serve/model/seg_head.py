"""Segmentation head: fuse a feature pyramid at stride 4, predict class logits, upsample to stride 1.

For each pyramid level at stride ``s`` (4, 8, 16, 32) a lateral branch applies
``max(1, log2(s / 4))`` times [3x3 conv -> GroupNorm -> GELU], each followed by a 2x bilinear
upsample when the level is coarser than stride 4. The branches are summed (coarsest first, as the
public PeakNet does), a 1x1 conv gives stride-4 logits, and a 4x bilinear upsample (plus, optionally,
a learned ConvTranspose "residual" upsample of the fused features) gives full-resolution logits.

The head's modules live directly on :class:`~peaknet_serve.model.peaknet.PeakNet` under the public
implementation's names (``seg_lateral_layers``, ``head_segmask``, ``head_upsample_layer``); this
module provides their building blocks and the pure functions that run them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from peaknet_serve.model import resize

__all__ = [
    "SegLateralLayer",
    "build_lateral_layers",
    "build_learned_upsample",
    "fuse_pyramid",
]


class SegLateralLayer(nn.Module):
    """``num_upsamplings`` x [3x3 conv -> GroupNorm -> GELU -> 2x bilinear upsample].

    With ``num_upsamplings == 0`` one conv block runs and nothing is upsampled.
    (B, in_channels, H, W) -> (B, out_channels, H * 2**n, W * 2**n).
    """

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, num_upsamplings: int) -> None:
        super().__init__()
        self.upsamples = num_upsamplings > 0
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, kernel_size=3, padding=1),
                nn.GroupNorm(num_groups, out_channels),
                nn.GELU(),
            )
            for index in range(max(num_upsamplings, 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
            if self.upsamples:
                x = resize.bilinear(x, 2.0)
        return x


def build_lateral_layers(
    level_strides: Sequence[int], in_channels: int, out_channels: int, num_groups: int
) -> nn.ModuleList:
    """One :class:`SegLateralLayer` per pyramid level, bringing level ``i`` from its stride to the finest."""
    finest = level_strides[0]
    return nn.ModuleList(
        SegLateralLayer(in_channels, out_channels, num_groups, round(math.log2(stride / finest)))
        for stride in level_strides
    )


def build_learned_upsample(in_channels: int, num_classes: int, scale_factor: int) -> nn.Sequential:
    """ConvTranspose2d with kernel ``s + 2``, stride ``s``, padding 1: exactly ``s`` times larger output."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, num_classes, kernel_size=scale_factor + 2, stride=scale_factor, padding=1)
    )


def fuse_pyramid(lateral_layers: nn.ModuleList, features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of the lateral branches, (B, C_seg, H/4, W/4); accumulated coarsest level first."""
    if len(lateral_layers) != len(features):
        raise ValueError(f"{len(features)} feature maps for {len(lateral_layers)} lateral layers")
    fused = lateral_layers[-1](features[-1])
    for layer, x in zip(reversed(lateral_layers[:-1]), reversed(features[:-1])):
        fused = fused + layer(x)
    return fused
