"""The facility's ZMQ messages: bytes <-> detector frames, with per-event metadata.

Two producer formats are understood, told apart by their first bytes:

* **HDF5** (LCLStreamer's ``HDF5BinarySerializer``): a whole HDF5 file in memory. Each data source
  is a dataset at the path the producer's ``fields`` mapping names (``/data/data`` for the
  detector in LCLStreamer's examples, ``/timestamp``, ``/data/wavelength`` ...), all with the batch
  of events along axis 0 and chunked one event per chunk; optionally compressed (gzip,
  bitshuffle + LZ4/Zstd, zfp), decoded here through ``hdf5plugin``.
* **NPZ** (the PeakNet Ray pipeline's socket producers): ``numpy.savez`` of flat keys; the frames
  are ``detector_data`` (or ``data``), ``(B, C, H, W)``. A producer that padded panels to a common
  size and folded panels into the batch sends ``(B*C, 1, H, W)`` plus ``detector_data_original_shape``
  ``= [B, C, H0, W0]``; such frames are unfolded and cropped back to ``(B, C, H0, W0)``.

Frames leave this module as ``(N, P, H, W)`` arrays in the producer's dtype (``frames_view``: 2-D is
one frame, 3-D ``(N, H, W)`` is ``N`` one-panel frames or, with ``panels``, ``N`` slabs of
``panels`` panels stacked along slow scan). Any other array whose first axis has ``N`` entries
(timestamps, wavelengths) is kept as per-event metadata. A message that is not one of these
raises :class:`MessageError` before anything larger than the limit is allocated.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from peaknet_serve.clients.payloads import frames_view

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
FORMATS = ("hdf5", "npz")
# where the frames are looked for when no field is named: LCLStreamer's examples, CXI, bare
HDF5_FRAME_FIELDS = ("/data/data", "/entry_1/data_1/data", "/data")
NPZ_FRAME_FIELDS = ("detector_data", "data")
NPZ_ORIGINAL_SHAPE = "detector_data_original_shape"
PAD_STYLES = ("center", "bottom-right")
COMPRESSIONS = ("gzip", "gzip_with_shuffle", "bitshuffle_with_lz4", "bitshuffle_with_zstd", "zfp")


class MessageError(ValueError):
    """A message that is not a frame batch this bridge can read."""


@dataclass(frozen=True)
class Message:
    """One decoded message.

    Attributes:
        frames: ``(N, P, H, W)`` array in the producer's dtype.
        metadata: per-event arrays by field name, each with ``N`` entries along axis 0.
        source_format: ``"hdf5"`` or ``"npz"``.
    """

    frames: np.ndarray
    metadata: dict[str, np.ndarray] = field(default_factory=dict)
    source_format: str = "hdf5"

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


def message_format(payload: bytes | memoryview) -> str:
    """``"hdf5"`` or ``"npz"`` from the first bytes of ``payload``."""
    head = bytes(payload[:8])
    if head == HDF5_SIGNATURE:
        return "hdf5"
    if head[:4] == ZIP_SIGNATURE:
        return "npz"
    raise MessageError(f"message of {len(payload)} bytes is neither HDF5 nor NPZ (starts {head[:8]!r})")


def decode_message(
    payload: bytes | memoryview,
    field_name: str | None = None,
    panels: int | None = None,
    pad_style: str = "center",
    max_bytes: int = 2**31,
) -> Message:
    """Frames and per-event metadata of one ZMQ message.

    Args:
        payload: the message bytes (an HDF5 file or an NPZ archive).
        field_name: the frames' dataset path (HDF5) or key (NPZ); default: the first present of
            :data:`HDF5_FRAME_FIELDS` / :data:`NPZ_FRAME_FIELDS`.
        panels: split 3-D ``(N, P*H, W)`` slabs into ``P`` panels.
        pad_style: how a padding producer placed panels in their padded frame (NPZ with
            ``detector_data_original_shape``): ``center`` or ``bottom-right``.
        max_bytes: largest decoded frame array accepted (checked from the header, before reading).

    Returns:
        :class:`Message` with ``frames`` ``(N, P, H, W)``.
    """
    if pad_style not in PAD_STYLES:
        raise ValueError(f"pad_style {pad_style!r}: use one of {PAD_STYLES}")
    kind = message_format(payload)
    if kind == "hdf5":
        frames, metadata = _read_hdf5(payload, field_name, max_bytes)
    else:
        frames, metadata = _read_npz(payload, field_name, max_bytes)
        original = metadata.pop(NPZ_ORIGINAL_SHAPE, None)
        if original is not None:
            frames = unfold_padded(frames, original, pad_style)
    try:
        shape = frames_view(frames.shape, panels)
    except ValueError as err:
        raise MessageError(str(err)) from None
    frames = frames.reshape(shape)
    if frames.shape[0] == 0 or frames.size == 0:
        raise MessageError(f"message holds no pixels (frames of shape {frames.shape})")
    n = frames.shape[0]
    events = {name: value for name, value in metadata.items() if value.ndim >= 1 and value.shape[0] == n}
    return Message(frames=frames, metadata=events, source_format=kind)


def unfold_padded(
    frames: np.ndarray, original_shape: np.ndarray | Sequence[int], pad_style: str = "center"
) -> np.ndarray:
    """``(B*C, 1, Hp, Wp)`` padded panels -> ``(B, C, H0, W0)``, given ``original_shape = [B, C, H0, W0]``."""
    try:
        b, c, h0, w0 = (int(v) for v in np.asarray(original_shape).reshape(-1))
    except (TypeError, ValueError):
        raise MessageError(f"{NPZ_ORIGINAL_SHAPE} {original_shape!r} is not [B, C, H, W]") from None
    if frames.ndim == 4 and frames.shape[1] == 1:
        frames = frames[:, 0]
    if frames.ndim != 3 or frames.shape[0] != b * c:
        raise MessageError(f"frames of shape {frames.shape} do not unfold into {b} x {c} panels")
    hp, wp = frames.shape[1:]
    if h0 > hp or w0 > wp or min(b, c, h0, w0) < 1:
        raise MessageError(f"original panels {h0}x{w0} do not fit padded panels {hp}x{wp}")
    top, left = ((hp - h0) // 2, (wp - w0) // 2) if pad_style == "center" else (0, 0)
    return frames[:, top : top + h0, left : left + w0].reshape(b, c, h0, w0)


def _numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf"


def _check_size(shape: Sequence[int], dtype: np.dtype, max_bytes: int, name: str) -> None:
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > max_bytes:
        raise MessageError(f"{name}: {nbytes / 2**20:.0f} MiB decoded exceeds the limit of {max_bytes / 2**20:.0f} MiB")


def _read_hdf5(payload: bytes | memoryview, field_name: str | None, max_bytes: int):
    import h5py
    import hdf5plugin  # noqa: F401  (registers the compression filters)

    try:
        handle = h5py.File(io.BytesIO(payload), "r")
    except OSError as err:
        raise MessageError(f"unreadable HDF5 message: {err}") from None
    with handle:
        datasets: dict[str, Any] = {}

        def collect(name: str, node: Any) -> None:  # returning a value would stop the visit
            if isinstance(node, h5py.Dataset):
                datasets[f"/{name}"] = node

        handle.visititems(collect)
        name = _frame_field(field_name, datasets, HDF5_FRAME_FIELDS, "dataset")
        frames_node = datasets[name]
        if not _numeric(frames_node.dtype):
            raise MessageError(f"{name}: dtype {frames_node.dtype} is not a detector pixel type")
        _check_size(frames_node.shape, frames_node.dtype, max_bytes, name)
        try:
            frames = np.ascontiguousarray(frames_node[()])
            n = frames.shape[0] if frames.ndim >= 3 else 1
            metadata = {}
            for other, node in datasets.items():
                if other != name and node.ndim >= 1 and node.shape[0] == n and node.size * node.dtype.itemsize <= 2**24:
                    metadata[other] = _metadata_array(node[()])
        except OSError as err:  # a filter that fails on corrupt chunks
            raise MessageError(f"{name}: cannot decode: {err}") from None
    return frames, {k: v for k, v in metadata.items() if v is not None}


def _read_npz(payload: bytes | memoryview, field_name: str | None, max_bytes: int):
    try:
        archive = np.load(io.BytesIO(payload), allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise MessageError(f"unreadable NPZ message: {err}") from None
    with archive:
        headers = _npz_headers(archive)
        name = _frame_field(field_name, headers, NPZ_FRAME_FIELDS, "key")
        shape, dtype = headers[name]
        if not _numeric(dtype):
            raise MessageError(f"{name}: dtype {dtype} is not a detector pixel type")
        _check_size(shape, dtype, max_bytes, name)
        try:
            frames = np.ascontiguousarray(archive[name])
            metadata = {}
            for other, (other_shape, other_dtype) in headers.items():
                small = int(np.prod(other_shape, dtype=np.int64)) * other_dtype.itemsize <= 2**24
                if other != name and small:
                    metadata[other] = _metadata_array(archive[other])
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise MessageError(f"{name}: cannot decode: {err}") from None
    return frames, {k: v for k, v in metadata.items() if v is not None}


def _npz_headers(archive: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of an open NPZ, read from each member's ``.npy`` header only."""
    headers = {}
    for key in archive.files:
        with archive.zip.open(f"{key}.npy") as member:
            try:
                version = npy_format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = npy_format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, _, dtype = npy_format.read_array_header_2_0(member)
                else:
                    raise ValueError(f".npy format version {version} is not supported")
            except ValueError as err:
                raise MessageError(f"{key}: bad .npy header: {err}") from None
        headers[key] = (tuple(shape), np.dtype(dtype))
    return headers


def _frame_field(requested: str | None, available: Mapping[str, Any], defaults: Sequence[str], what: str) -> str:
    if requested is not None:
        key = requested if what == "key" or requested.startswith("/") else f"/{requested}"
        if key not in available:
            raise MessageError(
                f"no {what} {requested!r} in the message (has {', '.join(sorted(available)) or 'nothing'})"
            )
        return key
    for key in defaults:
        if key in available:
            return key
    raise MessageError(
        f"no frames at {' or '.join(defaults)} (the message has {', '.join(sorted(available)) or 'nothing'});"
        f" name the {what} with --field"
    )


def _metadata_array(value: Any) -> np.ndarray | None:
    """A per-event array that can be stored in HDF5: numbers as they are, strings as bytes."""
    array = np.asarray(value)
    if _numeric(array.dtype):
        return array
    if array.dtype.kind in "SU" or array.dtype == object:
        try:
            return np.char.encode(array.astype(str), "utf-8") if array.dtype.kind != "S" else array
        except (UnicodeError, ValueError, TypeError):
            return None
    return None


# --------------------------------------------------------------------------------------------
# encoding, for producers and tests
# --------------------------------------------------------------------------------------------


def hdf5_message(fields: Mapping[str, np.ndarray], compression: str | None = None, compression_level: int = 3) -> bytes:
    """An LCLStreamer-style HDF5 message: each array at its path, one event per chunk.

    ``compression``: ``None`` or one of :data:`COMPRESSIONS` (LCLStreamer's names).
    """
    import h5py

    options = _hdf5_compression(compression, compression_level)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        for path, value in fields.items():
            value = np.asarray(value)
            if value.dtype.kind == "U":
                value = np.char.encode(value, "utf-8")
            chunked = value.ndim >= 1 and value.shape[0] > 0
            extra = options if chunked and _numeric(value.dtype) else {}
            chunks = (1, *value.shape[1:]) if chunked else None
            f.create_dataset(path, data=value, chunks=chunks, **extra)
    return buffer.getvalue()


def npz_message(fields: Mapping[str, np.ndarray]) -> bytes:
    """A Ray-pipeline-style NPZ message (``numpy.savez``, uncompressed)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in fields.items()})
    return buffer.getvalue()


def _hdf5_compression(compression: str | None, level: int) -> dict[str, Any]:
    if compression is None:
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": level, "shuffle": False}
    if compression == "gzip_with_shuffle":
        return {"compression": "gzip", "compression_opts": level, "shuffle": True}
    import hdf5plugin

    if compression == "bitshuffle_with_lz4":
        return {"compression": hdf5plugin.Bitshuffle(cname="lz4", clevel=level)}
    if compression == "bitshuffle_with_zstd":
        return {"compression": hdf5plugin.Bitshuffle(cname="zstd", clevel=level)}
    if compression == "zfp":
        return {"compression": hdf5plugin.Zfp(reversible=True)}
    raise ValueError(f"unknown compression {compression!r}: use one of {COMPRESSIONS}")
