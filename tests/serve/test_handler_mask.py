"""A request's own bad-pixel mask through PeakNetHandler and TorchServe's own Context: applied to that
request's frames only, AND-ed with the deployment's mask, echoed as ``bad_pixel_mask``; refusals."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.device.finder import PanelPeakFinder
from peaknet_serve.serve.handler import PeakNetHandler
from tests.serve.test_handler import make_context, make_frames, raw_request, run_batch

FIXTURE = Path(__file__).parents[1] / "fixtures" / "upstream"
MULTIPART = "multipart/form-data; boundary=xyz"


@pytest.fixture(scope="module")
def handler(model_dir) -> PeakNetHandler:
    h = PeakNetHandler()
    h.initialize(make_context(model_dir))
    return h


@pytest.fixture(scope="module")
def finder() -> PanelPeakFinder:
    model = load_peaknet(FIXTURE / "peaknet_tiny.yaml")
    return PanelPeakFinder(model, dtype=torch.float32, device=torch.device("cpu"))


def npy(array: np.ndarray) -> bytearray:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return bytearray(buffer.getvalue())


def masked_request(frames: np.ndarray, mask: bytes | bytearray | None, **headers) -> tuple[dict, dict]:
    """A multipart request: the frames as .npy in part ``data``, ``mask`` as a file part."""
    row = {"data": npy(frames)}
    fields = {"data": {"content-type": "application/octet-stream"}}
    if mask is not None:
        row["mask"] = bytearray(mask)
        fields["mask"] = {"content-type": "application/octet-stream"}
    return row, {"Content-Type": MULTIPART, **fields, **headers}


def reference(finder, frames: np.ndarray, good: np.ndarray | None = None):
    """The peaks of (N, P, H, W) frames with (N, P, H, W) good pixels (or none), in this process."""
    panels = torch.from_numpy(frames.reshape(-1, *frames.shape[-2:]))
    mask = None if good is None else torch.from_numpy(np.ascontiguousarray(good.reshape(panels.shape)))
    return finder.find(panels, good_pixels=mask).table.to_host()


def served(answer: dict) -> dict[str, list]:
    """The answer's peaks as flat lists, panels numbered through the request (frame * P + panel)."""
    p = answer["shape"][1]
    return {
        "image": [i * p + panel for i, f in enumerate(answer["frames"]) for panel in f["panel"]],
        "npix": [n for f in answer["frames"] for n in f["npix"]],
        "ss": [v for f in answer["frames"] for v in f["ss"]],
        "fs": [v for f in answer["frames"] for v in f["fs"]],
    }


def assert_answer_is(answer: dict, table) -> None:
    peaks = served(answer)
    assert peaks["image"] == table.image_index.tolist() and peaks["npix"] == table.npix.tolist()
    np.testing.assert_allclose(peaks["ss"], table.ss, atol=1e-3)
    np.testing.assert_allclose(peaks["fs"], table.fs, atol=1e-3)


def left_half_bad(shape) -> np.ndarray:
    """(P, H, W) good pixels: panel 0's columns left of W/2 bad, everything else good."""
    good = np.ones(shape, bool)
    good[0, :, : shape[-1] // 2] = False
    return good


def test_a_requests_mask_drops_the_peaks_in_its_bad_pixels_and_nobody_elses(handler, model_dir, finder):
    """Three requests of the same frames in one batch: one mask for every frame (panel 0 all bad),
    one mask per frame (raw bytes), and none. Each answer is the finder's on its own mask; the
    unmasked one is the answer of the frames sent alone."""
    frames = make_frames(n=2, seed=31)
    n, p, h, w = frames.shape
    once = np.ones((p, h, w), bool)
    once[0] = False
    per_frame = np.random.default_rng(5).random(frames.shape) > 0.4
    plain = reference(finder, frames)
    assert (plain.image_index % p == 0).sum() > 0  # the mask has peaks to drop
    batch = [
        masked_request(frames, npy(once.astype(np.uint8))),
        masked_request(frames, (per_frame * 1).astype(np.uint8).tobytes()),
        masked_request(frames, None),
    ]
    statuses, bodies, _ = run_batch(handler, make_context(model_dir), batch)
    assert statuses == [200, 200, 200]
    masked_once, masked_per_frame, unmasked = (json.loads(b) for b in bodies)

    assert_answer_is(masked_once, reference(finder, frames, np.broadcast_to(once, frames.shape)))
    assert all(f["panel"] == [1] * f["num_peaks"] for f in masked_once["frames"])  # none of bad pixels only
    on_panel_1 = [{k: v for k, v in f.items() if k != "num_peaks"} for f in masked_once["frames"]]
    plain_panel_1 = [
        {k: [v for v, panel in zip(f[k], f["panel"]) if panel == 1] if isinstance(f[k], list) else f[k] for k in f}
        for f in unmasked["frames"]
    ]
    assert on_panel_1 == [{k: v for k, v in f.items() if k != "num_peaks"} for f in plain_panel_1]
    assert_answer_is(masked_per_frame, reference(finder, frames, per_frame))
    assert_answer_is(unmasked, plain)
    alone = json.loads(run_batch(handler, make_context(model_dir), [masked_request(frames, None)])[1][0])
    assert unmasked["frames"] == alone["frames"]
    echo = [a["bad_pixel_mask"] for a in (masked_once, masked_per_frame, unmasked)]
    assert echo == ["request", "request", "none"]


def test_masks_follow_their_requests_across_micro_batches_of_the_side_stream_upload(model_dir, finder):
    """``h2d_overlap`` with micro-batches of 3 panels over requests of 4, 2 and 4 panels: every
    micro-batch boundary falls inside a request, and each request still gets its own mask."""
    overlapped = PeakNetHandler()
    overlapped.initialize(make_context(model_dir, {"h2d_overlap": True, "max_batch_panels": 3}))
    first, second, third = make_frames(n=2, seed=32), make_frames(n=1, seed=33), make_frames(n=2, seed=34)
    good_first = left_half_bad(first.shape[1:])
    good_third = np.random.default_rng(6).random(third.shape) > 0.5
    batch = [
        masked_request(first, npy(good_first)),
        masked_request(second, None),
        masked_request(third, npy(good_third.astype(np.int32))),
    ]
    statuses, bodies, _ = run_batch(overlapped, make_context(model_dir), batch)
    assert statuses == [200, 200, 200]
    answers = [json.loads(b) for b in bodies]
    assert_answer_is(answers[0], reference(finder, first, np.broadcast_to(good_first, first.shape)))
    assert_answer_is(answers[1], reference(finder, second))
    assert_answer_is(answers[2], reference(finder, third, good_third))


def test_a_requests_mask_is_anded_with_the_deployments(model_dir, tmp_path, finder):
    frames = make_frames(n=2, seed=35)
    deployment = np.random.default_rng(7).random(frames.shape[1:]) > 0.3
    np.save(tmp_path / "mask.npy", deployment.astype(np.uint8))
    h = PeakNetHandler()
    h.initialize(make_context(model_dir, {"bad_pixel_mask": str(tmp_path / "mask.npy")}))
    own = left_half_bad(frames.shape[1:])
    statuses, bodies, _ = run_batch(
        h,
        make_context(model_dir),
        [masked_request(frames, npy(own)), masked_request(frames, None), masked_request(frames[:, :1], npy(own[:1]))],
    )
    assert statuses == [200, 200, 400]
    both, deployment_only, other_layout = (json.loads(b) for b in bodies)
    both_table = reference(finder, frames, np.broadcast_to(own & deployment, frames.shape))
    assert_answer_is(both, both_table)
    deployment_table = reference(finder, frames, np.broadcast_to(deployment, frames.shape))
    assert_answer_is(deployment_only, deployment_table)
    own_table = reference(finder, frames, np.broadcast_to(own, frames.shape))
    assert both_table.npix.sum() < min(own_table.npix.sum(), deployment_table.npix.sum())  # the AND of both
    assert both["bad_pixel_mask"] == "request+deployment" and deployment_only["bad_pixel_mask"] == "deployment"
    assert other_layout["error"]["type"] == "mask_mismatch"  # a request's mask does not lift the deployment's layout


def test_the_cxi_answer_carries_the_echo_as_a_root_attribute(handler, model_dir):
    frames = make_frames(n=1, seed=36)
    own = left_half_bad(frames.shape[1:])
    statuses, bodies, types = run_batch(
        handler,
        make_context(model_dir),
        [
            masked_request(frames, npy(own), Accept="application/x-hdf5"),
            masked_request(frames, None, Accept="application/x-hdf5"),
        ],
    )
    assert statuses == [200, 200] and types == ["application/x-hdf5"] * 2
    echoes = []
    for body in bodies:
        with h5py.File(io.BytesIO(body), "r") as f:
            echoes.append(f.attrs["bad_pixel_mask"])
    assert echoes == ["request", "none"]


def test_bad_masks_and_masks_sent_other_than_as_a_part_are_refused_alone(handler, model_dir):
    frames = make_frames(n=2, seed=37)
    p, h, w = frames.shape[1:]
    text_field = masked_request(frames, None)
    text_field[0]["mask"] = "1"
    text_field[1]["mask"] = {"content-type": ""}  # a form field without a file name
    query = raw_request(frames)
    query[0]["mask"] = "1"
    query[1]["mask"] = {"content-type": ""}  # a query parameter of a plain POST
    batch = [
        masked_request(frames, npy(np.ones((p, h + 1, w), np.uint8))),  # wrong shape
        masked_request(frames, b"\x01" * (p * h * w + 1)),  # wrong length of raw bytes
        masked_request(frames, npy(np.ones((p, h, w), np.float32))),  # float
        masked_request(frames, b"\x93NUMPY\x01\x00\x04\x00{}\n\n"),  # malformed .npy
        text_field,
        query,
        raw_request(frames, **{"X-Mask": "1"}),
        masked_request(frames, None),
    ]
    statuses, bodies, _ = run_batch(handler, make_context(model_dir), batch)
    assert statuses == [400] * 7 + [200]
    errors = [json.loads(b).get("error", {}) for b in bodies]
    assert [e.get("type") for e in errors[:7]] == ["bad_mask"] * 4 + ["bad_option"] * 3
    assert all("(P, H, W) for every frame" in e["message"] for e in errors[:4])
    assert all("file part 'mask'" in e["message"] for e in errors[4:7])
    assert json.loads(bodies[7])["bad_pixel_mask"] == "none"
