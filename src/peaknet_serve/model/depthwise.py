"""Depthwise convolution that may run on a zero-padded input, and the tuner that decides where.

cuDNN picks its kernel for a depthwise conv by shape, and some shapes get a slow fallback. On an
H200 (PyTorch 2.11, cuDNN 9.19), a bf16 channels_last 7x7 depthwise conv over 8 x 192 x 240 x 240
took 8.5 ms (slow at 240 x 240 for every channel count tried, 64-384, and at 192 channels for every
size from 238 to 248 a side), but 0.94 ms at 256 x 256 and 1.17 ms when computed on the input
zero-padded to 248 (``explore_fast_path sweep`` / ``spatial``, log in
``benchmarks/results/explore_fast_path_h200.md``). At 1920 x 1920 the ConvNeXt's second stage
runs at exactly 240 x 240: three such convs took 25 of the fast path's 114 ms.

Padding is exact, not an approximation: a "same" conv reads zeros beyond the image anyway, so
computing it over a larger zero-padded image and cropping the top-left ``H x W`` gives the same
values (up to the kernel's summation order). Which sizes to pad, and to what, is not assumed but
measured on the device at start-up by :func:`tune_depthwise_padding`, since it depends on the GPU
and the cuDNN version.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peaknet_serve.timing import time_samples_ms

__all__ = ["PaddableDepthwiseConv2d", "PaddingChoice", "tune_depthwise_padding"]


class PaddableDepthwiseConv2d(nn.Conv2d):
    """Depthwise ``k x k`` conv, stride 1, "same" zero padding; (B, C, H, W) -> (B, C, H, W).

    ``compute_sizes[(H, W)] = (H', W')`` (H' >= H, W' >= W) makes inputs of size H x W run as if
    they were H' x W' images (zeros below and to the right), cropped back to H x W. Sizes not in
    the mapping run as a plain ``nn.Conv2d``. Parameters and state-dict keys are ``nn.Conv2d``'s.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.compute_sizes: dict[tuple[int, int], tuple[int, int]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        target = self.compute_sizes.get((height, width))
        if target is None:
            return super().forward(x)
        return padded_depthwise_conv(x, self.weight, self.bias, target)


def padded_depthwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, size: tuple[int, int]
) -> torch.Tensor:
    """A "same" depthwise conv of (B, C, H, W) ``x`` computed over a ``size`` = (H', W') image.

    ``x`` is zero-padded by ``k // 2`` on top/left and by ``k // 2 + H' - H`` (``W' - W``) on the
    bottom/right, convolved without padding, and the (B, C, H, W) top-left of the result returned.
    """
    height, width = x.shape[-2:]
    half = weight.shape[-1] // 2
    padded = F.pad(x, (half, half + size[1] - width, half, half + size[0] - height))
    return F.conv2d(padded, weight, bias, groups=x.shape[1])[..., :height, :width]


@dataclass(frozen=True)
class PaddingChoice:
    """The tuner's measurement for one input signature of the depthwise convs."""

    input_shape: tuple[int, ...]  # (B, C, H, W) as seen by the conv
    dtype: torch.dtype  # the conv's compute dtype (autocast's, under autocast)
    modules: int  # convs that see this signature
    plain_ms: float  # median, unpadded
    compute_size: tuple[int, int] | None  # chosen (H', W'); None = run as is
    chosen_ms: float  # median of the chosen way (plain_ms when None)


def tune_depthwise_padding(
    model: nn.Module,
    run: Callable[[], object],
    *,
    extra: Sequence[int] = (8, 16, 32),
    repeats: int = 5,
    min_gain: float = 0.8,
) -> list[PaddingChoice]:
    """Measure each depthwise conv of ``model`` as ``run()`` feeds it, padded or not; keep the faster.

    ``run`` runs ``model`` (eagerly, as it will be served: same batch, dtype, memory format,
    autocast) once. Every distinct input of a :class:`PaddableDepthwiseConv2d` (shape, dtype,
    strides) is then timed as is and padded by each of ``extra`` pixels on the bottom and right
    (median of ``repeats`` after two warm-up calls; CUDA events on a GPU, the wall clock on CPU).
    The fastest padded size is kept when it takes less than ``min_gain`` times the plain time,
    and written to the ``compute_sizes`` of every conv with that input. An earlier choice for
    that size is replaced; other sizes are left alone, so several shapes can be tuned in turn.

    Call it before compiling: a compiled graph keeps the sizes it was traced with. The handler
    tunes on CUDA only, since cuDNN's kernel choice is what this works around.

    Returns:
        One :class:`PaddingChoice` per distinct input, in the order the convs ran.
    """
    convs = [m for m in model.modules() if isinstance(m, PaddableDepthwiseConv2d)]
    seen: dict[tuple, tuple[torch.Tensor, list[PaddableDepthwiseConv2d]]] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        kind = x.device.type
        if torch.is_autocast_enabled(kind):  # the conv will run in autocast's dtype: time it so
            x = x.to(torch.get_autocast_dtype(kind))
        key = (tuple(x.shape), x.dtype, x.stride())
        seen.setdefault(key, (x.detach().clone(memory_format=torch.preserve_format), []))[1].append(module)

    hooks = [conv.register_forward_pre_hook(record) for conv in convs]
    try:
        with torch.inference_mode():
            run()
    finally:
        for hook in hooks:
            hook.remove()

    def median_ms(fn: Callable[[], object], device: torch.device) -> float:
        return statistics.median(time_samples_ms(fn, device, warmup=2, repeats=repeats))

    choices = []
    with torch.inference_mode():
        for x, modules in seen.values():
            conv = modules[0]
            weight, bias = conv.weight.to(x.dtype), None if conv.bias is None else conv.bias.to(x.dtype)
            height, width = x.shape[-2:]
            plain_ms = median_ms(
                lambda conv=conv, x=x, weight=weight, bias=bias: conv._conv_forward(x, weight, bias), x.device
            )
            padded = {}
            for pixels in extra:
                size = (height + pixels, width + pixels)
                padded[size] = median_ms(
                    lambda x=x, weight=weight, bias=bias, size=size: padded_depthwise_conv(x, weight, bias, size),
                    x.device,
                )
            best_size, best_ms = min(padded.items(), key=lambda item: item[1], default=(None, plain_ms))
            if best_size is None or best_ms >= min_gain * plain_ms:
                best_size, best_ms = None, plain_ms
            for module in modules:
                if best_size is None:
                    module.compute_sizes.pop((height, width), None)
                else:
                    module.compute_sizes[(height, width)] = best_size
            choices.append(PaddingChoice(tuple(x.shape), x.dtype, len(modules), plain_ms, best_size, best_ms))
    return choices
