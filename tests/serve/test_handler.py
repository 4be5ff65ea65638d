"""PeakNetHandler through TorchServe's own Context/RequestProcessor, without the Java frontend."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from ts.context import Context, RequestProcessor

from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.device.finder import PanelPeakFinder
from peaknet_serve.errors import ERROR_BODY_HEADER, ServerFault
from peaknet_serve.serve.handler import PeakNetHandler, _package_source
from peaknet_serve.serve.http import Answer, error_answer
from tests.frames import spot_frames

FIXTURE = Path(__file__).parents[1] / "fixtures" / "upstream"


make_frames = spot_frames


def make_context(model_dir: Path, handler_section: dict | None = None) -> Context:
    # max_mask_fraction None: the fixture's random weights mark about half of every panel, over the default cap
    section = {
        "warmup_shapes": [[1, 64, 96]],
        "model_label": "tiny",
        "max_mask_fraction": None,
        **(handler_section or {}),
    }
    return Context("peaknet", str(model_dir), {}, 4, None, "0.12.0", model_yaml_config={"handler": section})


@pytest.fixture(scope="module")
def handler(model_dir) -> PeakNetHandler:
    h = PeakNetHandler()
    h.initialize(make_context(model_dir))
    return h


def run_batch(handler, context, requests: list[tuple[dict, dict]]):
    """requests: (row, headers) pairs as TorchServe's service passes them."""
    context.request_processor = [RequestProcessor(headers) for _, headers in requests]
    bodies = handler.handle([row for row, _ in requests], context)
    statuses = [context.get_response_status(i)[0] for i in range(len(requests))]
    types = [context.get_response_content_type(i) for i in range(len(requests))]
    return statuses, bodies, types


def raw_request(frames: np.ndarray, **headers) -> tuple[dict, dict]:
    return (
        {"body": bytearray(frames.tobytes())},
        {
            "Content-Type": "application/octet-stream",
            "X-Dtype": str(frames.dtype),
            "X-Shape": ",".join(map(str, frames.shape)),
            "body": {"content-type": "application/octet-stream"},
            **headers,
        },
    )


def expected_peaks(frames: np.ndarray, threshold: float | None = None):
    model = load_peaknet(FIXTURE / "peaknet_tiny.yaml")
    finder = PanelPeakFinder(model, dtype=torch.float32, device=torch.device("cpu"), threshold=threshold)
    return finder.find(torch.from_numpy(frames.reshape(-1, *frames.shape[-2:]))).table.to_host()


def test_good_and_bad_requests_in_one_batch(handler, model_dir):
    frames = make_frames(n=2)
    context = make_context(model_dir)
    statuses, bodies, types = run_batch(
        handler,
        context,
        [
            raw_request(frames),
            (
                {"body": bytearray(b"\x00" * 10)},
                {"Content-Type": "application/octet-stream", "X-Dtype": "uint16", "X-Shape": "2,2,64,96"},
            ),
            ({"body": bytearray(b"x")}, {"Content-Type": "text/csv"}),
            raw_request(frames),
        ],
    )
    assert statuses == [200, 400, 415, 200]
    assert all(t == "application/json" for t in types)
    good, bad, unsupported, good_again = (json.loads(b) for b in bodies)
    assert good == good_again
    assert good["shape"] == [2, 2, 64, 96] and good["dtype"] == "uint16"
    assert good["model"] == "tiny" and good["precision"] == "float32" and good["device"] == "cpu"
    assert bad["error"]["type"] and "bytes" in bad["error"]["message"]
    assert unsupported["error"]["status"] == 415
    host = expected_peaks(frames)
    assert sum(f["num_peaks"] for f in good["frames"]) == len(host) > 0
    np.testing.assert_allclose(np.concatenate([f["ss"] for f in good["frames"]]), host.ss)
    panels = np.concatenate([np.asarray(f["panel"]) + 2 * i for i, f in enumerate(good["frames"])])
    np.testing.assert_array_equal(panels, host.image_index)


def test_requests_of_different_shapes_and_dtypes_share_a_batch(handler, model_dir):
    small, large = make_frames(n=1, h=64, w=96, seed=1), make_frames(n=1, p=1, h=70, w=100, seed=2)
    context = make_context(model_dir)
    statuses, bodies, _ = run_batch(
        handler, context, [raw_request(small), raw_request(large), raw_request(small.astype(np.float32))]
    )
    assert statuses == [200, 200, 200]
    a, b, c = (json.loads(x) for x in bodies)
    assert b["shape"] == [1, 1, 70, 100]  # padded to 96x128 internally, cropped back
    assert all(0 <= s < 70 for f in b["frames"] for s in f["ss"])
    assert a["frames"] == c["frames"] and c["dtype"] == "float32"


def test_side_stream_upload_answers_the_same(handler, model_dir):
    """``h2d_overlap`` with micro-batches of 3 panels over requests of 4 and 2: same answers."""
    overlapped = PeakNetHandler()
    overlapped.initialize(make_context(model_dir, {"h2d_overlap": True, "max_batch_panels": 3}))
    batch = [raw_request(make_frames(n=2, seed=7)), raw_request(make_frames(n=1, seed=8))]
    statuses, bodies, _ = run_batch(overlapped, make_context(model_dir), batch)
    plain_statuses, plain_bodies, _ = run_batch(handler, make_context(model_dir), batch)
    assert statuses == plain_statuses == [200, 200]
    answers = [json.loads(b)["frames"] for b in bodies]
    assert answers == [json.loads(b)["frames"] for b in plain_bodies]
    assert sum(f["num_peaks"] for frames in answers for f in frames) > 0


def test_multipart_form_fields(handler, model_dir):
    frames = make_frames()
    buffer = io.BytesIO()
    np.save(buffer, frames)
    context = make_context(model_dir)
    multipart = {
        "Content-Type": "multipart/form-data; boundary=xyz",
        "data": {"content-type": "application/octet-stream"},
    }
    statuses, bodies, _ = run_batch(
        handler,
        context,
        [
            ({"data": bytearray(buffer.getvalue())}, multipart),
            ({"data": bytearray(frames.tobytes()), "dtype": bytearray(b"uint16"), "shape": "1,2,64,96"}, multipart),
            raw_request(frames),
        ],
    )
    assert statuses == [200, 200, 200]
    answers = [json.loads(b) for b in bodies]
    assert answers[0]["frames"] == answers[1]["frames"] == answers[2]["frames"]


def test_cxi_answer(handler, model_dir):
    frames = make_frames(n=2)
    context = make_context(model_dir)
    statuses, bodies, types = run_batch(handler, context, [raw_request(frames, Accept="application/x-hdf5")])
    assert statuses == [200] and types == ["application/x-hdf5"]
    with h5py.File(io.BytesIO(bodies[0]), "r") as f:
        assert f["/entry_1/result_1/nPeaks"].shape == (2,)
        assert f["/entry_1/result_1/peakXPosRaw"].shape == (2, 2048)
        assert f.attrs["frames_included"] == 0  # peaks only: the client holds the frames


def test_env_overrides_precision_and_weights(model_dir, monkeypatch, tmp_path):
    shutil.copy(FIXTURE / "peaknet_tiny.pt", tmp_path / "other.pt")
    monkeypatch.setenv("PEAKNET_PRECISION", "bf16")
    monkeypatch.setenv("PEAKNET_WEIGHTS", str(tmp_path / "other.pt"))
    h = PeakNetHandler()
    h.initialize(make_context(model_dir, {"warmup": False}))
    assert h.dtype == torch.bfloat16
    assert next(h.model.parameters()).dtype == torch.bfloat16
    statuses, bodies, _ = run_batch(h, make_context(model_dir), [raw_request(make_frames())])
    assert statuses == [200] and json.loads(bodies[0])["precision"] == "bfloat16"


def test_missing_weights_fail_initialize(model_dir, monkeypatch):
    monkeypatch.setenv("PEAKNET_WEIGHTS", "/nonexistent/weights.pt")
    with pytest.raises(Exception, match="weights"):
        PeakNetHandler().initialize(make_context(model_dir, {"warmup": False}))


def test_unknown_handler_setting_fails_initialize(model_dir):
    with pytest.raises(ValueError, match="unknown handler setting"):
        PeakNetHandler().initialize(make_context(model_dir, {"max_batch_panel": 4}))


def test_model_config_yaml_is_valid_for_the_handler():
    root = Path(__file__).resolve().parents[2]
    section = yaml.safe_load((root / "model-config.yaml").read_text())["handler"]
    from peaknet_serve.config.settings import HandlerSettings

    settings = HandlerSettings.from_mapping(section, env={})
    assert settings.limits.max_frames == 16 and settings.max_batch_panels == 64


def test_per_request_threshold_header_and_form_field(handler, model_dir):
    """Requests with their own peak threshold share a batch with default ones; each answer is what
    the model gives at that threshold and says which threshold it used; a bad one is a 400."""
    frames = make_frames(n=1, seed=11)
    buffer = io.BytesIO()
    np.save(buffer, frames)
    multipart = {
        "Content-Type": "multipart/form-data; boundary=xyz",
        "data": {"content-type": "application/octet-stream"},
    }
    statuses, bodies, _ = run_batch(
        handler,
        make_context(model_dir),
        [
            raw_request(frames),
            raw_request(frames, **{"X-Peak-Threshold": "0.9"}),
            ({"data": bytearray(buffer.getvalue()), "threshold": bytearray(b"0.05")}, multipart),
            raw_request(frames, **{"X-Peak-Threshold": "1.5"}),
            raw_request(frames, **{"X-Peak-Threshold": "0.9"}),
        ],
    )
    assert statuses == [200, 200, 200, 400, 200]
    default, strict, loose, bad, strict_again = (json.loads(b) for b in bodies)
    assert default["threshold"] is None and strict["threshold"] == 0.9 and loose["threshold"] == 0.05
    assert bad["error"]["type"] == "bad_option" and "between 0 and 1" in bad["error"]["message"]
    assert strict_again == strict
    peak_pixels = {}
    for name, answer, threshold in [("default", default, None), ("strict", strict, 0.9), ("loose", loose, 0.05)]:
        host = expected_peaks(frames, threshold)
        assert sum(f["num_peaks"] for f in answer["frames"]) == len(host) > 0
        np.testing.assert_allclose(np.concatenate([f["ss"] for f in answer["frames"]]), host.ss)
        peak_pixels[name] = sum(sum(f["npix"]) for f in answer["frames"])
    assert peak_pixels["strict"] < peak_pixels["default"] < peak_pixels["loose"]  # the knob moves


def test_deployment_threshold_is_echoed(model_dir):
    h = PeakNetHandler()
    h.initialize(make_context(model_dir, {"threshold": 0.3}))
    frames = make_frames(n=1, seed=12)
    statuses, bodies, _ = run_batch(
        h, make_context(model_dir), [raw_request(frames), raw_request(frames, **{"X-Peak-Threshold": "0.7"})]
    )
    assert statuses == [200, 200]
    deployment, request = (json.loads(b) for b in bodies)
    assert deployment["threshold"] == 0.3 and request["threshold"] == 0.7
    assert sum(f["num_peaks"] for f in deployment["frames"]) == len(expected_peaks(frames, 0.3))
    assert sum(f["num_peaks"] for f in request["frames"]) == len(expected_peaks(frames, 0.7))


def test_the_log_line_of_an_aot_package_names_the_worker_that_built_it():
    assert _package_source({"source": "built", "built_by": 11}) == "built by this worker (pid 11)"
    assert _package_source({"source": "waited", "built_by": 12}) == "built by worker pid 12 while this one waited"
    assert _package_source({"source": "found", "built_by": None}) == "found in the cache (built by an unknown worker)"


def test_the_handlers_500s_carry_their_body_in_the_error_header_and_nothing_else_does():
    """The proxy tells the handler's 500s from TorchServe's "Worker died." 500 by this header."""
    context = Context("peaknet", ".", {}, 3, None, "0.12.0")
    context.request_processor = [RequestProcessor({}) for _ in range(3)]
    fault = ServerFault("hdf5_reader_failed", "the HDF5 reader process died: näher")
    bodies = [
        PeakNetHandler._respond(context, 0, error_answer(fault)),
        PeakNetHandler._respond(context, 1, Answer(400, {"error": {"type": "bad_shape"}})),
        PeakNetHandler._respond(context, 2, Answer(200, b"\x89HDF")),
    ]
    header = context.get_response_headers(0)[ERROR_BODY_HEADER]
    assert header == bodies[0] and json.loads(header) == fault.to_json() and header.isascii()
    assert context.get_response_status(0)[0] == 500
    assert ERROR_BODY_HEADER not in context.get_response_headers(1)
    assert ERROR_BODY_HEADER not in context.get_response_headers(2)


def test_the_deployments_bad_pixel_mask_is_applied_and_other_layouts_are_refused(model_dir, tmp_path):
    """Frames of the mask's (P, H, W) get exactly the finder's masked peaks; a request of another
    panel layout in the same batch gets 400 mask_mismatch and its batch-mate is still answered."""
    frames = make_frames(n=2, seed=21)  # (2, P, 64, 96)
    rng = np.random.default_rng(4)
    good = rng.random(frames.shape[1:]) > 0.3
    np.save(tmp_path / "mask.npy", good.astype(np.uint8))
    h = PeakNetHandler()
    h.initialize(make_context(model_dir, {"bad_pixel_mask": str(tmp_path / "mask.npy")}))
    other = make_frames(n=1, seed=22)[:, :1]  # one panel: not the mask's layout
    statuses, bodies, _ = run_batch(h, make_context(model_dir), [raw_request(frames), raw_request(other)])
    assert statuses == [200, 400]
    assert json.loads(bodies[1])["error"]["type"] == "mask_mismatch"
    model = load_peaknet(FIXTURE / "peaknet_tiny.yaml")
    finder = PanelPeakFinder(model, dtype=torch.float32, device=torch.device("cpu"))
    panels = torch.from_numpy(frames.reshape(-1, *frames.shape[-2:]))
    masked = finder.find(panels, good_pixels=torch.from_numpy(good)).table.to_host()
    plain = finder.find(panels).table.to_host()
    answer = json.loads(bodies[0])
    assert sum(f["num_peaks"] for f in answer["frames"]) == len(masked)
    served_npix = [n for f in answer["frames"] for n in f["npix"]]
    served_ss = [v for f in answer["frames"] for v in f["ss"]]
    assert served_npix == masked.npix.tolist() != plain.npix.tolist()
    assert np.allclose(served_ss, masked.ss, atol=1e-3)
    assert h.model_metadata()["parameters"]["bad_pixel_mask"] == "x".join(map(str, good.shape))


def test_an_unreadable_bad_pixel_mask_fails_initialize(model_dir, tmp_path):
    np.save(tmp_path / "inverted.npy", np.zeros((2, 64, 96), np.uint8))
    with pytest.raises(ValueError, match="every pixel is marked bad"):
        PeakNetHandler().initialize(make_context(model_dir, {"bad_pixel_mask": str(tmp_path / "inverted.npy")}))
