"""Faults under load against a real TorchServe on CPU: batches that would outlive ``responseTimeout``,
overload by many clients, a worker and the HDF5 reader SIGKILLed mid-request, readiness with a missing
worker. Every answer is checked against a reference answer of the same server: no wrong answer, ever.
docs/security.md quotes the figures these tests print."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import h5py
import numpy as np
import pytest
import requests
import yaml

from peaknet_serve.launch.archive import build
from tests.e2e.conftest import TINY_MODEL, Server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
TIMEOUT = 120
PANELS, HEIGHT, WIDTH = 2, 64, 96
RESPONSE_TIMEOUT_S = 20
MAX_FRAMES = 1024


def frames(seed: int, n: int = 1) -> np.ndarray:
    """(n, 2, 64, 96) uint16 with a few bright spots on a low background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 30, (n, PANELS, HEIGHT, WIDTH), dtype=np.uint16)
    for _ in range(6 * n):
        f, p, y, x = (
            rng.integers(0, n),
            rng.integers(0, PANELS),
            rng.integers(3, HEIGHT - 3),
            rng.integers(3, WIDTH - 3),
        )
        image[f, p, y - 1 : y + 2, x - 1 : x + 2] = 3000
    return image


def post(server: Server, array: np.ndarray, timeout: float = TIMEOUT) -> requests.Response:
    headers = {
        **server.headers,
        "Content-Type": "application/octet-stream",
        "X-Dtype": "uint16",
        "X-Shape": ",".join(map(str, array.shape)),
    }
    return requests.post(server.predict_url, data=array.tobytes(), headers=headers, timeout=timeout)


def peaks(answer: requests.Response) -> list:
    assert answer.status_code == 200, answer.text[:300]
    return answer.json()["frames"]


def worker(server: Server) -> dict | None:
    described = requests.get(f"{server.management_url}/models/peaknet", headers=server.management_headers, timeout=10)
    workers = described.json()[0]["workers"]
    return workers[0] if workers else None


def wait_for_ready_worker(server: Server, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = worker(server)
        if current is not None and current["status"] == "READY":
            return current
        time.sleep(0.2)
    raise TimeoutError("no READY worker")


def torchserve_error(answer: requests.Response) -> str:
    """The message of one of TorchServe's own error bodies ({"code", "type", "message"})."""
    return (
        answer.json().get("message", "")
        if answer.headers.get("Content-Type", "").startswith("application/json")
        else ""
    )


# -- a batch that would outlive responseTimeout ------------------------------------------------------


@pytest.fixture(scope="module")
def budget_store(tmp_path_factory) -> Path:
    """An archive with a short responseTimeout and a long batch delay, so concurrent requests share a batch."""
    store = tmp_path_factory.mktemp("budget_store")
    config = store.parent / "budget-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": 8,
                "maxBatchDelay": 3000,
                "responseTimeout": RESPONSE_TIMEOUT_S,
                "startupTimeout": 300,
                "handler": {
                    "config": "peaknet.yaml",
                    "model_label": "peaknet-tiny-fixture",
                    "max_batch_panels": 16,
                    "warmup": True,
                    "warmup_shapes": [[8, HEIGHT, WIDTH]],
                    "max_frames": MAX_FRAMES,
                    "max_pixels": MAX_FRAMES * PANELS * HEIGHT * WIDTH,
                    "max_body_bytes": 64 * 2**20,
                    # the fixture's random weights mark about half of every panel: uncapped, so that
                    # each frame costs the labelling it measured
                    "max_mask_fraction": None,
                },
            }
        )
    )
    build(TINY_MODEL, None, config, store)
    return store


def concurrent(server: Server, arrays: list[np.ndarray]) -> list[requests.Response]:
    with ThreadPoolExecutor(len(arrays)) as pool:
        return list(pool.map(lambda a: post(server, a), arrays))


def timed(server: Server, array: np.ndarray) -> float:
    started = time.perf_counter()
    peaks(post(server, array))
    return time.perf_counter() - started


def frame_seconds(server: Server) -> float:
    """Seconds per frame on this machine now: the difference of 48- and 16-frame requests (medians of
    three; this host's load varies), so that the batch delay and other fixed costs drop out."""
    small, large = frames(0, 16), frames(1, 48)
    t_small = sorted(timed(server, small) for _ in range(3))[1]
    t_large = sorted(timed(server, large) for _ in range(3))[1]
    return max((t_large - t_small) / 32, 1e-4)


def requests_of(n: int, count: int = 8) -> list[np.ndarray]:
    return [frames(100 + i, n) for i in range(count)]


def check_survived(server: Server, pid: int, arrays: list[np.ndarray], answers: list[requests.Response]) -> None:
    """No worker death: only 200 (the request's own answer), 503 busy or 413 too_large, the same worker."""
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503, 413}, [a.text[:200] for a in answers]
    for array, answer in zip(arrays, answers):
        if answer.status_code == 200:
            assert len(peaks(answer)) == len(array)
        else:
            assert answer.json()["error"]["type"] == ("busy" if answer.status_code == 503 else "too_large")
        if answer.status_code == 503:
            assert int(answer.headers["Retry-After"]) >= 1
    assert worker(server)["pid"] == pid  # the same worker: nothing was killed


@pytest.fixture(scope="module")
def sizes(start_server, budget_store) -> dict:
    """Request sizes: ``fits`` is the warm-up shape's 8 frames (its cost is the server's own start-up
    measurement), ``heavy`` the archive's ``max_frames``; ``per_frame``, this machine's speed now on a
    server without admission, says how long a heavy batch of eight takes
    (eight of them outlast the timeout several times over, even when this shared host turns faster).
    The budgeted server first serves a few requests half the size of ``fits``, so that its estimate
    has seen this host's current load."""
    unbudgeted = start_server(store=budget_store, PEAKNET_BATCH_TIME_FRACTION="0")
    per_frame = frame_seconds(unbudgeted)
    fits = 8  # the warm-up shape the server calibrated its estimate on: admitted by that estimate
    server = start_server(store=budget_store)
    for _ in range(3):
        post(server, frames(1, max(1, fits // 2)))
    return {
        "server": server,
        "unbudgeted": unbudgeted,
        "per_frame": per_frame,
        "fits": fits,
        "heavy": MAX_FRAMES,
    }


def test_a_batch_past_response_timeout_is_refused_up_front_not_killed(sizes):
    server = sizes["server"]
    pid = worker(server)["pid"]
    for n in (sizes["fits"], sizes["heavy"]):
        arrays = requests_of(n)
        started = time.monotonic()
        answers = concurrent(server, arrays)
        statuses = [a.status_code for a in answers]
        print(
            f"\n8 requests of {n} frames (~{n * sizes['per_frame']:.1f} s each alone, responseTimeout "
            f"{RESPONSE_TIMEOUT_S} s) batched: {statuses} in {time.monotonic() - started:.1f} s"
        )
        check_survived(server, pid, arrays, answers)
        if n == sizes["fits"]:
            assert 200 in statuses
            served = statuses.index(200)
            # its own answer: what a server without admission finds in the same frames
            assert peaks(answers[served]) == peaks(post(sizes["unbudgeted"], arrays[served]))
    assert [s for s in statuses if s != 200], "eight heavy requests outlast responseTimeout: some must be refused"


def test_without_the_budget_the_same_batch_kills_the_worker(sizes):
    """The control: admission off (PEAKNET_BATCH_TIME_FRACTION=0), the heavy batch of the test above
    runs past responseTimeout; TorchServe kills the worker and answers "Worker died."."""
    server = sizes["unbudgeted"]
    before = worker(server)["pid"]
    answers = concurrent(server, requests_of(sizes["heavy"]))
    print(f"\nadmission off, 8 requests of {sizes['heavy']} frames: {[a.status_code for a in answers]}")
    died = [a for a in answers if a.status_code >= 500 and "Worker died" in torchserve_error(a)]
    assert died, [a.status_code for a in answers]
    assert wait_for_ready_worker(server)["pid"] != before


# -- overload -----------------------------------------------------------------------------------------


def test_overload_gets_200_or_503_never_a_wrong_answer_and_recovers(start_server):
    server = start_server(props={"job_queue_size": "8"})
    inputs = [frames(seed) for seed in range(8)]
    reference = [peaks(post(server, array)) for array in inputs]
    pid = worker(server)["pid"]
    total, clients = 300, 64
    counts = {"200": 0, "503": 0, "other": 0, "wrong": 0}
    lock = threading.Lock()

    def one(i: int) -> None:
        index = i % len(inputs)
        answer = post(server, inputs[index], timeout=60)
        with lock:
            if answer.status_code == 200:
                counts["200"] += 1
                counts["wrong"] += answer.json()["frames"] != reference[index]
            elif answer.status_code == 503:
                counts["503"] += 1
            else:
                counts["other"] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(total)))
    elapsed = time.monotonic() - started
    print(f"\n{total} requests from {clients} clients, job_queue_size 8: {counts} in {elapsed:.1f} s")
    assert counts["other"] == 0 and counts["wrong"] == 0
    assert counts["200"] > 0 and counts["503"] > 0 and counts["200"] + counts["503"] == total
    assert elapsed < 60
    for array, expected in zip(inputs, reference):  # recovered: everything served again
        assert peaks(post(server, array)) == expected
    assert worker(server)["pid"] == pid


# -- a worker and the HDF5 reader killed mid-request; readiness ------------------------------------------


def healthcheck(server: Server, *args: str) -> int:
    env = {
        **os.environ,
        "PEAKNET_HOME": str(server.workdir),
        "PEAKNET_INFERENCE_PORT": str(urlsplit(server.inference_url).port),
        "PEAKNET_MANAGEMENT_PORT": str(urlsplit(server.management_url).port),
    }
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], env=env, capture_output=True, timeout=30
    ).returncode


def ping_status(server: Server) -> int:
    return requests.get(f"{server.inference_url}/ping", headers=server.headers, timeout=10).status_code


@pytest.fixture(scope="module")
def keyed(start_server) -> Server:
    return start_server(token_auth=True)


def test_sigkill_of_the_worker_mid_request_is_a_5xx_and_readiness_follows(keyed):
    # 8 frames of 16 small panels (the test archive's max_frames): about a second of work on a CPU, so
    # the kill lands while the request is in the worker
    array = np.random.default_rng(7).integers(0, 30, (8, 16, 64, 96), dtype=np.uint16)
    expected = peaks(post(keyed, array))
    pid = wait_for_ready_worker(keyed)["pid"]
    assert healthcheck(keyed) == 0 and healthcheck(keyed, "--live") == 0
    result = {}
    thread = threading.Thread(target=lambda: result.update(answer=post(keyed, array)))
    thread.start()
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    thread.join()
    answer = result["answer"]
    assert answer.status_code in (500, 507) and "Worker died" in torchserve_error(answer), answer.text
    readiness, pings = [], []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        readiness.append(healthcheck(keyed))
        pings.append(ping_status(keyed))
        if readiness[-1] == 0:
            break
    print(
        f"\nworker {pid} killed mid-request: {answer.status_code} {torchserve_error(answer)!r}; readiness "
        f"while it restarted: {readiness}, /ping: {pings}"
    )
    assert readiness[0] == 1 and readiness[-1] == 0  # not ready without a worker, ready again after
    assert set(pings) == {200}  # TorchServe's /ping: Healthy throughout
    assert wait_for_ready_worker(keyed)["pid"] != pid
    assert peaks(post(keyed, array)) == expected


def test_readiness_reflects_workers_scaled_to_zero(keyed):
    management = f"{keyed.management_url}/models/peaknet"
    scaled = requests.put(
        management,
        params={"min_worker": "0", "max_worker": "0", "synchronous": "true"},
        headers=keyed.management_headers,
        timeout=TIMEOUT,
    )
    try:
        assert scaled.status_code == 200, scaled.text
        assert healthcheck(keyed) == 1  # not ready: no worker
        assert ping_status(keyed) == 200  # while TorchServe's /ping still says Healthy
        refused = post(keyed, frames(1))
        assert refused.status_code == 503
    finally:
        restored = requests.put(
            management,
            params={"min_worker": "1", "max_worker": "1", "synchronous": "true"},
            headers=keyed.management_headers,
            timeout=TIMEOUT,
        )
        assert restored.status_code == 200, restored.text
    wait_for_ready_worker(keyed)
    assert healthcheck(keyed) == 0


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cxi_like_hdf5(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=array, compression="gzip")
    return buffer.getvalue()


def test_sigkill_of_the_hdf5_reader_mid_request_is_a_500_and_the_next_request_is_served(keyed):
    array = frames(11, 2)
    expected = peaks(post(keyed, array))
    body = cxi_like_hdf5(array)
    headers = {**keyed.headers, "Content-Type": "application/x-hdf5"}
    assert peaks(requests.post(keyed.predict_url, data=body, headers=headers, timeout=TIMEOUT)) == expected
    pid = wait_for_ready_worker(keyed)["pid"]
    (reader,) = [c for c in children(pid) if b"hdf5_sandbox" in Path(f"/proc/{c}/cmdline").read_bytes()]
    os.kill(reader, signal.SIGSTOP)  # the reader holds the next request ...
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(
            answer=requests.post(keyed.predict_url, data=body, headers=headers, timeout=TIMEOUT)
        )
    )
    thread.start()
    time.sleep(1.0)
    os.kill(reader, signal.SIGKILL)  # ... and dies while holding it
    thread.join()
    answer = result["answer"]
    print(f"\nHDF5 reader {reader} killed mid-request: {answer.status_code} {answer.text[:160]}")
    assert answer.status_code == 500 and answer.json()["error"]["type"] == "hdf5_reader_failed"
    assert worker(keyed)["pid"] == pid  # the worker lives on
    assert peaks(requests.post(keyed.predict_url, data=body, headers=headers, timeout=TIMEOUT)) == expected


def test_health_checks_renew_expired_keys(start_server):
    """Keys expire after token_expiration_min (here 1 minute); the checks renew them with the API key
    instead of reporting a healthy server unhealthy, and TorchServe rewrites key_file.json."""
    server = start_server(token_auth=True, props={"token_expiration_min": "1"})
    key_file = Path(server.workdir) / "key_file.json"
    written = key_file.stat().st_mtime
    time.sleep(max(0.0, written + 65 - time.time()))
    assert requests.get(f"{server.inference_url}/ping", headers=server.headers, timeout=10).status_code == 400
    old = json.loads(key_file.read_text())
    assert healthcheck(server) == 0 and healthcheck(server, "--live") == 0
    new = json.loads(key_file.read_text())
    assert new["management"]["key"] != old["management"]["key"] and new["inference"]["key"] != old["inference"]["key"]
    assert new["API"]["key"] == old["API"]["key"] and key_file.stat().st_mode & 0o077 == 0
