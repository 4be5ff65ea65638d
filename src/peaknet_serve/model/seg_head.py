"""Segmentation head: fuse a feature pyramid at stride 4, predict class logits, upsample to stride 1.

For each pyramid level at stride ``s`` (4, 8, 16, 32) a lateral branch applies
``max(1, log2(s / 4))`` times [3x3 conv -> GroupNorm -> GELU], each followed by a 2x bilinear
upsample when the level is coarser than stride 4. The branches are summed, a 1x1 conv gives stride-4
logits, and a 4x bilinear upsample (plus, optionally, a learned ConvTranspose "residual" upsample of
the fused features) gives full-resolution logits.

Every coarse branch ends with the same 2x bilinear upsample from stride 8, and bilinear upsampling
and the 1x1 conv are linear, so ``sum_l up2(a_l) = up2(sum_l a_l)`` and
``conv1x1(f + up2(c)) = conv1x1(f) + up2(W c)``. :func:`split_pyramid` therefore sums the coarse
branches at stride 8, :func:`fuse_parts` (and :func:`fuse_pyramid`) upsamples that sum once, and
:func:`project_parts` applies the 1x1 conv before upsampling, so that only the K output channels
(K = 1 or 2) are ever upsampled from stride 8. Both equal the public PeakNet's order (upsample each branch, then sum,
coarsest first; ``sum_before_upsample=False``) up to floating-point rounding.

The head's modules live directly on :class:`~peaknet_serve.model.peaknet.PeakNet` under the public
implementation's names (``seg_lateral_layers``, ``head_segmask``, ``head_upsample_layer``); this
module provides their building blocks and the pure functions that run them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peaknet_serve.model import resize

__all__ = [
    "SegLateralLayer",
    "build_lateral_layers",
    "build_learned_upsample",
    "fuse_parts",
    "fuse_pyramid",
    "project_parts",
    "split_pyramid",
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
        x = self.forward_before_last_upsample(x)
        return resize.bilinear(x, 2.0) if self.upsamples else x

    def forward_before_last_upsample(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without its final 2x upsample: (B, out_channels, H * 2**(n-1), W * 2**(n-1)),
        or :meth:`forward`'s output when nothing is upsampled (n = 0)."""
        for index, layer in enumerate(self.layers):
            if index > 0:
                x = resize.bilinear(x, 2.0)
            x = layer(x)
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


def _check_levels(lateral_layers: nn.ModuleList, features: Sequence[torch.Tensor]) -> None:
    if len(lateral_layers) != len(features):
        raise ValueError(f"{len(features)} feature maps for {len(lateral_layers)} lateral layers")


def split_pyramid(
    lateral_layers: nn.ModuleList, features: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The lateral branches in two sums: ``(fine, coarse)``.

    ``fine`` (B, C_seg, H/4, W/4) sums the branches that upsample nothing (the finest level);
    ``coarse`` (B, C_seg, H/8, W/8) sums the others before their common last 2x upsample, coarsest
    level first, or is None when every branch is at stride 4. The fused pyramid is
    ``fine + up2(coarse)``.
    """
    _check_levels(lateral_layers, features)
    fine = coarse = None
    for layer, x in zip(reversed(lateral_layers), reversed(features)):
        if layer.upsamples:
            branch = layer.forward_before_last_upsample(x)
            coarse = branch if coarse is None else coarse + branch
        else:
            branch = layer(x)
            fine = branch if fine is None else fine + branch
    if fine is None:
        raise ValueError("no lateral branch at the finest stride")
    return fine, coarse


def fuse_pyramid(
    lateral_layers: nn.ModuleList, features: Sequence[torch.Tensor], sum_before_upsample: bool = True
) -> torch.Tensor:
    """Sum of the lateral branches, (B, C_seg, H/4, W/4).

    ``sum_before_upsample``: the coarse branches summed at stride 8 and upsampled once
    (:func:`split_pyramid`); otherwise the public PeakNet's order, every branch upsampled to stride 4
    and accumulated coarsest level first.
    """
    if sum_before_upsample:
        return fuse_parts(*split_pyramid(lateral_layers, features))
    _check_levels(lateral_layers, features)
    fused = lateral_layers[-1](features[-1])
    for layer, x in zip(reversed(lateral_layers[:-1]), reversed(features[:-1])):
        fused = fused + layer(x)
    return fused


def fuse_parts(fine: torch.Tensor, coarse: torch.Tensor | None) -> torch.Tensor:
    """``fine + up2(coarse)``: the fused pyramid (B, C_seg, H/4, W/4) from :func:`split_pyramid`'s parts."""
    return fine if coarse is None else fine + resize.bilinear(coarse, 2.0)


def project_parts(
    fine: torch.Tensor, coarse: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.conv2d(fuse_parts(fine, coarse), weight, bias)`` with the conv of ``coarse`` at stride 8, (B, K, H/4, W/4)."""
    projected = F.conv2d(fine, weight, bias)
    if coarse is not None:
        projected = projected + resize.bilinear(F.conv2d(coarse, weight), 2.0)
    return projected
