"""ConvNeXt V2 backbone returning four normalised feature maps (strides 4, 8, 16, 32).

Module and parameter names follow HF transformers' ``ConvNextV2Backbone`` so that its state dict
(``embeddings.*``, ``encoder.stages.{i}.*``, ``hidden_states_norms.stage{i}.*``) loads unchanged.
Architecture per Woo et al., "ConvNeXt V2" (2023): a patchify stem, four stages of
depthwise-7x7 / LayerNorm / MLP-with-GRN blocks, 2x2 strided-conv downsampling between stages.

Reduced precision: in bfloat16/float16 the LayerNorm statistics are accumulated in float32 by
PyTorch's kernels; the GRN spatial norm is computed here with a float32 accumulator and only its
small (B, 1, 1, C) result is cast back, so no full feature map is upcast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peaknet_serve.model.depthwise import PaddableDepthwiseConv2d

__all__ = [
    "ChannelsFirstLayerNorm",
    "ConvNextV2Backbone",
    "ConvNextV2Embeddings",
    "ConvNextV2Encoder",
    "ConvNextV2Layer",
    "ConvNextV2Stage",
    "GlobalResponseNorm",
]

#: LayerNorm epsilon used throughout the HF ConvNeXt V2 backbone (its ``layer_norm_eps`` config
#: value only affects the classification model's pooled-output norm, not the backbone).
LAYER_NORM_EPS = 1e-6
#: Epsilon added to the mean feature norm in GRN.
GRN_EPS = 1e-6


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor.

    Works for contiguous and channels_last inputs alike: the permute to (B, H, W, C) is free for
    channels_last tensors. Output has the input's shape, dtype and memory format.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GlobalResponseNorm(nn.Module):
    """Global Response Normalisation on a channels-last (B, H, W, C) tensor.

    ``y = weight * (x * n) + bias + x`` with ``n = ||x||_2 over (H, W) / (mean_C ||x||_2 + eps)``.
    The norm is accumulated in float32 whatever ``x``'s dtype; only the (B, 1, 1, C) factor ``n``
    is cast back.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial_norm = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True, dtype=torch.float32)
        scale = spatial_norm / (spatial_norm.mean(dim=-1, keepdim=True) + GRN_EPS)
        return self.weight * (x * scale.to(x.dtype)) + self.bias + x


class ConvNextV2Embeddings(nn.Module):
    """Patchify stem: (B, C_in, H, W) -> (B, hidden_sizes[0], H/p, W/p), p = patch size."""

    def __init__(self, num_channels: int, hidden_size: int, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_embeddings = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.layernorm = ChannelsFirstLayerNorm(hidden_size, eps=LAYER_NORM_EPS)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.patch_embeddings(pixel_values))


class ConvNextV2Layer(nn.Module):
    """One ConvNeXt V2 block, residual: dwconv7x7 -> LN -> Linear(4x) -> GELU -> GRN -> Linear.

    (B, C, H, W) -> (B, C, H, W); the MLP runs on the (B, H, W, C) view.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = PaddableDepthwiseConv2d(dim, kernel_size=7)  # nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.layernorm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.layernorm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNextV2Stage(nn.Module):
    """Optional downsampling (LN + 2x2 stride-2 conv) followed by ``depth`` blocks.

    (B, in_channels, H, W) -> (B, out_channels, H/s, W/s) with s = 2 if downsampling else 1.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, downsample: bool) -> None:
        super().__init__()
        if downsample:
            self.downsampling_layer = nn.ModuleList(
                [
                    ChannelsFirstLayerNorm(in_channels, eps=LAYER_NORM_EPS),
                    nn.Conv2d(in_channels, out_channels, kernel_size=2, stride=2),
                ]
            )
        else:
            self.downsampling_layer = nn.ModuleList()
        self.layers = nn.ModuleList([ConvNextV2Layer(out_channels) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.downsampling_layer:
            x = module(x)
        for layer in self.layers:
            x = layer(x)
        return x


class ConvNextV2Encoder(nn.Module):
    """The stages in sequence; returns each stage's output (strides 4, 8, 16, 32 for 4 stages)."""

    def __init__(self, hidden_sizes: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        if len(hidden_sizes) != len(depths):
            raise ValueError(f"hidden_sizes {list(hidden_sizes)} and depths {list(depths)} differ in length")
        in_channels = [hidden_sizes[0], *hidden_sizes[:-1]]
        self.stages = nn.ModuleList(
            ConvNextV2Stage(c_in, c_out, depth, downsample=index > 0)
            for index, (c_in, c_out, depth) in enumerate(zip(in_channels, hidden_sizes, depths))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class ConvNextV2Backbone(nn.Module):
    """ConvNeXt V2 feature extractor with a LayerNorm on every stage output.

    Input (B, num_channels, H, W), H and W divisible by ``patch_size * 2**(num_stages - 1)``.
    Output: list of ``num_stages`` tensors, the i-th of shape (B, hidden_sizes[i], H/(4*2^i), W/(4*2^i)),
    in the dtype of the weights.
    """

    def __init__(
        self,
        num_channels: int,
        hidden_sizes: Sequence[int],
        depths: Sequence[int],
        patch_size: int = 4,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.embeddings = ConvNextV2Embeddings(num_channels, hidden_sizes[0], patch_size)
        self.encoder = ConvNextV2Encoder(hidden_sizes, depths)
        self.hidden_states_norms = nn.ModuleDict(
            {
                f"stage{index + 1}": ChannelsFirstLayerNorm(size, eps=LAYER_NORM_EPS)
                for index, size in enumerate(hidden_sizes)
            }
        )

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        stage_outputs = self.encoder(self.embeddings(pixel_values))
        return [norm(x) for norm, x in zip(self.hidden_states_norms.values(), stage_outputs)]
