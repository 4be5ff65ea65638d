"""The ``application/json`` response body: the peak list of every frame of a request.

It takes the per-frame dicts of :func:`peaknet_serve.device.peaks.peaks_to_frames`:
``{"num_peaks": K, "panel": [...], "ss": [...], "fs": [...], "npix": [...], "intensity": [...],
"intensity_raw": [...]}`` with ``ss``/``fs`` in pixel-index coordinates of the panel (pixel centre
at integer values), ``intensity`` background-subtracted and ``intensity_raw`` the plain sum (ADU).
The CrystFEL-readable CXI answer is :mod:`peaknet_serve.encode.cxi`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["json_response"]


def json_response(
    *,
    model: str,
    precision: str,
    device: str,
    shape: Sequence[int],
    dtype: str,
    frames: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``application/json`` body for one request.

    Args:
        model: served model name/description.
        precision: compute dtype the model ran in (e.g. ``"bf16"``).
        device: e.g. ``"cuda:0"`` or ``"cpu"``.
        shape: the request's data as ``(N, P, H, W)``.
        dtype: the request's input dtype (e.g. ``"uint16"``).
        frames: ``N`` per-frame dicts from :func:`peaknet_serve.device.peaks.peaks_to_frames`.
        extra: further top-level keys (must not collide with the ones above).

    Returns:
        ``{"model", "precision", "device", "shape": [N, P, H, W], "dtype", "frames", **extra}``.
    """
    shape = _frame_shape(shape)
    if len(frames) != shape[0]:
        raise ValueError(f"{len(frames)} frames for a request of shape {shape}")
    body: dict[str, Any] = {
        "model": model,
        "precision": precision,
        "device": device,
        "shape": list(shape),
        "dtype": dtype,
        "frames": frames,
    }
    for key, value in (extra or {}).items():
        if key in body:
            raise ValueError(f"extra key {key!r} would overwrite a response field")
        body[key] = value
    return body


def _frame_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    if len(shape) != 4 or any(int(s) < 0 for s in shape):
        raise ValueError(f"shape must be (N, P, H, W), got {tuple(shape)}")
    n, p, h, w = (int(s) for s in shape)
    return n, p, h, w
