"""Request size limits, checked on declared sizes before anything large is allocated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from ..errors import PayloadTooLarge


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds for one request. All are checked before the pixels are allocated or read.

    The defaults are the shipped model-config.yaml's.

    Attributes:
        max_body_bytes: request body length.
        max_pixels: N * P * H * W after decoding (default: 16 frames of 16 ePix10k panels).
        max_frames: N.
        max_panels_per_frame: P.
        max_side: H and W, each.
        max_decoded_bytes: N * P * H * W * itemsize of an HDF5 dataset (default: ``max_pixels``
            of float64, so only ``max_pixels`` binds unless this is set lower).
        max_chunks_per_frame: chunk positions of a chunked HDF5 dataset per frame: a small file
            cannot make the reader visit millions of tiny chunks (one chunk per frame is 1, one
            per ePix10k panel 16, one per 11 rows of each panel 512).
        max_json_bytes: the JSON part of an Open Inference Protocol request (its whole body
            when the tensor is sent as JSON ``data``; default fits one uint16 ePix10k2M frame).
    """

    max_body_bytes: int = 256 << 20
    max_pixels: int = 16 * 16 * 352 * 384
    max_frames: int = 16
    max_panels_per_frame: int = 64
    max_side: int = 8192
    max_decoded_bytes: int = 16 * 16 * 352 * 384 * 8
    max_chunks_per_frame: int = 1024
    max_json_bytes: int = 32 << 20


def check_body_size(num_bytes: int, limits: DecodeLimits) -> None:
    """Raise 413 ``too_large`` when the request body is longer than ``limits.max_body_bytes``."""
    if num_bytes > limits.max_body_bytes:
        raise PayloadTooLarge(
            "too_large",
            f"request body is {num_bytes} bytes; the limit is {limits.max_body_bytes} bytes.",
        )


def check_frames_shape(shape: tuple[int, int, int, int], limits: DecodeLimits) -> None:
    """Raise 413 ``too_large`` when frames of ``shape`` (N, P, H, W) exceed any limit.

    Works on Python ints, so absurd declared shapes cannot overflow.
    """
    n, p, h, w = shape
    if n > limits.max_frames:
        _too_large(f"{n} frames exceed the limit of {limits.max_frames} frames per request")
    if p > limits.max_panels_per_frame:
        _too_large(f"{p} panels per frame exceed the limit of {limits.max_panels_per_frame}")
    if h > limits.max_side or w > limits.max_side:
        _too_large(f"panel size {h}x{w} exceeds the limit of {limits.max_side} pixels per side")
    pixels = n * p * h * w
    if pixels > limits.max_pixels:
        _too_large(f"{pixels} pixels exceed the limit of {limits.max_pixels} pixels per request")


def check_decoded_bytes(num_bytes: int, limits: DecodeLimits) -> None:
    """Raise 413 ``too_large`` when frames of ``num_bytes`` bytes exceed ``limits.max_decoded_bytes``."""
    if num_bytes > limits.max_decoded_bytes:
        _too_large(f"{num_bytes} bytes of frames exceed the limit of {limits.max_decoded_bytes} bytes per request")


def _too_large(reason: str) -> NoReturn:
    raise PayloadTooLarge("too_large", f"{reason}; split the request into smaller ones.")
