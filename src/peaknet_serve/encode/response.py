"""Response bodies: the JSON peak list and a CrystFEL-readable CXI peak file.

Both take the per-frame dicts of :func:`peaknet_serve.device.peaks.peaks_to_frames`:
``{"num_peaks": K, "panel": [...], "ss": [...], "fs": [...], "npix": [...], "intensity": [...]}``
with ``ss``/``fs`` in pixel-index coordinates of the panel (pixel centre at integer values).

CXI layout, as CrystFEL reads it (libcrystfel ``image-hdf5.c``, ``image_hdf5_read_peaks_cxi``):

* the geometry file names the group, ``peak_list = /entry_1/result_1``, and
  ``peak_list_type = cxi`` (or the file ends in ``.cxi``); indexamajig runs with ``--peaks=cxi``;
* ``nPeaks`` is 1-D, one entry per event, read as native int; ``peakXPosRaw``,
  ``peakYPosRaw`` and ``peakTotalIntensity`` are 2-D ``(events, max_peaks)``, read as float, and
  row ``i`` belongs to event ``//i`` (the first placeholder dimension of the data);
* X is fast scan and Y slow scan in *file* ("raw") coordinates of the data array, mapped to
  panels through the geometry's ``min_fs/max_fs/min_ss/max_ss``;
* CrystFEL adds 0.5 px to both unless ``--no-half-pixel-shift``: the file convention is the
  Cheetah/psocake one, pixel centre at integer index, which is what we write.

Here the ``P`` panels of a frame are stacked along slow scan into one ``(P*H, W)`` slab, so
``X = fs`` and ``Y = panel * H + ss``; the matching geometry has ``pN/min_ss = N*H``,
``pN/max_ss = N*H + H - 1``, ``min_fs = 0``, ``max_fs = W - 1``. ``peakNPixels`` (float32, as
Cheetah and OnDA write it) is added for other readers. The file holds peaks only: to index, give
indexamajig a CXI file that also has the frames at ``/entry_1/data_1/data`` (for example copy the
``/entry_1/result_1`` group into the data file).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from peaknet_serve.wire import CXI_MAX_PEAKS, CXI_PEAK_GROUP

__all__ = ["CXI_PEAK_GROUP", "cxi_peak_arrays", "cxi_response", "json_response"]



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


def _strongest_first(intensity: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the ``limit`` largest intensities, returned in their original order."""
    if intensity.size <= limit:
        return np.arange(intensity.size)
    strongest = np.argsort(-intensity, kind="stable")[:limit]
    return np.sort(strongest)


def cxi_peak_arrays(
    frames: list[dict[str, Any]], shape: Sequence[int], max_peaks: int = CXI_MAX_PEAKS
) -> dict[str, np.ndarray]:
    """The CXI peak datasets as numpy arrays (see the module docstring for the layout).

    A frame with more than ``max_peaks`` peaks keeps the ``max_peaks`` brightest (largest total
    intensity), in their original order; ``dropped[i]`` counts what frame ``i`` lost.

    Returns:
        ``nPeaks`` int32 ``(N,)``; ``peakXPosRaw``, ``peakYPosRaw``, ``peakTotalIntensity``,
        ``peakNPixels`` float32 ``(N, max_peaks)``, zero past ``nPeaks``;
        ``dropped`` int64 ``(N,)``.
    """
    n_frames, _, height, _ = _frame_shape(shape)
    if len(frames) != n_frames:
        raise ValueError(f"{len(frames)} frames for shape {tuple(shape)}")
    if max_peaks < 1:
        raise ValueError("max_peaks must be >= 1")
    arrays = {
        name: np.zeros((n_frames, max_peaks), dtype=np.float32)
        for name in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakNPixels")
    }
    n_peaks = np.zeros(n_frames, dtype=np.int32)
    dropped = np.zeros(n_frames, dtype=np.int64)
    for i, frame in enumerate(frames):
        intensity = np.asarray(frame["intensity"], dtype=np.float64)
        kept = _strongest_first(intensity, max_peaks)
        k = kept.size
        n_peaks[i] = k
        dropped[i] = intensity.size - k
        panel = np.asarray(frame["panel"], dtype=np.float64)[kept]
        arrays["peakXPosRaw"][i, :k] = np.asarray(frame["fs"], dtype=np.float64)[kept]
        arrays["peakYPosRaw"][i, :k] = (
            panel * height + np.asarray(frame["ss"], dtype=np.float64)[kept]
        )
        arrays["peakTotalIntensity"][i, :k] = intensity[kept]
        arrays["peakNPixels"][i, :k] = np.asarray(frame["npix"], dtype=np.float64)[kept]
    return {"nPeaks": n_peaks, **arrays, "dropped": dropped}


def cxi_response(
    frames: list[dict[str, Any]], shape: Sequence[int], max_peaks: int = CXI_MAX_PEAKS
) -> bytes:
    """The ``application/x-hdf5`` body: an in-memory CXI file with the peaks of ``N`` frames.

    Datasets under ``/entry_1/result_1``: ``nPeaks`` int32 ``(N,)``; ``peakXPosRaw`` (fs),
    ``peakYPosRaw`` (``panel * H + ss``), ``peakTotalIntensity`` (ADU), ``peakNPixels``, all
    float32 ``(N, max_peaks)`` zero-padded. Frames with more than ``max_peaks`` peaks keep the
    brightest; the group attribute ``peaks_dropped`` (int64 ``(N,)``) says how many each lost.
    Attributes ``max_peaks``, ``panels``, ``panel_shape`` and ``slab_layout`` describe the layout.
    """
    n_frames, panels, height, width = _frame_shape(shape)
    arrays = cxi_peak_arrays(frames, shape, max_peaks)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as cxi:
        cxi.attrs["cxi_version"] = 150
        group = cxi.require_group(CXI_PEAK_GROUP)
        for name in ("nPeaks", "peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakNPixels"):
            group.create_dataset(name, data=arrays[name])
        group.attrs["peaks_dropped"] = arrays["dropped"]
        group.attrs["max_peaks"] = max_peaks
        group.attrs["panels"] = panels
        group.attrs["panel_shape"] = np.array([height, width], dtype=np.int64)
        group.attrs["slab_layout"] = (
            "panels stacked along slow scan: peakXPosRaw = fs, peakYPosRaw = panel * H + ss; "
            "pixel centre at integer coordinates (CrystFEL adds its half-pixel shift)"
        )
    return buffer.getvalue()
