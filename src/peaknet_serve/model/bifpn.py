"""Bidirectional feature pyramid (BiFPN) with learnable, normalised fusion weights.

Follows Tan et al., "EfficientDet" (2020) as PeakNet uses it: every block takes ``num_levels``
maps P_base ... P_(base+L-1) of equal channel count, where level ``l`` has stride ``2**(l - base)``
relative to the first map, and returns maps of the same shapes.

* top-down pathway M, for l = max-1 ... min:
  ``M_l = conv_m_l(fuse(P_l, up2(M_(l+1)))) + P_l``  (with ``M_max = P_max``)
* bottom-up pathway Q, for l = min+1 ... max:
  ``Q_l = conv_q_l(fuse(P_l, M_l, down2(Q_(l-1)))) + P_l``  (with ``Q_min = M_min``, and the
  P_l term of the coarsest level masked out, as M_max is P_max)

``fuse`` is the "fast normalised fusion" ``sum_i relu(w_i) x_i / (sum_i relu(w_i) + eps)``.
Each ``conv_*`` is depthwise-separable 1x1 conv (no bias) -> channel LayerNorm -> GELU.
Parameter names (``blocks.{b}.w_m``, ``w_q``, ``w_q_mask``, ``conv.m{l}`` / ``conv.q{l}``) match
the public PeakNet's state dict.

With ``kernel_size=1`` the depthwise conv of a separable conv is a per-channel scale, so
:meth:`DepthwiseSeparableConv2d.merge_depthwise` (and :func:`merge_separable_convs` for a whole
model) folds it into the pointwise conv's weight, ``W'[o, i] = W[o, i] * d[i]``: one GEMM instead of a
depthwise conv and a GEMM, the same function up to rounding. Serving does this after loading
(``merge_separable`` in :mod:`peaknet_serve.config.mode`); checkpoints keep the public layout.
"""

from __future__ import annotations

import torch
from torch import nn

from peaknet_serve.model import resize
from peaknet_serve.model.convnextv2 import ChannelsFirstLayerNorm

__all__ = ["BiFPN", "BiFPNBlock", "DepthwiseSeparableConv2d", "merge_separable_convs"]

#: LayerNorm epsilon inside the BiFPN refinement convs.
BIFPN_LAYER_NORM_EPS = 1e-6


class DepthwiseSeparableConv2d(nn.Module):
    """Per-channel spatial conv followed by a 1x1 channel-mixing conv: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.depthwise_conv = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=bias
        )
        self.pointwise_conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))

    @torch.no_grad()
    def merge_depthwise(self) -> bool:
        """Fold a 1x1, bias-free depthwise conv into the pointwise conv; True when merged.

        The product is formed in float32 (float64 for float64 weights) and rounded to the weights'
        dtype once; the depthwise conv becomes ``nn.Identity``. Other kernel sizes, biases, or an
        already merged conv: left as is, False.
        """
        depthwise = self.depthwise_conv
        if not isinstance(depthwise, nn.Conv2d) or depthwise.kernel_size != (1, 1) or depthwise.bias is not None:
            return False
        pointwise = self.pointwise_conv.weight  # (C_out, C_in, 1, 1)
        work = torch.promote_types(pointwise.dtype, torch.float32)
        scale = depthwise.weight.reshape(1, -1, 1, 1).to(work)  # (C_in, 1, 1, 1) -> (1, C_in, 1, 1)
        merged = (pointwise.to(work) * scale).to(pointwise.dtype)
        pointwise.copy_(merged)
        self.depthwise_conv = nn.Identity()
        return True


def merge_separable_convs(model: nn.Module) -> int:
    """:meth:`DepthwiseSeparableConv2d.merge_depthwise` on every separable conv of ``model``; the number merged."""
    separable = [m for m in model.modules() if isinstance(m, DepthwiseSeparableConv2d)]
    return sum(m.merge_depthwise() for m in separable)


def _refinement_conv(num_features: int) -> nn.Sequential:
    """Separable conv -> LayerNorm over channels -> GELU, shape-preserving."""
    return nn.Sequential(
        DepthwiseSeparableConv2d(num_features, num_features, bias=False),
        ChannelsFirstLayerNorm(num_features, eps=BIFPN_LAYER_NORM_EPS),
        nn.GELU(),
    )


class BiFPNBlock(nn.Module):
    """One bidirectional fusion pass over ``num_levels`` maps of ``num_features`` channels.

    Input and output: list of ``num_levels`` tensors (B, num_features, H_l, W_l), finest first,
    each level half the resolution of the previous one.
    """

    def __init__(
        self,
        num_features: int,
        num_levels: int = 4,
        base_level: int = 4,
        fusion_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if num_levels < 3:
            raise ValueError(f"BiFPN needs at least 3 levels, got {num_levels}")
        self.num_levels = num_levels
        self.min_level = base_level
        self.max_level = base_level + num_levels - 1
        self.fusion_eps = fusion_eps

        num_fusions = num_levels - 1
        self.w_m = nn.Parameter(torch.ones(num_fusions, 2))
        self.w_q = nn.Parameter(torch.ones(num_fusions, 3))
        # The coarsest Q fusion would count P_max twice (M_max is P_max): its P weight is masked.
        w_q_mask = torch.ones(num_fusions, 3, dtype=torch.bool)
        w_q_mask[-1, 0] = False
        self.register_buffer("w_q_mask", w_q_mask)
        with torch.no_grad():
            self.w_q[-1, 0] = 0.0

        self.conv = nn.ModuleDict()
        for level in range(self.min_level, self.max_level):
            self.conv[f"m{level}"] = _refinement_conv(num_features)
        for level in range(self.min_level + 1, self.max_level + 1):
            self.conv[f"q{level}"] = _refinement_conv(num_features)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        levels = range(self.min_level, self.max_level + 1)
        p = dict(zip(levels, features, strict=True))

        # Top-down: coarse to fine.
        m = {self.max_level: p[self.max_level]}
        for index, level in enumerate(range(self.max_level - 1, self.min_level - 1, -1)):
            w = self.w_m[index].relu()
            coarser_up = resize.bilinear(m[level + 1], 2.0)
            fused = (w[0] * p[level] + w[1] * coarser_up) / (w[0] + w[1] + self.fusion_eps)
            m[level] = self.conv[f"m{level}"](fused) + p[level]

        # Bottom-up: fine to coarse.
        q = {self.min_level: m[self.min_level]}
        for index, level in enumerate(range(self.min_level + 1, self.max_level + 1)):
            w = (self.w_q[index] * self.w_q_mask[index]).relu()
            finer_down = resize.bilinear(q[level - 1], 0.5)
            fused = w[0] * p[level] + w[1] * m[level] + w[2] * finer_down
            fused = fused / (w[0] + w[1] + w[2] + self.fusion_eps)
            q[level] = self.conv[f"q{level}"](fused) + p[level]

        return [q[level] for level in levels]


class BiFPN(nn.Module):
    """``num_blocks`` BiFPN blocks in sequence; list of maps in, list of same-shaped maps out."""

    def __init__(
        self,
        num_blocks: int,
        num_features: int,
        num_levels: int = 4,
        base_level: int = 4,
        fusion_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(BiFPNBlock(num_features, num_levels, base_level, fusion_eps) for _ in range(num_blocks))
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.blocks(features)
