"""ZMQ message formats: LCLStreamer HDF5 (every compression it offers) and Ray-pipeline NPZ.

The HDF5 messages are built the way LCLStreamer's HDF5BinarySerializer builds them (h5py into a
BytesIO, one event per chunk, hdf5plugin filters), independently of the bridge's own encoder.
"""

from __future__ import annotations

import io

import h5py
import hdf5plugin
import numpy as np
import pytest

from peaknet_serve.bridge.messages import (
    COMPRESSIONS,
    MessageError,
    decode_message,
    hdf5_message,
    message_format,
    npz_message,
    unfold_padded,
)
from tests.frames import spot_frames


def lclstreamer_bytes(fields: dict[str, np.ndarray], **filter_options) -> bytes:
    """An HDF5 message as LCLStreamer writes one: each field at its path, chunks of one event."""
    with io.BytesIO() as block:
        with h5py.File(block, "w") as fh:
            for path, data in fields.items():
                fh.create_dataset(
                    name=path,
                    shape=data.shape,
                    dtype=data.dtype,
                    chunks=(1,) + data[0].shape,
                    data=data,
                    **filter_options,
                )
        return block.getvalue()


LCLSTREAMER_FILTERS = {
    "none": {},
    "gzip": {"compression": "gzip", "compression_opts": 3, "shuffle": False},
    "gzip_with_shuffle": {"compression": "gzip", "compression_opts": 3, "shuffle": True},
    "bitshuffle_with_lz4": {"compression": hdf5plugin.Bitshuffle(cname="lz4", clevel=3)},
    "bitshuffle_with_zstd": {"compression": hdf5plugin.Bitshuffle(cname="zstd", clevel=3)},
}


@pytest.mark.parametrize("compression", sorted(LCLSTREAMER_FILTERS))
def test_lclstreamer_hdf5_message(compression):
    frames = spot_frames(n=3, p=2, h=32, w=48)
    timestamps = np.array([1.5e9, 1.5e9 + 1 / 120, 1.5e9 + 2 / 120])
    payload = lclstreamer_bytes(
        {"/data/data": frames, "/data/timestamp": timestamps, "/data/wavelength": np.full(3, 1.3)},
        **LCLSTREAMER_FILTERS[compression],
    )
    message = decode_message(payload)
    assert message.source_format == "hdf5"
    assert message.frames.dtype == np.uint16 and np.array_equal(message.frames, frames)
    assert sorted(message.metadata) == ["/data/timestamp", "/data/wavelength"]
    assert np.array_equal(message.metadata["/data/timestamp"], timestamps)


def test_zfp_float_frames():
    frames = spot_frames(n=2, p=1, h=32, w=32).astype(np.float32)
    message = decode_message(lclstreamer_bytes({"/data": frames}, compression=hdf5plugin.Zfp(reversible=True)))
    assert np.array_equal(message.frames, frames)


@pytest.mark.parametrize("compression", [None, *COMPRESSIONS])
def test_bridge_encoder_round_trips(compression):
    frames = spot_frames(n=2, p=2, h=16, w=24)
    if compression == "zfp":
        frames = frames.astype(np.float32)
    payload = hdf5_message({"/data/data": frames, "/data/timestamp": np.arange(2.0)}, compression)
    assert np.array_equal(decode_message(payload).frames, frames)


def test_frames_field_defaults_and_explicit_names():
    frames = spot_frames(n=2, p=1, h=16, w=16)
    cxi = lclstreamer_bytes({"/entry_1/data_1/data": frames})
    assert np.array_equal(decode_message(cxi).frames[:, 0], frames[:, 0])
    custom = lclstreamer_bytes({"/det/jungfrau/raw": frames, "/det/timestamp": np.arange(2.0)})
    with pytest.raises(MessageError, match="name the dataset with --field"):
        decode_message(custom)
    assert decode_message(custom, field_name="/det/jungfrau/raw").frames.shape == (2, 1, 16, 16)
    assert decode_message(custom, field_name="det/jungfrau/raw").n_frames == 2
    with pytest.raises(MessageError, match="no dataset"):
        decode_message(custom, field_name="/det/missing")


def test_slabs_split_into_panels():
    frames = spot_frames(n=2, p=4, h=8, w=16)
    slab = frames.reshape(2, 32, 16)  # (N, P*H, W), panels stacked along slow scan
    message = decode_message(lclstreamer_bytes({"/data/data": slab}), panels=4)
    assert np.array_equal(message.frames, frames)
    with pytest.raises(MessageError, match="not a multiple"):
        decode_message(lclstreamer_bytes({"/data/data": slab}), panels=5)


def test_npz_message_with_ray_pipeline_keys():
    frames = spot_frames(n=2, p=3, h=16, w=16)
    for key in ("detector_data", "data"):
        buffer = io.BytesIO()
        np.savez(buffer, **{key: frames, "timestamp": np.arange(2.0), "photon_wavelength": np.ones(2)})
        message = decode_message(buffer.getvalue())
        assert message.source_format == "npz" and np.array_equal(message.frames, frames)
        assert sorted(message.metadata) == ["photon_wavelength", "timestamp"]


@pytest.mark.parametrize("pad_style", ["center", "bottom-right"])
def test_padded_npz_unfolds_to_the_original_panels(pad_style):
    frames = spot_frames(n=2, p=3, h=10, w=12)  # B=2 events of C=3 panels 10x12
    padded = np.zeros((6, 1, 16, 16), np.uint16)
    top, left = (3, 2) if pad_style == "center" else (0, 0)
    padded[:, 0, top : top + 10, left : left + 12] = frames.reshape(6, 10, 12)
    payload = npz_message({"detector_data": padded, "detector_data_original_shape": np.array([2, 3, 10, 12])})
    message = decode_message(payload, pad_style=pad_style)
    assert np.array_equal(message.frames, frames)
    assert "detector_data_original_shape" not in message.metadata


def test_unfold_refuses_shapes_that_do_not_fit():
    with pytest.raises(MessageError, match="do not unfold"):
        unfold_padded(np.zeros((5, 1, 8, 8)), [2, 3, 8, 8])
    with pytest.raises(MessageError, match="do not fit"):
        unfold_padded(np.zeros((6, 1, 8, 8)), [2, 3, 9, 8])
    with pytest.raises(MessageError, match="is not"):
        unfold_padded(np.zeros((6, 1, 8, 8)), [2, 3])


def test_psana1_string_timestamps_are_kept_as_bytes():
    frames = spot_frames(n=2, p=1, h=8, w=8)
    stamps = np.array(["1700000000.5", "1700000000.6"]).astype("S")
    message = decode_message(lclstreamer_bytes({"/data/data": frames, "/data/timestamp": stamps}))
    assert list(message.metadata["/data/timestamp"]) == [b"1700000000.5", b"1700000000.6"]


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"", "neither HDF5 nor NPZ"),
        (b"not a detector message", "neither HDF5 nor NPZ"),
        (b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, "unreadable HDF5"),
        (b"PK\x03\x04" + b"\x00" * 64, "unreadable NPZ"),
    ],
)
def test_garbage_is_a_message_error(payload, match):
    with pytest.raises(MessageError, match=match):
        decode_message(payload)


def test_non_pixel_dtypes_and_empty_frames_are_refused():
    with pytest.raises(MessageError, match="not a detector pixel type"):
        decode_message(npz_message({"data": np.array([["a", "b"]])}))
    with pytest.raises(MessageError, match="no pixels"):
        decode_message(npz_message({"data": np.zeros((0, 1, 4, 4), np.uint16)}))
    with pytest.raises(MessageError, match="not a detector frame stack"):
        decode_message(npz_message({"data": np.zeros(16, np.uint16)}))


def test_size_limit_is_checked_before_decoding():
    frames = np.zeros((4, 1, 256, 256), np.uint16)  # 512 KiB decoded, compresses to almost nothing
    payload = lclstreamer_bytes({"/data/data": frames}, compression="gzip")
    assert len(payload) < 64 * 1024
    with pytest.raises(MessageError, match="exceeds the limit"):
        decode_message(payload, max_bytes=256 * 1024)
    with pytest.raises(MessageError, match="exceeds the limit"):
        decode_message(npz_message({"data": frames}), max_bytes=256 * 1024)
    assert decode_message(payload, max_bytes=512 * 1024).n_frames == 4


def test_format_detection():
    assert message_format(hdf5_message({"/data": np.zeros((1, 2, 2))})) == "hdf5"
    assert message_format(npz_message({"data": np.zeros((1, 2, 2))})) == "npz"
