"""Detector payloads for the PeakNet server, shared by ``loadtest.py`` and ``peakfind.py``.

Three concerns, one place each:

* **frames**: simulated detector frames of a known geometry (Poisson background plus Gaussian
  Bragg spots, made with numpy), or frames read from a user's HDF5/CXI file. Frames are always
  handed around as ``(N, P, H, W)`` arrays (frames, panels, slow scan, fast scan) in the
  detector's own dtype.
* **encodings**: one function turns such an array into the body and headers of a
  ``POST /predictions/peaknet`` request, for every encoding the server decodes (raw bytes,
  ``.npy``, HDF5 with optional compression, multipart form).
* **answers**: the authorisation header (TorchServe's ``key_file.json``) and a schema check of the
  server's JSON answer.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peaknet_serve.wire import DEFAULT_DATASET, HDF5, NPY, RAW

# --------------------------------------------------------------------------------------------
# geometries and frames
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """A detector as the server sees it: ``panels`` panels of ``height x width`` pixels."""

    name: str
    panels: int
    height: int
    width: int

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """Shape ``(P, H, W)`` of one frame."""
        return (self.panels, self.height, self.width)

    @property
    def pixels(self) -> int:
        return self.panels * self.height * self.width


GEOMETRIES: dict[str, Geometry] = {
    g.name: g
    for g in (
        Geometry("epix10k2m", 16, 352, 384),
        Geometry("jungfrau4m", 8, 512, 1024),
        Geometry("cspad", 32, 185, 388),
        Geometry("rayonix", 1, 1920, 1920),
    )
}


def geometry_from_name(name: str) -> Geometry:
    """A preset by name (``epix10k2m``), or a custom ``P,H,W`` / ``PxHxW`` string."""
    if name in GEOMETRIES:
        return GEOMETRIES[name]
    parts = name.replace("x", ",").split(",")
    try:
        panels, height, width = (int(p) for p in parts)
    except ValueError:
        known = ", ".join(GEOMETRIES)
        raise ValueError(f"unknown geometry {name!r}: use one of {known} or 'P,H,W'") from None
    if min(panels, height, width) < 1:
        raise ValueError(f"geometry {name!r} has a non-positive dimension")
    return Geometry(name, panels, height, width)


@dataclass(frozen=True)
class SimulatedFrames:
    """Simulated frames and where their spots were put.

    Attributes:
        frames: ``(N, P, H, W)`` array in the requested dtype.
        spots: ``(K, 4)`` float64 array of ``(frame, panel, ss, fs)`` spot centres, pixel-index
            coordinates (pixel ``i`` covers ``[i - 0.5, i + 0.5)``).
    """

    frames: np.ndarray
    spots: np.ndarray = field(repr=False)


def simulate_frames(
    geometry: Geometry,
    n_frames: int,
    dtype: str | np.dtype = "uint16",
    spots_per_frame: int = 30,
    background: float = 8.0,
    spot_photons: tuple[float, float] = (300.0, 3000.0),
    spot_sigma: tuple[float, float] = (0.7, 1.5),
    seed: int = 0,
) -> SimulatedFrames:
    """Frames with Gaussian Bragg spots on a flat Poisson background.

    Each pixel counts ``Poisson(background)`` photons; each spot adds ``Poisson`` counts around a
    2-D Gaussian of width ``U(*spot_sigma)`` that holds ``U(*spot_photons)`` photons in
    expectation (a sum of independent Poisson variables is Poisson, so this equals sampling
    the whole expected image at once). Values are clipped into ``dtype``'s range. Spots keep
    ``ceil(4 sigma_max)`` pixels away from panel edges so that each lies wholly on its panel.

    Returns:
        :class:`SimulatedFrames` with ``frames`` of shape ``(n_frames, P, H, W)`` and ``dtype``.
    """
    if n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    rng = np.random.default_rng(seed)
    n_panels, height, width = geometry.frame_shape
    margin = math.ceil(4 * spot_sigma[1])
    if height <= 2 * margin or width <= 2 * margin:
        raise ValueError(f"panels of {height}x{width} pixels are too small for spots")
    counts = rng.poisson(background, (n_frames, n_panels, height, width)).astype(np.float32)

    n_spots = n_frames * spots_per_frame
    frame_idx = np.repeat(np.arange(n_frames), spots_per_frame)
    panel_idx = rng.integers(0, n_panels, n_spots)
    ss = rng.uniform(margin, height - 1 - margin, n_spots)
    fs = rng.uniform(margin, width - 1 - margin, n_spots)
    photons = rng.uniform(*spot_photons, n_spots)
    sigma = rng.uniform(*spot_sigma, n_spots)

    offsets = np.arange(-margin, margin + 1)
    for n, p, y, x, total, s in zip(frame_idx, panel_idx, ss, fs, photons, sigma):
        rows = int(round(y)) + offsets
        cols = int(round(x)) + offsets
        spot = np.outer(np.exp(-0.5 * ((rows - y) / s) ** 2), np.exp(-0.5 * ((cols - x) / s) ** 2))
        window = (n, p, slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        counts[window] += rng.poisson(total * spot / spot.sum())

    frames = _clip_to_dtype(counts, np.dtype(dtype))
    spots = np.stack([frame_idx, panel_idx, ss, fs], axis=1).astype(np.float64)
    return SimulatedFrames(frames=frames, spots=spots)


SIMULATORS = ("auto", "peaksim", "spots")


def detector_frames(
    geometry: Geometry, n_frames: int, dtype: str | np.dtype = "uint16", seed: int = 0, simulator: str = "auto"
) -> np.ndarray:
    """``(n_frames, P, H, W)`` simulated frames in ``dtype`` for a load test.

    ``simulator``: ``peaksim`` (:mod:`peaknet_serve.sim.peaksim`, the project's physical SFX simulator: crystals, water ring,
    detector response; preset geometries only), ``spots`` (:func:`simulate_frames`), or ``auto``
    (``peaknet_serve.sim.peaksim`` when it is importable and knows the geometry, else ``spots``).
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"unknown simulator {simulator!r}: use one of {SIMULATORS}")
    if simulator != "spots":
        try:
            from peaknet_serve.sim.peaksim.frame import simulate_frame
            from peaknet_serve.sim.peaksim.geometry import get_geometry

            detector = get_geometry(geometry.name)
        except (ImportError, ValueError):
            if simulator == "peaksim":
                raise
        else:
            rng = np.random.default_rng(seed)
            frames = [simulate_frame(detector, rng) for _ in range(n_frames)]
            if np.dtype(dtype) == np.uint16:
                return np.stack([f.uint16 for f in frames])
            return _clip_to_dtype(np.stack([f.adu for f in frames]), np.dtype(dtype))
    return simulate_frames(geometry, n_frames, dtype, seed=seed).frames


def _clip_to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast ``values`` to ``dtype``, saturating at the integer range instead of wrapping."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(values, info.min, info.max)
    return values.astype(dtype)


def frames_view(dataset_shape: tuple[int, ...], panels: int | None = None) -> tuple[int, ...]:
    """The ``(N, P, H, W)`` shape under which a dataset of ``dataset_shape`` is read.

    * 2-D ``(H, W)``: one frame of one panel;
    * 3-D ``(N, H, W)``: a CXI stack of ``N`` frames; with ``panels`` set, each frame is a slab of
      ``panels`` panels stacked along the slow-scan axis (``H = panels * panel_height``);
    * 4-D ``(N, P, H, W)``: as is.
    """
    if len(dataset_shape) == 2:
        height, width = dataset_shape
        return (1, 1, height, width)
    if len(dataset_shape) == 3:
        n, height, width = dataset_shape
        if panels is None or panels == 1:
            return (n, 1, height, width)
        if height % panels:
            raise ValueError(f"slab height {height} is not a multiple of {panels} panels")
        return (n, panels, height // panels, width)
    if len(dataset_shape) == 4:
        if panels is not None and panels != dataset_shape[1]:
            raise ValueError(f"dataset has {dataset_shape[1]} panels, not {panels}")
        return tuple(dataset_shape)
    raise ValueError(f"a dataset of shape {dataset_shape} is not a detector frame stack")


def file_frames_shape(path: str | Path, dataset: str = DEFAULT_DATASET, panels: int | None = None) -> tuple[int, ...]:
    """The ``(N, P, H, W)`` shape under which ``dataset`` of the HDF5 file ``path`` is read."""
    import h5py

    with h5py.File(path, "r") as f:
        return frames_view(_dataset(f, dataset, path).shape, panels)


def iter_frames(
    path: str | Path,
    dataset: str = DEFAULT_DATASET,
    chunk: int = 1,
    panels: int | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_index, frames)`` with ``frames`` of shape ``(<=chunk, P, H, W)``.

    Frames keep the file's dtype; compressed datasets (gzip, LZ4, bitshuffle, zstd) decode
    through ``hdf5plugin``. Only ``chunk`` frames are in memory at a time.
    """
    import h5py
    import hdf5plugin  # noqa: F401  (registers the compression filters)

    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    with h5py.File(path, "r") as f:
        dset = _dataset(f, dataset, path)
        view = frames_view(dset.shape, panels)
        stop = view[0] if stop is None else min(stop, view[0])
        for first in range(start, stop, chunk):
            last = min(first + chunk, stop)
            block = dset[()] if dset.ndim == 2 else dset[first:last]
            yield first, np.ascontiguousarray(block).reshape((last - first, *view[1:]))


def read_frames(
    path: str | Path,
    dataset: str = DEFAULT_DATASET,
    n_frames: int | None = None,
    panels: int | None = None,
) -> np.ndarray:
    """The first ``n_frames`` frames (all if ``None``) of a file, shape ``(N, P, H, W)``."""
    blocks = [block for _, block in iter_frames(path, dataset, 1 << 30, panels, 0, n_frames)]
    return np.concatenate(blocks)


def _dataset(f: Any, name: str, path: str | Path) -> Any:
    import h5py

    node = f.get(name)
    if not isinstance(node, h5py.Dataset):
        raise KeyError(f"{path}: no dataset {name!r} (use --dataset to name the frames)")
    return node


# --------------------------------------------------------------------------------------------
# request encodings
# --------------------------------------------------------------------------------------------

HDF5_COMPRESSIONS = ("gzip", "lz4", "bslz4", "zstd")
ENCODINGS = ("raw", "npy", "hdf5", "multipart", *(f"hdf5-{c}" for c in HDF5_COMPRESSIONS))


@dataclass(frozen=True)
class EncodedRequest:
    """One request body with the headers that describe it.

    Attributes:
        body: the bytes to POST.
        headers: ``Content-Type`` and, for raw bytes, ``X-Dtype`` / ``X-Shape``.
        n_frames: frames the server should answer for.
        frame_nbytes: bytes of the uncompressed frames in the body.
    """

    body: bytes
    headers: dict[str, str]
    n_frames: int
    frame_nbytes: int


def encode_request(frames: np.ndarray, encoding: str = "raw", mask: np.ndarray | None = None) -> EncodedRequest:
    """Encode ``(N, P, H, W)`` frames as one request body.

    Encodings: ``raw`` (little-endian bytes + ``X-Dtype``/``X-Shape``), ``npy``, ``hdf5`` (CXI
    layout at ``/entry_1/data_1/data``; ``hdf5-gzip``, ``hdf5-lz4``, ``hdf5-bslz4``,
    ``hdf5-zstd`` compress it chunk by chunk, one frame per chunk) and ``multipart`` (raw bytes
    in field ``data``, dtype and shape as form fields).

    ``mask``: the frames' bad-pixel mask, non-zero = good, ``(P, H, W)`` for every frame,
    ``(N, P, H, W)`` frame by frame, or ``(H, W)`` for single-panel frames. It goes as the
    ``.npy`` (bool) file part ``mask`` of a multipart form whose part ``data`` holds the frames in
    ``encoding``.
    """
    if frames.ndim != 4:
        raise ValueError(f"frames must be (N, P, H, W), got shape {frames.shape}")
    frames = np.ascontiguousarray(frames, dtype=frames.dtype.newbyteorder("<"))
    n_frames = frames.shape[0]
    if encoding in ("raw", "multipart"):
        body, headers = frames.tobytes(), _raw_headers(frames)
    elif encoding == "npy":
        body, headers = _npy_bytes(frames), {"Content-Type": NPY}
    elif encoding == "hdf5" or encoding.startswith("hdf5-"):
        compression = encoding.partition("-")[2] or None
        body, headers = _hdf5_bytes(frames, compression), {"Content-Type": HDF5}
    else:
        raise ValueError(f"unknown encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
    if encoding == "multipart" or mask is not None:
        body, headers = _multipart_bytes(body, headers, None if mask is None else good_pixels(mask))
    return EncodedRequest(body=body, headers=headers, n_frames=n_frames, frame_nbytes=frames.nbytes)


def good_pixels(mask: np.ndarray) -> np.ndarray:
    """A bad-pixel mask as the bool array a request sends: True (non-zero) = good pixel.

    Raises:
        ValueError: a mask that is not bool or numeric.
    """
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biuf":
        raise ValueError(f"a bad-pixel mask must be bool or numeric (non-zero = good), got {mask.dtype}")
    return np.ascontiguousarray(mask != 0)


def _raw_headers(frames: np.ndarray) -> dict[str, str]:
    return {
        "Content-Type": RAW,
        "X-Dtype": frames.dtype.name,
        "X-Shape": ",".join(str(d) for d in frames.shape),
    }


def _npy_bytes(frames: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, frames, allow_pickle=False)
    return buffer.getvalue()


def _hdf5_bytes(frames: np.ndarray, compression: str | None) -> bytes:
    """An in-memory CXI file; single-panel frames are stored 3-D ``(N, H, W)`` as CXI does."""
    import h5py

    data = frames[:, 0] if frames.shape[1] == 1 else frames
    options: Mapping[str, Any] = _hdf5_filter(compression)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        chunks = (1, *data.shape[1:]) if options else None
        f.create_dataset(DEFAULT_DATASET, data=data, chunks=chunks, **options)
    return buffer.getvalue()


def _hdf5_filter(compression: str | None) -> Mapping[str, Any]:
    if compression is None:
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    import hdf5plugin

    filters = {
        "lz4": hdf5plugin.LZ4,
        "bslz4": lambda: hdf5plugin.Bitshuffle(cname="lz4"),
        "zstd": hdf5plugin.Zstd,
    }
    if compression not in filters:
        raise ValueError(f"unknown HDF5 compression {compression!r}: use {HDF5_COMPRESSIONS}")
    return filters[compression]()


_PART_NAMES = {RAW: "frames.bin", NPY: "frames.npy", HDF5: "frames.h5"}


def _multipart_bytes(body: bytes, headers: Mapping[str, str], good: np.ndarray | None) -> tuple[bytes, dict[str, str]]:
    """A form of the encoded frames (part ``data``, dtype and shape as fields for raw bytes) and
    the bool mask ``good`` (file part ``mask``, ``.npy``)."""
    from urllib3 import encode_multipart_formdata

    content_type = headers["Content-Type"]
    fields: dict[str, Any] = {"data": (_PART_NAMES[content_type], body, content_type)}
    if content_type == RAW:
        fields.update(dtype=headers["X-Dtype"], shape=headers["X-Shape"])
    if good is not None:
        fields["mask"] = ("mask.npy", _npy_bytes(good), NPY)
    form, form_type = encode_multipart_formdata(fields)
    return form, {"Content-Type": form_type}


# --------------------------------------------------------------------------------------------
# answers
# --------------------------------------------------------------------------------------------


PEAK_FIELDS = ("panel", "ss", "fs", "npix", "intensity")
ANSWER_FIELDS = ("model", "precision", "device", "shape", "dtype", "frames")


def check_prediction(answer: Any, n_frames: int) -> list[str]:
    """What is wrong with a JSON prediction answer for ``n_frames`` frames (empty: nothing).

    Checks the top-level fields, that ``shape[0]`` and ``len(frames)`` equal ``n_frames``, and
    that each frame's peak lists all have ``num_peaks`` entries.
    """
    if not isinstance(answer, dict):
        return [f"answer is a {type(answer).__name__}, not a JSON object"]
    problems = [f"missing field {name!r}" for name in ANSWER_FIELDS if name not in answer]
    shape = answer.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) for d in shape)):
        problems.append(f"shape {shape!r} is not [N, P, H, W]")
    elif shape[0] != n_frames:
        problems.append(f"shape says {shape[0]} frames, sent {n_frames}")
    frames = answer.get("frames")
    if not isinstance(frames, list):
        return [*problems, "frames is not a list"]
    if len(frames) != n_frames:
        problems.append(f"{len(frames)} frames answered, sent {n_frames}")
    for i, frame in enumerate(frames):
        problems.extend(f"frame {i}: {p}" for p in _check_frame(frame))
    return problems


def _check_frame(frame: Any) -> list[str]:
    if not isinstance(frame, dict):
        return ["not a JSON object"]
    k = frame.get("num_peaks")
    if not isinstance(k, int) or k < 0:
        return [f"num_peaks {k!r} is not a count"]
    problems = []
    for name in PEAK_FIELDS:
        values = frame.get(name)
        if not isinstance(values, list) or len(values) != k:
            problems.append(f"{name} does not hold {k} values")
    return problems
