"""Bilinear resizing (align_corners=False) for the BiFPN and the segmentation head.

:func:`upsample_bilinear_int` computes ``F.interpolate(x, scale_factor=s, mode="bilinear",
align_corners=False)`` for an integer ``s >= 2`` without a gather. PyTorch maps output index ``d``
to the source coordinate ``max((d + 0.5) / s - 0.5, 0)``, blends the two inputs at
``floor(src)`` and ``floor(src) + 1`` (the latter clamped to ``n - 1``) with weights
``1 - frac(src)`` and ``frac(src)``. With ``d = s * i + p`` the source is ``i + f_p``,
``f_p = (p + 0.5) / s - 0.5`` in (-0.5, 0.5), so output phase ``p`` of every input pixel ``i`` is a
fixed two-tap blend::

    f_p < 0:  (1 + f_p) * x[i] + (-f_p) * x[i - 1]      factor 2: 0.75, 0.25    factor 4: 0.625, 0.375
    f_p > 0:  (1 - f_p) * x[i] + f_p * x[i + 1]                                           0.875, 0.125
    f_p = 0:  x[i]                                        (odd factors, middle phase)

PyTorch's borders are exactly edge replication: at ``i = 0`` the clamp of ``src`` at 0 gives
``x[0]`` (the blend with ``x[-1] := x[0]``), at ``i = n - 1`` the index clamp blends ``x[n - 1]``
with itself (``x[n] := x[n - 1]``). The blend is applied separably along H and W, and the ``s``
phases are interleaved by stack + reshape: shifted copies and elementwise arithmetic only, which
Inductor fuses with the surrounding pointwise ops without index gathers.

:func:`bilinear` is what the model layers call. The environment variable ``PEAKNET_RESIZE`` (read
once, at import, by :func:`resize_mode`) selects: ``interpolate`` (default) ``F.interpolate``
everywhere; ``blend`` the gather-free route while a graph is traced (``torch.compiler.is_compiling()``:
``torch.compile`` and ``torch.export``, so also AOTInductor packages), eager runs keeping
``F.interpolate``, bit for bit the public PeakNet's. Downsampling (factor 0.5) and non-integer
factors always run ``F.interpolate``.

``blend`` is an experiment, off by default: on the H200 (33M config, 64 ePix10k2M panels per batch,
``benchmarks/results/model_upsample_blend_h200.md``) the compiled fast path takes 31.8 ms per batch
with it against 29.1 ms with ``F.interpolate``, at the same mask agreement with float32.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = [
    "RESIZE_ENV",
    "RESIZE_MODE",
    "RESIZE_MODES",
    "bilinear",
    "phase_taps",
    "resize_mode",
    "upsample_bilinear_int",
]

#: Environment variable choosing the traced-graph resize (:func:`resize_mode`).
RESIZE_ENV = "PEAKNET_RESIZE"
#: ``interpolate`` (default): F.interpolate always; ``blend``: gather-free integer upsampling inside traced graphs.
RESIZE_MODES = ("interpolate", "blend")


def resize_mode(env: Mapping[str, str] = os.environ) -> str:
    """``$PEAKNET_RESIZE`` (``interpolate`` when unset or empty), one of :data:`RESIZE_MODES`; else ValueError."""
    mode = env.get(RESIZE_ENV, "").strip().lower() or "interpolate"
    if mode not in RESIZE_MODES:
        raise ValueError(f"{RESIZE_ENV}={env[RESIZE_ENV]!r}: expected one of {', '.join(RESIZE_MODES)}")
    return mode


#: The process's resize mode, read once at import.
RESIZE_MODE = resize_mode()


def phase_taps(factor: int) -> list[tuple[int, float]]:
    """Per output phase ``p`` of an integer ``factor``: ``(offset, weight)``, the phase being
    ``x[i] + weight * (x[i + offset] - x[i])`` (offset -1, +1, or 0 with weight 0)."""
    taps = []
    for phase in range(factor):
        shift = (phase + 0.5) / factor - 0.5
        taps.append((-1, -shift) if shift < 0 else (1, shift) if shift > 0 else (0, 0.0))
    return taps


def _upsample_dim(x: torch.Tensor, factor: int, dim: int) -> torch.Tensor:
    """Linear upsampling of ``x`` by ``factor`` along ``dim`` (align_corners=False, edges replicated)."""
    n = x.shape[dim]
    previous = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
    following = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
    phases = []
    for offset, weight in phase_taps(factor):
        if offset == 0:
            phases.append(x)
        else:
            neighbour = previous if offset < 0 else following
            phases.append(x + (neighbour - x) * weight)
    return torch.stack(phases, dim=dim + 1).flatten(dim, dim + 1)


def upsample_bilinear_int(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear upsampling by an integer ``factor`` (align_corners=False) without index gathers.

    Equals ``F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)`` up to
    rounding: the blend runs in float32 for float16/bfloat16 inputs (as PyTorch's kernels and
    Inductor's generated code do) and is rounded to ``x``'s dtype once; float32 and float64 run
    in their own dtype.

    Args:
        x: (B, C, H, W), floating point, any memory format, H and W >= 1.
        factor: integer >= 2.

    Returns:
        (B, C, factor * H, factor * W) in ``x``'s dtype; channels_last when ``x`` is (as
        F.interpolate's Inductor lowering decides: not on CUDA for fewer than 16 channels).
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
    if isinstance(factor, bool) or int(factor) != factor or factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
    factor = int(factor)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if x.device.type == "cuda" and x.shape[1] < 16:
        channels_last = False
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = _upsample_dim(_upsample_dim(work, factor, 2), factor, 3).to(x.dtype)
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def bilinear(x: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) ``x`` by ``scale_factor`` (align_corners=False), in ``x``'s dtype.

    Inside a traced graph (``torch.compiler.is_compiling()``) and with :data:`RESIZE_MODE` ``blend``,
    an integer factor >= 2 runs :func:`upsample_bilinear_int`; everything else (eager runs,
    downsampling, other factors) runs ``F.interpolate``.
    """
    if RESIZE_MODE == "blend" and torch.compiler.is_compiling():
        factor = int(scale_factor)
        if factor == scale_factor and factor >= 2:
            return upsample_bilinear_int(x, factor)
    return F.interpolate(x, scale_factor=scale_factor, mode="bilinear", align_corners=False)
