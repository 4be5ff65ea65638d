"""Payload encodings, frame sources and answer checks of peaknet_serve.clients.payloads.

Encodings are checked by decoding them with the server's own decoder (``peaknet_serve.decode``), so a
payload the load-test client sends is one the server accepts.
"""

from __future__ import annotations

import email.parser
import email.policy

import h5py
import hdf5plugin
import numpy as np
import pytest

from peaknet_serve.clients.payloads import (
    ENCODINGS,
    GEOMETRIES,
    Geometry,
    check_prediction,
    detector_frames,
    encode_request,
    file_frames_shape,
    frames_view,
    geometry_from_name,
    iter_frames,
    read_frames,
    simulate_frames,
)
from peaknet_serve.decode.request import decode_request
from peaknet_serve.wire import DEFAULT_DATASET

SMALL = Geometry("small", 2, 48, 64)


# ---------------------------------------------------------------------------- geometries, frames


def test_presets_have_the_detector_shapes():
    assert GEOMETRIES["epix10k2m"].frame_shape == (16, 352, 384)
    assert GEOMETRIES["jungfrau4m"].frame_shape == (8, 512, 1024)
    assert GEOMETRIES["cspad"].frame_shape == (32, 185, 388)
    assert GEOMETRIES["rayonix"].frame_shape == (1, 1920, 1920)


def test_custom_geometry_from_text():
    assert geometry_from_name("4,100,200").frame_shape == (4, 100, 200)
    assert geometry_from_name("4x100x200").frame_shape == (4, 100, 200)
    with pytest.raises(ValueError, match="unknown geometry"):
        geometry_from_name("pilatus")
    with pytest.raises(ValueError, match="non-positive"):
        geometry_from_name("0,10,10")


def test_simulated_frames_have_shape_dtype_and_spots_where_reported():
    sim = simulate_frames(SMALL, 3, "uint16", spots_per_frame=5, background=4.0, seed=1)
    assert sim.frames.shape == (3, 2, 48, 64) and sim.frames.dtype == np.uint16
    assert sim.spots.shape == (15, 4)
    for n, p, ss, fs in sim.spots:
        centre = sim.frames[int(n), int(p), int(round(ss)), int(round(fs))]
        assert centre > 40, "a spot of >= 300 photons and sigma <= 1.5 px peaks far above a background of 4"
    far = np.ones(sim.frames.shape, bool)
    for n, p, ss, fs in sim.spots:
        far[int(n), int(p), max(int(ss) - 8, 0) : int(ss) + 9, max(int(fs) - 8, 0) : int(fs) + 9] = False
    assert abs(sim.frames[far].mean() - 4.0) < 0.2


def test_simulation_is_seeded():
    a = simulate_frames(SMALL, 2, seed=7).frames
    b = simulate_frames(SMALL, 2, seed=7).frames
    c = simulate_frames(SMALL, 2, seed=8).frames
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_integer_dtypes_saturate_instead_of_wrapping():
    sim = simulate_frames(SMALL, 1, "uint8", spot_photons=(50000, 60000), seed=2)
    assert sim.frames.dtype == np.uint8 and sim.frames.max() == 255


def test_float_dtype_keeps_counts():
    sim = simulate_frames(SMALL, 1, "float32", seed=3)
    assert sim.frames.dtype == np.float32 and sim.frames.max() > 255


def test_detector_frames_uses_peaksim_for_presets_and_spots_otherwise():
    physical = detector_frames(GEOMETRIES["cspad"], 1, "uint16", seed=0, simulator="peaksim")
    assert physical.shape == (1, 32, 185, 388) and physical.dtype == np.uint16
    simple = detector_frames(SMALL, 2, "int32", seed=0, simulator="auto")  # peaknet_serve.sim.peaksim does not know it
    assert np.array_equal(simple, simulate_frames(SMALL, 2, "int32", seed=0).frames)
    with pytest.raises(ValueError):
        detector_frames(SMALL, 1, simulator="peaksim")


# ---------------------------------------------------------------------------- reading files


@pytest.mark.parametrize(
    "shape, panels, view",
    [
        ((48, 64), None, (1, 1, 48, 64)),
        ((5, 48, 64), None, (5, 1, 48, 64)),
        ((5, 96, 64), 2, (5, 2, 48, 64)),
        ((5, 2, 48, 64), None, (5, 2, 48, 64)),
        ((5, 2, 48, 64), 2, (5, 2, 48, 64)),
    ],
)
def test_frames_view(shape, panels, view):
    assert frames_view(shape, panels) == view


@pytest.mark.parametrize(
    "shape, panels", [((5, 97, 64), 2), ((5, 2, 48, 64), 3), ((64,), None), ((1, 2, 3, 4, 5), None)]
)
def test_frames_view_rejects(shape, panels):
    with pytest.raises(ValueError):
        frames_view(shape, panels)


def _write(path, data, dataset=DEFAULT_DATASET, **options):
    with h5py.File(path, "w") as f:
        f.create_dataset(dataset, data=data, **options)
    return path


def test_iter_frames_chunks_a_cxi_stack_in_order(tmp_path):
    data = np.arange(7 * 48 * 64, dtype=np.uint16).reshape(7, 48, 64)
    path = _write(tmp_path / "run.cxi", data, chunks=(1, 48, 64), **hdf5plugin.Bitshuffle(cname="lz4"))
    chunks = list(iter_frames(path, chunk=3))
    assert [first for first, _ in chunks] == [0, 3, 6]
    assert [block.shape for _, block in chunks] == [(3, 1, 48, 64), (3, 1, 48, 64), (1, 1, 48, 64)]
    assert np.array_equal(np.concatenate([b for _, b in chunks])[:, 0], data)
    assert file_frames_shape(path) == (7, 1, 48, 64)


def test_read_frames_splits_slabs_into_panels(tmp_path):
    data = np.random.default_rng(0).integers(0, 1000, (3, 2, 48, 64)).astype(np.int32)
    slab = _write(tmp_path / "slab.h5", data.reshape(3, 96, 64))
    assert np.array_equal(read_frames(slab, panels=2), data)
    assert np.array_equal(read_frames(slab, n_frames=2, panels=2), data[:2])
    four_d = _write(tmp_path / "4d.h5", data, dataset="/data/frames")
    assert np.array_equal(read_frames(four_d, dataset="/data/frames"), data)
    assert file_frames_shape(four_d, "/data/frames") == (3, 2, 48, 64)


def test_missing_dataset_names_the_option(tmp_path):
    path = _write(tmp_path / "x.h5", np.zeros((2, 8, 8)), dataset="/other")
    with pytest.raises(KeyError, match="--dataset"):
        read_frames(path)


# ---------------------------------------------------------------------------- encodings


def _server_decode(request):
    """Decode an encoded request as the server does (multipart: split the form first)."""
    content_type = request.headers["Content-Type"]
    options = {k[2:].lower(): v for k, v in request.headers.items() if k.startswith("X-")}
    if content_type.startswith("multipart/form-data"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + request.body
        )
        fields = {
            part.get_param("name", header="content-disposition"): part.get_content() for part in message.iter_parts()
        }
        data, mask = fields.pop("data"), fields.pop("mask", None)
        options = {k: v.strip() if isinstance(v, str) else v.decode() for k, v in fields.items()}
        return decode_request(data, None, options, mask=mask)
    return decode_request(request.body, content_type, options)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("dtype", ["uint16", "float32", "int32"])
def test_every_encoding_decodes_to_the_same_frames_on_the_server(encoding, dtype):
    frames = simulate_frames(SMALL, 3, dtype, seed=4).frames
    request = encode_request(frames, encoding)
    decoded = _server_decode(request)
    assert decoded.array.shape == frames.shape and decoded.array.dtype == frames.dtype
    assert np.array_equal(decoded.array, frames)
    assert request.n_frames == 3 and request.frame_nbytes == frames.nbytes


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_mask_travels_as_the_file_part_mask_beside_the_frames_in_any_encoding(encoding):
    frames = simulate_frames(SMALL, 3, seed=8).frames
    good = np.random.default_rng(8).random(frames.shape[1:]) > 0.2
    request = encode_request(frames, encoding, mask=good.astype(np.uint16) * 3)
    assert request.headers["Content-Type"].startswith("multipart/form-data")
    decoded = _server_decode(request)
    assert np.array_equal(decoded.array, frames)
    assert decoded.good_pixels.shape == (1, *frames.shape[1:]) and np.array_equal(decoded.good_pixels[0], good)
    per_frame = np.random.default_rng(9).random(frames.shape) > 0.5
    assert np.array_equal(_server_decode(encode_request(frames, encoding, mask=per_frame)).good_pixels, per_frame)


def test_a_mask_of_another_dtype_is_refused_by_the_client():
    frames = simulate_frames(SMALL, 1, seed=9).frames
    with pytest.raises(ValueError, match="bool or numeric"):
        encode_request(frames, "raw", mask=np.full(frames.shape[1:], "x"))


def test_single_panel_frames_travel_as_a_cxi_stack():
    frames = simulate_frames(Geometry("one", 1, 40, 40), 2, seed=5).frames
    request = encode_request(frames, "hdf5")
    with h5py.File(__import__("io").BytesIO(request.body), "r") as f:
        assert f[DEFAULT_DATASET].shape == (2, 40, 40)
    assert np.array_equal(_server_decode(request).array, frames)


def test_compression_shrinks_the_body():
    frames = simulate_frames(SMALL, 4, seed=6).frames
    plain = len(encode_request(frames, "hdf5").body)
    for encoding in ("hdf5-gzip", "hdf5-bslz4", "hdf5-zstd"):
        assert len(encode_request(frames, encoding).body) < 0.6 * plain


def test_big_endian_frames_are_sent_little_endian():
    frames = simulate_frames(SMALL, 1, seed=7).frames
    request = encode_request(frames.astype(">u2"), "raw")
    assert request.headers["X-Dtype"] == "uint16" and request.headers["X-Shape"] == "1,2,48,64"
    assert request.body == frames.astype("<u2").tobytes()


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="N, P, H, W"):
        encode_request(np.zeros((2, 8, 8), np.uint16))
    with pytest.raises(ValueError, match="unknown encoding"):
        encode_request(np.zeros((1, 1, 8, 8), np.uint16), "tiff")


# ---------------------------------------------------------------------------- auth, answers


def _answer(n_frames, peaks=(2, 0)):
    frames = [
        {"num_peaks": k, "panel": [0] * k, "ss": [1.5] * k, "fs": [2.5] * k, "npix": [3] * k, "intensity": [9.0] * k}
        for k in peaks[:n_frames]
    ]
    return {
        "model": "m",
        "precision": "float32",
        "device": "cpu",
        "shape": [n_frames, 2, 48, 64],
        "dtype": "uint16",
        "frames": frames,
    }


def test_check_prediction_accepts_a_good_answer():
    assert check_prediction(_answer(2), 2) == []


def test_check_prediction_finds_each_problem():
    assert "missing field 'model'" in check_prediction({k: v for k, v in _answer(2).items() if k != "model"}, 2)
    assert any("1 frames answered" in p for p in check_prediction(_answer(1), 2))
    assert any("shape says 1" in p for p in check_prediction(_answer(1), 2))
    broken = _answer(2)
    broken["frames"][0]["ss"] = [1.0]
    assert check_prediction(broken, 2) == ["frame 0: ss does not hold 2 values"]
    broken["frames"][1]["num_peaks"] = -1
    assert "frame 1: num_peaks -1 is not a count" in check_prediction(broken, 2)
    assert check_prediction([1, 2], 2) == ["answer is a list, not a JSON object"]
