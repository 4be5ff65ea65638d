"""CXI peak files that CrystFEL indexes: peaks, frames and mask in one slab layout.

CrystFEL 0.12's ``--peaks=cxi`` reader (libcrystfel ``image-hdf5.c``) reads ``nPeaks``,
``peakXPosRaw``, ``peakYPosRaw`` and ``peakTotalIntensity`` from the geometry's ``peak_list``
group, row ``i`` for event ``//i``, and places every peak with *slab* coordinates
(``data_template_slabby_file_to_panel_coords``): X is fast scan and Y slow scan of one 2-D image
per event, matched against the panels' ``min/max_fs/ss``. A layout with the panels as a separate
array dimension cannot place them. So every file here holds one slab per frame: the ``P`` panels
of ``H x W`` pixels stacked along slow scan into ``(P*H, W)``, the layout of the geometry files of
:mod:`peaknet_serve.geometry`.

    /entry_1/result_1/nPeaks                  (N,)            int32
    /entry_1/result_1/peakXPosRaw             (N, max_peaks)  float32  fs
    /entry_1/result_1/peakYPosRaw             (N, max_peaks)  float32  panel * H + ss
    /entry_1/result_1/peakTotalIntensity      (N, max_peaks)  float32  background-subtracted ADU
    /entry_1/result_1/peakTotalIntensityRaw   (N, max_peaks)  float32  raw ADU sum over the peak
    /entry_1/result_1/peakNPixels             (N, max_peaks)  float32  pixels in the peak
    /entry_1/data_1/data                      (N, P*H, W)     the frames (files of peakfind)
    /entry_1/data_1/mask                      (P*H, W) uint8  1 = good pixel

Positions are pixel-index coordinates (the first pixel's centre is 0.0, the Cheetah convention),
which CrystFEL's default half-pixel shift expects. ``peakTotalIntensity`` is the peak's sum minus
its pixel count times the mean of a local annulus around it, as peakfinder8 subtracts; the raw
sum is ``peakTotalIntensityRaw``.

The frames of a data-bearing file are an HDF5 *virtual dataset* over the input file, whatever its
layout: ``(N, P, H, W)`` stacks are mapped panel by panel onto the slab, ``(N, P*H, W)`` slabs and
single panels as they are. The source file is named by its path *relative to the peak file's
folder*, which HDF5 resolves from the peak file's own folder: moving the run folder with both
files in it keeps the link; moving only one of them breaks it (the frames then read as the fill
value; ``HDF5_VDS_PREFIX`` set to a folder from which the relative path reaches the frames mends it).
The mask is the input's (``mask`` next to the frames, or ``/entry_1/data_1/mask``; static or per
frame) where it has one, else every pixel good (attribute ``from_input = 0``): CrystFEL refuses an
event whose geometry names a mask it cannot read. An HTTP answer cannot carry the frames (the
client has them): its root attribute ``frames_included`` is 0 and ``frames_note`` says how to add
them (:func:`attach_frames`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from peaknet_serve.wire import CXI_MAX_PEAKS, CXI_PEAK_GROUP, DEFAULT_DATASET

__all__ = [
    "CXI_MAX_PEAKS",
    "DATA_PATH",
    "MASK_PATH",
    "RESULT_GROUP",
    "CxiPeaks",
    "FrameSource",
    "attach_frames",
    "cxi_peaks",
    "input_mask",
    "cxi_response",
    "write_peak_file",
    "write_result_group",
]

RESULT_GROUP = CXI_PEAK_GROUP
DATA_PATH = DEFAULT_DATASET
MASK_PATH = "/entry_1/data_1/mask"
FRAMES_NOTE = (
    "peaks only: this answer holds no frames, and indexamajig needs them at /entry_1/data_1/data. "
    "Add them with peaknet_serve.encode.cxi.attach_frames(answer, frames_file) (a virtual dataset over the "
    "frames you sent, in the slab layout of the peaks), or run peaknet-peakfind, whose files carry them."
)
_PEAK_DATASETS = ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakTotalIntensityRaw", "peakNPixels")


@dataclass(frozen=True)
class CxiPeaks:
    """Peaks of ``N`` frames in the CXI slab layout, rows zero-padded to ``max_peaks``.

    Attributes:
        n_peaks: int32 ``(N,)`` peaks stored per frame (at most ``max_peaks``).
        x: float32 ``(N, max_peaks)`` fast scan (``fs``).
        y: float32 ``(N, max_peaks)`` slab slow scan (``panel * H + ss``).
        intensity: float32 ``(N, max_peaks)`` background-subtracted integrated ADU.
        intensity_raw: float32 ``(N, max_peaks)`` raw ADU sum over the peak's pixels.
        npix: float32 ``(N, max_peaks)`` pixels per peak.
        found: int64 ``(N,)`` peaks the server found (more than ``n_peaks`` where a row was cut).
        panel_height: ``H``, rows of one panel in the slab.
    """

    n_peaks: np.ndarray
    x: np.ndarray
    y: np.ndarray
    intensity: np.ndarray
    intensity_raw: np.ndarray
    npix: np.ndarray
    found: np.ndarray
    panel_height: int

    @property
    def dropped(self) -> np.ndarray:
        """int64 ``(N,)`` peaks each frame lost to ``max_peaks``."""
        return self.found - self.n_peaks

    def datasets(self) -> dict[str, np.ndarray]:
        """The result-group datasets by their CXI names."""
        return {
            "nPeaks": self.n_peaks,
            "peakXPosRaw": self.x,
            "peakYPosRaw": self.y,
            "peakTotalIntensity": self.intensity,
            "peakTotalIntensityRaw": self.intensity_raw,
            "peakNPixels": self.npix,
        }


def cxi_peaks(frames: Sequence[Mapping[str, Any]], panel_height: int, max_peaks: int = CXI_MAX_PEAKS) -> CxiPeaks:
    """Stack per-frame peak lists (the server's JSON ``frames``) into CXI rows.

    A frame with more than ``max_peaks`` peaks keeps its ``max_peaks`` largest
    (background-subtracted) intensities, in their original order. A frame without
    ``intensity_raw`` (an older server) stores its ``intensity`` there too.
    """
    if max_peaks < 1 or panel_height < 1:
        raise ValueError("max_peaks and panel_height must be >= 1")
    n = len(frames)
    rows = {name: np.zeros((n, max_peaks), np.float32) for name in _PEAK_DATASETS}
    n_peaks = np.zeros(n, np.int32)
    found = np.zeros(n, np.int64)
    for i, frame in enumerate(frames):
        intensity = np.asarray(frame["intensity"], np.float64)
        keep = np.sort(np.argsort(-intensity, kind="stable")[:max_peaks])
        k = keep.size
        found[i], n_peaks[i] = intensity.size, k
        panel = np.asarray(frame["panel"], np.float64)[keep]
        rows["peakXPosRaw"][i, :k] = np.asarray(frame["fs"], np.float64)[keep]
        rows["peakYPosRaw"][i, :k] = panel * panel_height + np.asarray(frame["ss"], np.float64)[keep]
        rows["peakTotalIntensity"][i, :k] = intensity[keep]
        raw = frame.get("intensity_raw", frame["intensity"])
        rows["peakTotalIntensityRaw"][i, :k] = np.asarray(raw, np.float64)[keep]
        rows["peakNPixels"][i, :k] = np.asarray(frame["npix"], np.float64)[keep]
    return CxiPeaks(
        n_peaks,
        rows["peakXPosRaw"],
        rows["peakYPosRaw"],
        rows["peakTotalIntensity"],
        rows["peakTotalIntensityRaw"],
        rows["peakNPixels"],
        found,
        int(panel_height),
    )


def write_result_group(h5: h5py.File, peaks: CxiPeaks, panels: int, width: int, compress: bool) -> None:
    """The result group: the peak datasets and the slab they refer to (``panels``, ``panel_shape``)."""
    group = h5.require_group(RESULT_GROUP)
    options = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if compress else {}
    for name, values in peaks.datasets().items():
        group.create_dataset(name, data=values, **(options if values.ndim == 2 else {}))
    group["peakTotalIntensity"].attrs["description"] = (
        "sum over the peak's pixels minus npix times the mean of a local annulus (ADU)"
    )
    group["peakTotalIntensityRaw"].attrs["description"] = "sum over the peak's pixels (ADU)"
    group.attrs["peaks_dropped"] = peaks.dropped
    group.attrs["max_peaks"] = peaks.x.shape[1]
    group.attrs["panels"] = panels
    group.attrs["panel_shape"] = np.array([peaks.panel_height, width], dtype=np.int64)
    group.attrs["slab_layout"] = (
        "panels stacked along slow scan: peakXPosRaw = fs, peakYPosRaw = panel * H + ss; "
        "pixel centre at integer coordinates (keep CrystFEL's half-pixel shift)"
    )


def cxi_response(
    frames: Sequence[Mapping[str, Any]],
    shape: Sequence[int],
    max_peaks: int = CXI_MAX_PEAKS,
    attrs: Mapping[str, Any] | None = None,
) -> bytes:
    """The ``application/x-hdf5`` answer: an in-memory CXI file with the peaks of ``N`` frames.

    Args:
        frames: ``N`` per-frame dicts of :func:`peaknet_serve.device.peaks.peaks_to_frames`.
        shape: the request's ``(N, P, H, W)``.
        max_peaks: row width; brighter peaks are kept.
        attrs: further root attributes (the server's ``bad_pixel_mask``).

    The file holds the result group (module docstring; its attributes ``panels`` and
    ``panel_shape`` = ``[H, W]`` describe the slab the peaks refer to) and no frames: root
    attributes ``frames_included = 0`` and ``frames_note`` say so and how to add them.
    """
    if len(shape) != 4:
        raise ValueError(f"shape must be (N, P, H, W), got {tuple(shape)}")
    n_frames, panels, height, width = (int(s) for s in shape)
    if len(frames) != n_frames:
        raise ValueError(f"{len(frames)} frames for a request of shape {tuple(shape)}")
    peaks = cxi_peaks(frames, height, max_peaks)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.attrs["cxi_version"] = 150
        h5.attrs["frames_included"] = 0
        h5.attrs["frames_note"] = FRAMES_NOTE
        for key, value in (attrs or {}).items():
            h5.attrs[key] = value
        write_result_group(h5, peaks, panels, width, compress=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# frames and mask as a slab over the user's file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSource:
    """Where the frames of a peak file live.

    Attributes:
        path: the HDF5 file with the frames.
        dataset: their dataset, ``(N, P, H, W)``, ``(N, P*H, W)``, ``(N, H, W)`` or ``(H, W)``.
        view: ``(N, P, H, W)``, how the frames were read (``payloads.frames_view``).
    """

    path: Path
    dataset: str
    view: tuple[int, int, int, int]

    @property
    def slab_shape(self) -> tuple[int, int, int]:
        n, panels, height, width = self.view
        return n, panels * height, width


def _slab_layout(source: FrameSource, dset: h5py.Dataset, dataset: str, link_name: str) -> h5py.VirtualLayout:
    """A ``(N, P*H, W)`` virtual layout over ``dset`` (frames, or a per-frame mask)."""
    n, panels, height, width = source.view
    layout = h5py.VirtualLayout(shape=source.slab_shape, dtype=dset.dtype)
    vsource = h5py.VirtualSource(link_name, dataset, shape=dset.shape, dtype=dset.dtype)
    if dset.ndim == 4:
        for p in range(panels):
            layout[:, p * height : (p + 1) * height, :] = vsource[:, p, :, :]
    elif dset.ndim == 3:
        layout[:, :, :] = vsource[:, :, :]
    else:
        layout[0, :, :] = vsource[:, :]
    return layout


def _fill_value(dtype: np.dtype) -> Any:
    return np.nan if np.issubdtype(dtype, np.floating) else 0


def _link_frames(h5: h5py.File, out_dir: Path, source: FrameSource) -> None:
    """``/entry_1/data_1/data`` as a virtual slab over ``source``, named relative to ``out_dir``."""
    relative = os.path.relpath(source.path.resolve(), out_dir.resolve())
    with h5py.File(source.path, "r") as src:
        dset = src[source.dataset]
        expected = {4: source.view, 3: source.slab_shape, 2: source.slab_shape[1:]}.get(dset.ndim)
        if expected is None or tuple(dset.shape) != tuple(expected):
            raise ValueError(f"{source.path}:{source.dataset} of shape {dset.shape} is not {source.view}")
        layout = _slab_layout(source, dset, source.dataset, relative)
        h5.create_virtual_dataset(DATA_PATH, layout, fillvalue=_fill_value(dset.dtype))
        h5[DATA_PATH].attrs["source_file"] = relative
        h5[DATA_PATH].attrs["source_dataset"] = source.dataset
        _copy_mask(h5, src, source, relative)


def _mask_candidates(dataset: str) -> list[str]:
    parent = dataset.rsplit("/", 1)[0] if "/" in dataset.strip("/") else ""
    return [f"{parent}/mask", MASK_PATH]


def input_mask(src: h5py.File, dataset: str, view: Sequence[int]) -> tuple[str, bool] | None:
    """The input's good-pixel mask (non-zero = good) for its frames ``dataset`` read as ``view``
    (N, P, H, W): ``(name, per_frame)``, or None without one.

    ``mask`` next to the frames, else ``/entry_1/data_1/mask``: a static one holds P*H*W values
    (``(P, H, W)``, ``(P*H, W)`` or ``(H, W)``), a per-frame one ``(N, ...)`` N*P*H*W; a dataset of
    another size is passed over.
    """
    n, panels, height, width = (int(v) for v in view)
    for name in _mask_candidates(dataset):
        mask = src.get(name)
        if not isinstance(mask, h5py.Dataset) or mask.ndim == 0:
            continue
        if mask.size == panels * height * width:
            return name, False
        if mask.shape[0] == n and mask.size == n * panels * height * width:
            return name, True
    return None


def _copy_mask(h5: h5py.File, src: h5py.File, source: FrameSource, relative: str) -> None:
    """The good-pixel mask (1 = good) next to the frames, in the slab layout.

    The input's static mask (``(P, H, W)``, ``(P*H, W)`` or ``(H, W)``) is copied as ``(P*H, W)``
    uint8, a per-frame one (``(N, ...)``) becomes a virtual slab like the frames (:func:`input_mask`);
    without either every pixel is good.
    """
    n, panels, height, width = source.view
    found = input_mask(src, source.dataset, source.view)
    if found is None:
        h5.create_dataset(MASK_PATH, data=np.ones((panels * height, width), np.uint8), compression="gzip", shuffle=True)
        h5[MASK_PATH].attrs["from_input"] = 0
        return
    name, per_frame = found
    mask = src[name]
    if per_frame:
        h5.create_virtual_dataset(MASK_PATH, _slab_layout(source, mask, name, relative), fillvalue=0)
    else:
        h5.create_dataset(
            MASK_PATH,
            data=(mask[()].reshape(panels * height, width) != 0).astype(np.uint8),
            compression="gzip",
            shuffle=True,
        )
    h5[MASK_PATH].attrs["from_input"] = 1
    h5[MASK_PATH].attrs["source_dataset"] = name


def write_peak_file(
    path: str | Path, peaks: CxiPeaks, source: FrameSource, attrs: Mapping[str, Any] | None = None
) -> Path:
    """A data-bearing CXI peak file at ``path``, written atomically (temporary name, then rename).

    Holds the peaks, the frames of ``source`` as a virtual slab and its mask (module docstring);
    root attributes ``frames_included = 1``, ``n_frames``, ``complete`` and ``attrs``.
    """
    path = Path(path)
    if peaks.n_peaks.shape[0] != source.view[0] or peaks.panel_height != source.view[2]:
        raise ValueError(
            f"peaks of {peaks.n_peaks.shape[0]} frames of panel height {peaks.panel_height} "
            f"do not match frames {source.view}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with h5py.File(partial, "w") as h5:
            h5.attrs["cxi_version"] = 150
            write_result_group(h5, peaks, source.view[1], source.view[3], compress=True)
            _link_frames(h5, path.parent, source)
            for key, value in (attrs or {}).items():
                h5.attrs[key] = value
            h5.attrs["frames_included"] = 1
            h5.attrs["n_frames"] = source.view[0]
            h5.attrs["complete"] = True
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


#: root attributes of an HTTP CXI answer that a data-bearing file made from it does not keep
ANSWER_ONLY_ATTRS = frozenset({"cxi_version", "frames_included", "frames_note", "n_frames", "complete"})


def attach_frames(
    answer: str | Path, frames: str | Path, dataset: str = DATA_PATH, output: str | Path | None = None
) -> Path:
    """Make an HTTP CXI answer indexable: add the frames it was computed from.

    Reads the peaks of ``answer`` and writes ``output`` (default: ``answer`` itself) as a
    data-bearing peak file over ``frames:dataset``, the frames the request sent, in its order:
    ``(N, P, H, W)``, ``(N, P*H, W)``, ``(N, H, W)`` for one panel, or ``(H, W)``. The answer's
    own root attributes (the server's, such as ``bad_pixel_mask``) are kept, but for those that
    describe a file without frames (:data:`ANSWER_ONLY_ATTRS`).
    """
    answer, frames = Path(answer), Path(frames)
    with h5py.File(answer, "r") as h5:
        server_attrs = {k: v for k, v in h5.attrs.items() if k not in ANSWER_ONLY_ATTRS}
        group = h5[RESULT_GROUP]
        panels = int(group.attrs["panels"])
        height, width = (int(v) for v in group.attrs["panel_shape"])
        columns = {name: group[name][()] for name in ("nPeaks", *_PEAK_DATASETS) if name in group}
        dropped = np.asarray(group.attrs.get("peaks_dropped", 0), np.int64)
    n_peaks = columns["nPeaks"].astype(np.int32)
    peaks = CxiPeaks(
        n_peaks,
        columns["peakXPosRaw"],
        columns["peakYPosRaw"],
        columns["peakTotalIntensity"],
        columns.get("peakTotalIntensityRaw", columns["peakTotalIntensity"]),
        columns["peakNPixels"],
        n_peaks + dropped,
        height,
    )
    with h5py.File(frames, "r") as src:
        shape = tuple(src[dataset].shape)
    view = (n_peaks.size, panels, height, width)
    accepted = {view, (view[0], panels * height, width)} | ({(panels * height, width)} if view[0] == 1 else set())
    if shape not in accepted:
        raise ValueError(f"{frames}:{dataset} of shape {shape} is not the {view} frames of {answer}")
    return write_peak_file(
        output or answer, peaks, FrameSource(frames, dataset, view), {**server_attrs, "peaks_from": answer.name}
    )
