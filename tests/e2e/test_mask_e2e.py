"""A request's own bad-pixel mask through a real TorchServe: the multipart part ``mask`` (as curl,
requests and the Python client send it), batch-mates unaffected, the echo, and every refusal."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch

from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.clients.client import PeakNetClient
from peaknet_serve.device.finder import PanelPeakFinder
from tests.e2e.conftest import TINY_MODEL
from tests.frames import spot_frames

pytestmark = pytest.mark.e2e
TIMEOUT = 60


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def signature(frames: list[dict]) -> list:
    return [(f["num_peaks"], f["panel"], np.round(f["ss"], 3).tolist(), f["npix"]) for f in frames]


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return spot_frames(n=2, p=2, seed=41)


@pytest.fixture(scope="module")
def good(frames) -> np.ndarray:
    """(P, H, W): panel 0 bad, a third of panel 1 bad."""
    good = np.random.default_rng(3).random(frames.shape[1:]) > 0.33
    good[0] = False
    return good


@pytest.fixture(scope="module")
def expected(frames, good) -> dict[str, list]:
    """The in-process finder's peaks with the mask and without, as the answers' frames."""
    model = load_peaknet(TINY_MODEL, dtype="float32", device="cpu")
    finder = PanelPeakFinder(model, dtype=torch.float32, device=torch.device("cpu"))
    panels = torch.from_numpy(frames.reshape(-1, *frames.shape[2:]))
    mask = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(good, frames.shape).reshape(panels.shape)))
    out = {}
    for name, table in (("masked", finder.find(panels, mask)), ("plain", finder.find(panels))):
        host = table.table.to_host()
        rows = []
        for n in range(frames.shape[0]):
            pick = host.image_index // frames.shape[1] == n
            rows.append(
                {
                    "num_peaks": int(pick.sum()),
                    "panel": (host.image_index[pick] % frames.shape[1]).tolist(),
                    "ss": host.ss[pick].tolist(),
                    "npix": host.npix[pick].tolist(),
                }
            )
        out[name] = signature(rows)
    assert out["masked"] != out["plain"]
    return out


def post(server, files, data=None, headers=None, params=None):
    return requests.post(
        server.predict_url,
        files=files,
        data=data,
        params=params,
        headers={**server.headers, **(headers or {})},
        timeout=TIMEOUT,
    )


def test_masked_and_unmasked_requests_in_shared_batches(served, frames, good, expected):
    """Masked requests (a .npy part without a declared type, raw uint8 bytes, the client's) and
    unmasked ones, sent at once so that TorchServe batches them together: each gets its own peaks."""
    client = PeakNetClient(served.inference_url, encoding="npy", retries=0)
    jobs = [
        lambda: post(served, {"data": ("f.npy", npy_bytes(frames)), "mask": ("m.npy", npy_bytes(good))}).json(),
        lambda: post(served, {"data": ("f.npy", npy_bytes(frames))}).json(),
        lambda: post(
            served,
            {
                "data": ("f.bin", frames.tobytes(), "application/octet-stream"),
                "mask": ("m.bin", np.broadcast_to(good, frames.shape).astype(np.uint8).tobytes()),
            },
            data={"dtype": "uint16", "shape": ",".join(map(str, frames.shape))},
        ).json(),
        lambda: client.predict(frames, mask=good),
        lambda: client.predict(frames),
    ] * 2
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(lambda job: job(), jobs))
    for answer, masked in zip(answers, [True, False, True, True, False] * 2):
        assert "frames" in answer, answer
        assert signature(answer["frames"]) == expected["masked" if masked else "plain"]
        assert answer["bad_pixel_mask"] == ("request" if masked else "none")
        if masked:
            assert all(set(f["panel"]) <= {1} for f in answer["frames"])  # panel 0 is all bad


def test_the_cxi_answer_echoes_the_mask(served, frames, good):
    h5py = pytest.importorskip("h5py")
    response = post(
        served,
        {"data": ("f.npy", npy_bytes(frames)), "mask": ("m.npy", npy_bytes(good))},
        headers={"Accept": "application/x-hdf5"},
    )
    assert response.status_code == 200, response.text
    with h5py.File(io.BytesIO(response.content), "r") as f:
        assert f.attrs["bad_pixel_mask"] == "request"


def test_bad_masks_and_masks_sent_other_than_as_a_part_are_400(served, frames, good):
    data = ("f.npy", npy_bytes(frames))
    p, h, w = frames.shape[1:]
    cases = {
        "wrong shape": (post(served, {"data": data, "mask": ("m.npy", npy_bytes(good[:, :-1]))}), "bad_mask"),
        "wrong length": (post(served, {"data": data, "mask": ("m.bin", b"\x01" * (p * h * w - 1))}), "bad_mask"),
        "float": (post(served, {"data": data, "mask": ("m.npy", npy_bytes(good.astype(np.float32)))}), "bad_mask"),
        "all bad": (post(served, {"data": data, "mask": ("m.npy", npy_bytes(np.zeros_like(good)))}), "bad_mask"),
        "text field": (post(served, {"data": data}, data={"mask": "1"}), "bad_option"),
        "header": (post(served, {"data": data}, headers={"X-Mask": "1"}), "bad_option"),
    }
    for name, (response, kind) in cases.items():
        assert response.status_code == 400, f"{name}: {response.status_code} {response.text}"
        error = response.json()["error"]
        assert error["type"] == kind, f"{name}: {error}"
        wanted = "(P, H, W) for every frame" if kind == "bad_mask" else "file part 'mask'"
        assert wanted in error["message"], f"{name}: {error['message']}"


def test_a_query_parameter_mask_never_reaches_the_handler_and_the_echo_says_so(served, frames):
    """TorchServe 0.12's frontend passes no query parameter of a POST with a body to the handler
    (``?threshold=`` is dropped the same way): the answer's bad_pixel_mask shows no mask applied."""
    multipart = post(served, {"data": ("f.npy", npy_bytes(frames))}, params={"mask": "1"})
    plain = requests.post(
        served.predict_url,
        data=npy_bytes(frames),
        params={"mask": "1"},
        headers={**served.headers, "Content-Type": "application/x-npy"},
        timeout=TIMEOUT,
    )
    for response in (multipart, plain):
        assert response.status_code == 200, response.text
        assert response.json()["bad_pixel_mask"] == "none"
