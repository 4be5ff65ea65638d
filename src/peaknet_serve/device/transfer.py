"""Host-to-device transfer of decoded frames, in their wire dtype.

The decoded arrays are zero-copy views of the request bodies. On a CUDA device they are gathered
into one pinned (page-locked) staging tensor — PyTorch's caching host allocator recycles it
between batches — and copied asynchronously in their own dtype; the float conversion happens on
the device (:mod:`peaknet_serve.device.preprocess`). On the CPU a single request is used without any copy.

:class:`PanelSource` does the same one micro-batch at a time on a side stream, so that
:meth:`peaknet_serve.device.finder.PanelPeakFinder.find_pipelined` can stage and copy the next micro-batch
while the device computes the current one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

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
    source = PanelSource(arrays)
    panels, _ = source.upload(0, len(source), device)
    return panels


@dataclass
class PanelSource:
    """The panels of several requests as one (B, H, W) sequence, uploaded range by range.

    Args:
        arrays: each (N_i, P_i, H, W), all of one wire dtype and one (H, W); zero-copy views of
            the request bodies (never written).
    """

    arrays: list[np.ndarray]
    _flat: list[np.ndarray] = field(init=False, repr=False)
    _starts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        h, w = self.arrays[0].shape[-2:]
        self._flat = [a.reshape(-1, h, w) for a in self.arrays]
        self._starts = np.cumsum([0] + [f.shape[0] for f in self._flat])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def panel_shape(self) -> tuple[int, int]:
        """(H, W) of every panel."""
        h, w = self.arrays[0].shape[-2:]
        return int(h), int(w)

    def pieces(self, start: int, stop: int) -> list[np.ndarray]:
        """The (k, H, W) views of the requests that make up panels ``[start, stop)``, in order."""
        out = []
        for index, panels in enumerate(self._flat):
            lo, hi = max(start - self._starts[index], 0), min(stop - self._starts[index], panels.shape[0])
            if lo < hi:
                out.append(panels[lo:hi])
        return out

    def upload(
        self, start: int, stop: int, device: torch.device, stream: torch.cuda.Stream | None = None
    ) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Panels ``[start, stop)`` on ``device`` in the wire dtype.

        On CUDA they are staged in pinned memory and copied on ``stream`` (the current stream when
        None); the returned event marks the end of the copy: wait for it on the stream that reads
        the tensor, and ``record_stream`` the tensor there. On the CPU: a view or one copy, no event.
        """
        pieces = self.pieces(start, stop)
        if device.type != "cuda":
            return (as_tensor(pieces[0]) if len(pieces) == 1 else as_tensor(np.concatenate(pieces))), None
        h, w = pieces[0].shape[-2:]
        staging = torch.empty((stop - start, h, w), dtype=as_tensor(pieces[0][:0]).dtype, pin_memory=True)
        offset = 0
        for piece in pieces:
            staging[offset : offset + piece.shape[0]].copy_(as_tensor(piece))
            offset += piece.shape[0]
        stream = stream if stream is not None else torch.cuda.current_stream(device)
        with torch.cuda.stream(stream):
            panels = staging.to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        return panels, done
