"""Device-side preparation of detector panels for the network.

Everything here runs on the model's device, after the frames were copied there in their wire
dtype (uint16 moves half the bytes of float32). Nothing creates a float32 copy on the host.

Pipeline for a batch of panels ``raw`` (B, H, W) in any numeric dtype:

1. ``sanitize``: cast to float32 on the device, set NaN/±inf pixels to 0 and count them.
2. ``normalize_images``: per-image instance norm as the public PeakNet applies it
   (``peaknet.tensor_transforms.InstanceNorm``: mean and population variance over the image,
   ``(x - mean) / sqrt(var + eps)``), statistics in float32.
3. ``pad_to_multiple``: zero-pad the bottom/right edge to the network's multiple of 32, 64 at least (zero is the
   normalised mean, so the padding adds no structure); results are cropped back afterwards.
4. cast to the model's dtype (bf16/fp16/float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INSTANCE_NORM_EPS = 1e-6
NETWORK_STRIDE = 32


def sanitize(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cast panels to float32 and zero non-finite pixels.

    Args:
        raw: (..., H, W) any real dtype, on the device.

    Returns:
        ``(x, nonfinite)``: x float32 of the same shape with NaN/±inf set to 0, and a 0-d int64
        tensor counting the replaced pixels (kept on the device: no synchronisation here).
    """
    x = raw.float()
    if raw.dtype.is_floating_point:
        finite = torch.isfinite(x)
        nonfinite = (~finite).sum()
        x = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
    else:
        nonfinite = torch.zeros((), dtype=torch.int64, device=x.device)
    return x, nonfinite


def normalize_images(x: torch.Tensor, eps: float = INSTANCE_NORM_EPS) -> torch.Tensor:
    """Instance-normalise each image over its last two (or three, for (B, C, H, W)) dims.

    Args:
        x: (B, H, W) or (B, C, H, W) float32 (use :func:`sanitize` first).
        eps: added to the variance before the square root, as the public PeakNet does.

    Returns:
        Tensor of the same shape and dtype, zero mean and unit (population) variance per image.
    """
    dims = tuple(range(1, x.dim()))
    x = x.float()
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + eps)


def padded_size(size: int, multiple: int = NETWORK_STRIDE) -> int:
    """Smallest multiple of ``multiple`` that is >= ``size``, and at least ``2 * multiple``.

    The floor keeps the network's coarsest level (stride ``multiple``) at 2 x 2 or more: a
    per-channel norm there (the head's GroupNorm) needs more than one value per channel, so a panel
    of 32 x 32 pixels or less would fail the whole micro-batch.
    """
    return max(-(-size // multiple) * multiple, 2 * multiple)


def pad_to_multiple(x: torch.Tensor, multiple: int = NETWORK_STRIDE) -> torch.Tensor:
    """Zero-pad the last two dims (bottom and right) up to multiples of ``multiple``.

    Args:
        x: (..., H, W).

    Returns:
        (..., Hp, Wp) with Hp, Wp the padded sizes; ``x`` itself when no padding is needed.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = padded_size(h, multiple) - h, padded_size(w, multiple) - w
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


def network_input(image: torch.Tensor, dtype: torch.dtype, multiple: int = NETWORK_STRIDE) -> torch.Tensor:
    """Sanitised panels -> network input.

    Args:
        image: (B, H, W) float32, NaN/inf already zeroed (:func:`sanitize`).
        dtype: the model's compute dtype.
        multiple: spatial multiple the network needs.

    Returns:
        (B, 1, Hp, Wp) in ``dtype``: instance-normalised, then zero-padded.
    """
    return pad_to_multiple(normalize_images(image), multiple).unsqueeze(1).to(dtype)


def prepare_panels(
    raw: torch.Tensor, dtype: torch.dtype, multiple: int = NETWORK_STRIDE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn raw panels into network input.

    Args:
        raw: (B, H, W) panels in their wire dtype (uint16, float32, ...), already on the device.
        dtype: the model's compute dtype.
        multiple: spatial multiple the network needs.

    Returns:
        ``(x, nonfinite)``: x (B, 1, Hp, Wp) in ``dtype``, normalised and zero-padded; nonfinite a
        0-d int64 device tensor with the number of NaN/inf pixels that were set to 0.
    """
    image, nonfinite = sanitize(raw)
    return network_input(image, dtype, multiple), nonfinite
