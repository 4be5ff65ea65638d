"""Host-to-device transfer of decoded frames, in their wire dtype.

The decoded arrays are zero-copy views of the request bodies. On a CUDA device they are gathered
into one pinned (page-locked) staging tensor — PyTorch's caching host allocator recycles it
between batches — and copied asynchronously in their own dtype; the float conversion happens on
the device (:mod:`handler.preprocess`). On the CPU a single request is used without any copy.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor over a (possibly read-only) numpy array.

    Request bodies are immutable ``bytes``; torch warns about non-writable buffers, but nothing
    here writes to them, so the warning is silenced for this call only.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def upload_panels(arrays: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Stack the panels of several requests and move them to ``device``.

    Args:
        arrays: each (N_i, P_i, H, W), all of one wire dtype and one (H, W).
        device: target device.

    Returns:
        (sum_i N_i * P_i, H, W) tensor in the wire dtype on ``device``. On CUDA the copy is
        non-blocking: later kernels on the current stream are ordered after it.
    """
    h, w = arrays[0].shape[-2:]
    flat = [a.reshape(-1, h, w) for a in arrays]
    total = sum(f.shape[0] for f in flat)
    if device.type != "cuda":
        if len(flat) == 1:
            return as_tensor(flat[0])
        return as_tensor(np.concatenate(flat))
    staging = torch.empty((total, h, w), dtype=as_tensor(flat[0][:0]).dtype, pin_memory=True)
    start = 0
    for panels in flat:
        staging[start:start + panels.shape[0]].copy_(as_tensor(panels))
        start += panels.shape[0]
    return staging.to(device, non_blocking=True)
