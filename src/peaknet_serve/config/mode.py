"""The serving mode: how the network runs, decided once from the settings and the device.

Every place that runs PeakNet the way the server does (the handler, the benchmarks, the evaluation)
takes a :class:`ServingMode` and hands it to :func:`peaknet_serve.pipeline.build_finder`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from peaknet_serve.config.precision import dtype_name, resolve_precision

if TYPE_CHECKING:
    from peaknet_serve.config.settings import HandlerSettings


@dataclass(frozen=True)
class ServingMode:
    """How the network runs.

    Attributes:
        dtype: weights and network-input dtype (float32, bfloat16, float16).
        autocast: ``torch.autocast`` dtype on CUDA, or None: every op in ``dtype``. Autocast computes
            layer_norm/group_norm in float32 and returns float32, so their outputs take twice the memory.
        compile: ``torch.compile`` mode ("default", "reduce-overhead", ...) or None: eager.
        channels_last: weights and inputs in channels_last memory format.
        depthwise_padding: before the first compiled run, time the 7x7 depthwise convs at each warm-up
            shape plain and zero-padded, and keep the faster (CUDA; :mod:`peaknet_serve.model.depthwise`).
        merge_separable: fold the BiFPN's 1x1 depthwise convs into their pointwise convs after loading
            (:func:`peaknet_serve.model.bifpn.merge_separable_convs`): one GEMM each, equal up to rounding.
    """

    dtype: torch.dtype = torch.float32
    autocast: torch.dtype | None = None
    compile: str | None = None
    channels_last: bool = False
    depthwise_padding: bool = False
    merge_separable: bool = False

    @classmethod
    def from_settings(
        cls, settings: HandlerSettings, device: torch.device, env: Mapping[str, str] = os.environ
    ) -> ServingMode:
        """The handler's mode: precision resolved against the device (``PEAKNET_PRECISION`` in ``env``
        first); compile and depthwise padding only on CUDA; autocast only for a reduced dtype on CUDA."""
        dtype = resolve_precision(settings.precision, device, env)
        cuda = device.type == "cuda"
        return cls(
            dtype=dtype,
            autocast=dtype if settings.autocast and cuda and dtype != torch.float32 else None,
            compile=settings.compile_mode if settings.compile and cuda else None,
            channels_last=settings.channels_last,
            depthwise_padding=settings.depthwise_padding and cuda,
            merge_separable=settings.merge_separable and cuda,
        )

    def describe(self) -> str:
        """One line for logs: ``bfloat16, autocast bfloat16, compiled (default), channels_last``."""
        parts = [
            dtype_name(self.dtype),
            f"autocast {dtype_name(self.autocast)}" if self.autocast else "no autocast",
            f"compiled ({self.compile})" if self.compile else "eager",
        ]
        if self.channels_last:
            parts.append("channels_last")
        if self.depthwise_padding:
            parts.append("depthwise padding tuned")
        if self.merge_separable:
            parts.append("separable convs merged")
        return ", ".join(parts)
