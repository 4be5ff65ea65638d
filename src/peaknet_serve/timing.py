"""Timing a callable on its device: CUDA events around each call on a GPU, the wall clock on CPU.

One implementation for the handler's start-up measurements (:mod:`peaknet_serve.model.depthwise`) and
the benchmarks (:func:`benchmarks.timing.time_ms`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["time_samples_ms"]


def time_samples_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Run ``fn`` ``warmup`` times, then return the ms of each of ``repeats`` further runs.

    On CUDA each run is bracketed by events and waited for, so the figure is the GPU's time for
    the work ``fn`` launched; elsewhere it is ``time.perf_counter`` around the call.
    """
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop))
    else:
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            samples.append(1e3 * (time.perf_counter() - started))
    return samples
