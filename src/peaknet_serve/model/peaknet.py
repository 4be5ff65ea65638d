"""PeakNet: ConvNeXt V2 backbone -> 1x1 adapters -> BiFPN -> segmentation head -> per-pixel logits.

State-dict keys equal those of the public implementation (carbonscott/peaknet,
``peaknet/modeling/convnextv2_bifpn_net.py``) built the way carbonscott/peaknet-pipeline-ray builds
it from a YAML config, so its checkpoints load with ``strict=True``:

* ``backbone.*``            HF transformers ``ConvNextV2Backbone`` names
* ``backbone_to_bifpn.{i}`` 1x1 convs from stage ``i``'s width to the BiFPN width
* ``bifpn.blocks.{b}.*``    BiFPN, 4 levels, base level 4
* ``seg_lateral_layers.{i}``, ``head_segmask``, ``head_upsample_layer`` (optional) the head
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peaknet_serve.model import resize
from peaknet_serve.model.bifpn import BiFPN
from peaknet_serve.model.convnextv2 import ConvNextV2Backbone
from peaknet_serve.model.seg_head import (
    build_lateral_layers,
    build_learned_upsample,
    fuse_parts,
    fuse_pyramid,
    project_parts,
    split_pyramid,
)

__all__ = ["PeakNet", "PeakNetConfig", "count_parameters"]

# Architecture constants the public pipeline fixes rather than reads from the YAML.
PATCH_SIZE = 4
NUM_STAGES = 4
LEVEL_STRIDES = (4, 8, 16, 32)  # strides of the four backbone stages = BiFPN levels
BIFPN_BASE_LEVEL = 4
BIFPN_FUSION_EPS = 1e-5
SEG_NUM_GROUPS = 32
#: Input height and width must be multiples of this (the coarsest stride).
INPUT_MULTIPLE = LEVEL_STRIDES[-1]


@dataclass(frozen=True)
class PeakNetConfig:
    """The architecture hyper-parameters of a PeakNet, named as in the pipeline YAML's
    ``model.peaknet_config.model`` section (defaults equal the pipeline's defaults).

    ``image_size`` is the nominal training size (informational: any multiple of 32 runs) and
    ``from_scratch`` is a training flag; both are accepted so real configs load unchanged.
    """

    image_size: int = 1920
    num_channels: int = 1
    num_classes: int = 2
    backbone_hidden_sizes: tuple[int, ...] = (96, 192, 384, 768)
    backbone_depths: tuple[int, ...] = (3, 3, 9, 3)
    bifpn_num_blocks: int = 2
    bifpn_num_features: int = 256
    seg_out_channels: int = 256
    uses_learned_upsample: bool = False
    from_scratch: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "backbone_hidden_sizes", tuple(self.backbone_hidden_sizes))
        object.__setattr__(self, "backbone_depths", tuple(self.backbone_depths))
        for name in ("backbone_hidden_sizes", "backbone_depths"):
            value = getattr(self, name)
            if len(value) != NUM_STAGES or not all(_is_positive_int(v) for v in value):
                raise ValueError(f"{name} must be {NUM_STAGES} positive integers, got {list(value)}")
        for name in (
            "image_size",
            "num_channels",
            "num_classes",
            "bifpn_num_blocks",
            "bifpn_num_features",
            "seg_out_channels",
        ):
            if not _is_positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("uses_learned_upsample", "from_scratch"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.seg_out_channels % SEG_NUM_GROUPS:
            raise ValueError(
                f"seg_out_channels must be a multiple of {SEG_NUM_GROUPS} (GroupNorm groups), got {self.seg_out_channels}"
            )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> PeakNetConfig:
        """Build from the YAML's ``model.peaknet_config.model`` mapping; missing keys take defaults.

        Raises:
            ValueError: on an unknown key (a typo would otherwise silently fall back to a default)
                or an invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown PeakNet config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**dict(mapping))

    def as_mapping(self) -> dict[str, Any]:
        """The inverse of :meth:`from_mapping`, with lists for YAML."""
        mapping = asdict(self)
        mapping["backbone_hidden_sizes"] = list(self.backbone_hidden_sizes)
        mapping["backbone_depths"] = list(self.backbone_depths)
        return mapping


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class PeakNet(nn.Module):
    """Bragg-peak segmentation network.

    ``forward(x)``: (B, num_channels, H, W) float -> (B, num_classes, H, W) logits in the
    weights' dtype (the input is cast to it). H and W must be multiples of 32.
    """

    def __init__(self, config: PeakNetConfig) -> None:
        super().__init__()
        self.config = config
        num_features = config.bifpn_num_features
        self.backbone = ConvNextV2Backbone(
            config.num_channels, config.backbone_hidden_sizes, config.backbone_depths, PATCH_SIZE
        )
        self.backbone_to_bifpn = nn.ModuleList(
            nn.Conv2d(channels, num_features, kernel_size=1) for channels in config.backbone_hidden_sizes
        )
        self.bifpn = BiFPN(
            config.bifpn_num_blocks, num_features, len(LEVEL_STRIDES), BIFPN_BASE_LEVEL, BIFPN_FUSION_EPS
        )
        self.seg_lateral_layers = build_lateral_layers(
            LEVEL_STRIDES, num_features, config.seg_out_channels, SEG_NUM_GROUPS
        )
        self.head_segmask = nn.Conv2d(config.seg_out_channels, config.num_classes, kernel_size=1)
        self.head_upsample_layer = (
            build_learned_upsample(config.seg_out_channels, config.num_classes, LEVEL_STRIDES[0])
            if config.uses_learned_upsample
            else None
        )
        #: Sum the head's coarse branches at stride 8 and project them there (seg_head module
        #: docstring); False runs the public PeakNet's order, equal up to rounding.
        self.sum_before_upsample = True

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the weights (and of the outputs)."""
        return self.head_segmask.weight.dtype

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is (B, num_channels, H, W) with H, W multiples of 32."""
        if x.ndim != 4:
            raise ValueError(f"PeakNet expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        _, channels, height, width = x.shape
        if channels != self.config.num_channels:
            raise ValueError(f"PeakNet was built for {self.config.num_channels} channel(s), input has {channels}")
        if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
            raise ValueError(
                f"PeakNet input height and width must be multiples of {INPUT_MULTIPLE}, got {height}x{width}; "
                "pad the image first"
            )

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """BiFPN outputs for ``x``: four (B, bifpn_num_features, H/s, W/s) maps, s = 4, 8, 16, 32."""
        self.check_input(x)
        stage_maps = self.backbone(x.to(self.dtype))
        pyramid = [adapter(fmap) for adapter, fmap in zip(self.backbone_to_bifpn, stage_maps)]
        return self.bifpn(pyramid)

    def _project_head(
        self, features: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The 1x1 projection ``(weight, bias)`` of the fused pyramid, (B, K, H/4, W/4), and the fused
        map (B, seg_out_channels, H/4, W/4) when the learned upsample needs it (else None)."""
        if not self.sum_before_upsample:
            fused = fuse_pyramid(self.seg_lateral_layers, features, sum_before_upsample=False)
            return F.conv2d(fused, weight, bias), fused
        fine, coarse = split_pyramid(self.seg_lateral_layers, features)
        projected = project_parts(fine, coarse, weight, bias)  # the same with or without the learned upsample
        return projected, None if self.head_upsample_layer is None else fuse_parts(fine, coarse)

    def forward_head(self, features: Sequence[torch.Tensor], upsample: bool = True) -> torch.Tensor:
        """Logits from BiFPN outputs.

        Returns (B, num_classes, H, W) if ``upsample`` else the stride-4 logits
        (B, num_classes, H/4, W/4), taken before the bilinear upsample and without the learned
        upsample's residual (which exists at full resolution only).
        """
        logits, fused = self._project_head(features, self.head_segmask.weight, self.head_segmask.bias)
        if not upsample:
            return logits
        logits = resize.bilinear(logits, LEVEL_STRIDES[0])
        if self.head_upsample_layer is not None:
            logits = logits + self.head_upsample_layer(fused)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, num_channels, H, W) -> logits (B, num_classes, H, W)."""
        return self.forward_head(self.forward_features(x))

    def forward_peak_score(self, x: torch.Tensor) -> torch.Tensor:
        """Peak-vs-background score ``logit[1] - logit[0]``, (B, 1, H, W); ``> 0`` where argmax is 1.

        Computed at stride 4 with the head's weight differences and upsampled afterwards, which is
        equal (up to rounding) to the difference of :meth:`forward`'s logits, at a fraction of the
        memory: bilinear upsampling and the learned ConvTranspose are both linear.
        Only defined for two-class models.
        """
        return self.forward_peak_score_head(self.forward_features(x))

    def forward_peak_score_head(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The head of :meth:`forward_peak_score`: BiFPN outputs -> (B, 1, H, W) peak score."""
        if self.config.num_classes != 2:
            raise ValueError(f"peak score needs a 2-class model, this one has {self.config.num_classes} classes")
        weight, bias = self.head_segmask.weight, self.head_segmask.bias
        score, fused = self._project_head(features, weight[1:2] - weight[0:1], bias[1:2] - bias[0:1])
        score = resize.bilinear(score, LEVEL_STRIDES[0])
        if self.head_upsample_layer is not None:
            deconv = self.head_upsample_layer[0]
            score = score + F.conv_transpose2d(
                fused,
                deconv.weight[:, 1:2] - deconv.weight[:, 0:1],
                deconv.bias[1:2] - deconv.bias[0:1],
                stride=deconv.stride,
                padding=deconv.padding,
            )
        return score


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements in ``model``."""
    return sum(p.numel() for p in model.parameters())
