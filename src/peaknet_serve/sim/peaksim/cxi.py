"""CXI-layout HDF5 files of simulated frames, with truth peaks.

Layout (N frames of P panels of H x W pixels; a single-panel detector drops the P axis)::

    /entry_1/data_1/data                 (N, P, H, W) float32 ADU or uint16
    /entry_1/data_1/mask                 (P, H, W) uint8, 1 = good pixel (union over frames: a pixel
                                         bad in any frame is 0); per-frame masks in
    /entry_1/data_1/mask_per_frame       (N, P, H, W) uint8
    /entry_1/result_1/nPeaks             (N,) int32 strong peaks per frame
    /entry_1/result_1/peakXPosRaw        (N, M) float32 fs of each strong peak (0-padded to M)
    /entry_1/result_1/peakYPosRaw        (N, M) float32 slab row = panel * H + ss (Cheetah's
                                         stacked-panel convention)
    /entry_1/result_1/peakTotalIntensity (N, M) float32 expected photons x gain (ADU)
    /entry_1/result_1/peakPanel          (N, M) int32
    /entry_1/result_1/peakSs             (N, M) float32
    /entry_1/result_1/peakFs             (N, M) float32
    /entry_1/result_1/peakStrong         (N, M) uint8 (all 1: the peak lists hold strong peaks)
    /entry_1/result_1/weak/{nPeaks,peakPanel,peakSs,peakFs}   the weak (ignored) spots

Compression (``compression="gzip"`` or ``"lzf"``) uses h5py's built-in filters only, so the files
open anywhere h5py does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from peaknet_serve.sim.peaksim.frame import SimulatedFrame


@dataclass(frozen=True)
class CxiPeaks:
    """Peaks of one frame read back from a CXI file: (M,) arrays."""

    panel: np.ndarray
    ss: np.ndarray
    fs: np.ndarray


def _padded(rows: Sequence[np.ndarray], width: int, dtype) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def write_cxi(
    path: str | Path,
    frames: Sequence[SimulatedFrame],
    *,
    as_uint16: bool = False,
    compression: str | None = None,
    detector: str = "",
) -> Path:
    """Write frames and their truth to a CXI-layout HDF5 file.

    Args:
        path: output file.
        frames: simulated frames of one geometry.
        as_uint16: store data as uint16 (rounded, clipped) instead of float32 ADU.
        compression: None, "gzip" or "lzf" (chunked one panel per chunk).
        detector: geometry name, stored as an attribute.

    Returns:
        The path written.
    """
    path = Path(path)
    single_panel = frames[0].adu.shape[0] == 1
    squeeze = (lambda a: a[0]) if single_panel else (lambda a: a)
    data = np.stack([squeeze(f.uint16 if as_uint16 else f.adu) for f in frames])
    masks = np.stack([squeeze(f.mask) for f in frames])
    n_ss = frames[0].adu.shape[1]
    strong = [np.flatnonzero(f.peaks.strong) for f in frames]
    weak = [np.flatnonzero(f.peaks.weak) for f in frames]
    width = max(1, max(len(s) for s in strong))
    width_weak = max(1, max(len(w) for w in weak))
    chunks = (1, *data.shape[-2:]) if data.ndim == 3 else (1, 1, *data.shape[-2:])
    kwargs = {"compression": compression, "chunks": chunks} if compression else {}
    with h5py.File(path, "w") as h5:
        h5.attrs["creator"] = "peaknet_serve.sim.peaksim"
        h5.attrs["detector"] = detector
        data_group = h5.create_group("entry_1/data_1")
        dset = data_group.create_dataset("data", data=data, **kwargs)
        dset.attrs["units"] = "ADU"
        data_group.create_dataset("mask", data=np.min(masks, axis=0).astype(np.uint8))
        data_group.create_dataset("mask_per_frame", data=masks, **kwargs)
        result = h5.create_group("entry_1/result_1")
        result.create_dataset("nPeaks", data=np.array([len(s) for s in strong], dtype=np.int32))
        panels = [f.peaks.panel[s] for f, s in zip(frames, strong)]
        ss = [f.peaks.ss[s] for f, s in zip(frames, strong)]
        fs = [f.peaks.fs[s] for f, s in zip(frames, strong)]
        gains = [f.params.response.adu_per_photon for f in frames]
        result.create_dataset("peakXPosRaw", data=_padded(fs, width, np.float32))
        result.create_dataset(
            "peakYPosRaw", data=_padded([p * n_ss + s for p, s in zip(panels, ss)], width, np.float32)
        )
        result.create_dataset(
            "peakTotalIntensity",
            data=_padded([f.peaks.photons[s] * g for f, s, g in zip(frames, strong, gains)], width, np.float32),
        )
        result.create_dataset("peakPanel", data=_padded(panels, width, np.int32))
        result.create_dataset("peakSs", data=_padded(ss, width, np.float32))
        result.create_dataset("peakFs", data=_padded(fs, width, np.float32))
        result.create_dataset("peakStrong", data=_padded([np.ones(len(s)) for s in strong], width, np.uint8))
        weak_group = result.create_group("weak")
        weak_group.create_dataset("nPeaks", data=np.array([len(w) for w in weak], dtype=np.int32))
        weak_group.create_dataset(
            "peakPanel", data=_padded([f.peaks.panel[w] for f, w in zip(frames, weak)], width_weak, np.int32)
        )
        weak_group.create_dataset(
            "peakSs", data=_padded([f.peaks.ss[w] for f, w in zip(frames, weak)], width_weak, np.float32)
        )
        weak_group.create_dataset(
            "peakFs", data=_padded([f.peaks.fs[w] for f, w in zip(frames, weak)], width_weak, np.float32)
        )
    return path


def _read_peak_rows(group: h5py.Group, index: int) -> CxiPeaks:
    n = int(group["nPeaks"][index])
    return CxiPeaks(
        group["peakPanel"][index, :n].astype(np.int64),
        group["peakSs"][index, :n].astype(np.float64),
        group["peakFs"][index, :n].astype(np.float64),
    )


def read_truth(path: str | Path, index: int) -> tuple[CxiPeaks, CxiPeaks]:
    """``(strong, weak)`` truth peaks of frame ``index`` of a file written by :func:`write_cxi`."""
    with h5py.File(path, "r") as h5:
        result = h5["entry_1/result_1"]
        return _read_peak_rows(result, index), _read_peak_rows(result["weak"], index)


def read_frame(path: str | Path, index: int) -> np.ndarray:
    """Frame ``index`` as (P, H, W) in its stored dtype (P = 1 for single-panel files)."""
    with h5py.File(path, "r") as h5:
        frame = h5["entry_1/data_1/data"][index]
    return frame[None] if frame.ndim == 2 else frame
