"""The Docker image, built and run by a real container engine (podman; docker where podman is absent).

The image is built from the repository's Dockerfile by ``docker/podman-build.sh`` (podman: base made
with debootstrap where no registry is reachable; CPU torch where the host has the CPU wheel) or
``docker build``; ``PEAKNET_CONTAINER_IMAGE=TAG`` uses an image built before instead. Then, through
the published ports, as users run it: health check, token authorisation with the key read from
the container, every request encoding, Prometheus metrics, a restart, a user's checkpoint mounted
under /models and selected by environment, non-root users (the image's and an arbitrary one). The
published port is nginx's (the reverse proxy, on by default) unless ``PEAKNET_PROXY=off``; when nginx
or TorchServe ends, the container ends.

Skipped where no engine is installed, or with ``PEAKNET_CONTAINER_TESTS=0``. Not covered here: a
CUDA image on a GPU host (``--gpus all``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from peaknet_serve.clients.payloads import ENCODINGS, Geometry, check_prediction, encode_request, simulate_frames

ROOT = Path(__file__).resolve().parents[2]
ENGINE = shutil.which("podman") or shutil.which("docker")
PODMAN = ENGINE is not None and Path(ENGINE).name == "podman"
FIXTURES = ROOT / "tests" / "fixtures" / "upstream"
HEALTH_TIMEOUT_S = float(os.environ.get("PEAKNET_CONTAINER_HEALTH_TIMEOUT", "300"))
KEY_FILE = "/home/peaknet/key_file.json"

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(ENGINE is None, reason="no container engine (podman or docker)"),
    pytest.mark.skipif(os.environ.get("PEAKNET_CONTAINER_TESTS") == "0", reason="PEAKNET_CONTAINER_TESTS=0"),
]


def engine(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{Path(ENGINE).name} {' '.join(args)} -> {result.returncode}\n{result.stderr[-3000:]}")
    return result


def run_flags() -> list[str]:
    """runc with explicit rlimits where runc is installed (crun cannot set rlimits on some hosts)."""
    if PODMAN and shutil.which("runc"):
        return ["--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
    return []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Container:
    name: str
    inference: str
    metrics: str

    def logs(self) -> str:
        result = engine("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-4000:]

    def state(self) -> str:
        return engine("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()

    def healthy(self) -> bool:
        if PODMAN:  # podman runs HEALTHCHECK on demand where no systemd timer does
            return engine("healthcheck", "run", self.name, check=False, timeout=60).returncode == 0
        status = engine("inspect", "--format", "{{.State.Health.Status}}", self.name).stdout.strip()
        return status == "healthy"

    def wait_healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> float:
        """Seconds until the image's own HEALTHCHECK passes."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.state() != "running":
                pytest.fail(f"container {self.name} is {self.state()}:\n{self.logs()}")
            if self.healthy():
                return time.monotonic() - started
            time.sleep(2)
        pytest.fail(f"container {self.name} not healthy after {timeout_s:.0f} s:\n{self.logs()}")

    def key(self) -> str:
        """The inference key TorchServe wrote inside the container."""
        document = json.loads(engine("exec", self.name, "cat", KEY_FILE).stdout)
        return document["inference"]["key"]

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key()}"}


@pytest.fixture(scope="module")
def image() -> str:
    if os.environ.get("PEAKNET_CONTAINER_IMAGE"):
        return os.environ["PEAKNET_CONTAINER_IMAGE"]
    tag = "localhost/peaknet-serve:test"
    started = time.monotonic()
    if PODMAN:
        command = ["bash", str(ROOT / "docker" / "podman-build.sh"), tag]
    else:
        command = [ENGINE, "build", "-t", tag, str(ROOT)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    assert result.returncode == 0, f"image build failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    print(f"\nbuilt {tag} in {time.monotonic() - started:.0f} s")
    return tag


@pytest.fixture(scope="module")
def start(image) -> Iterator:
    """``start(*run_args, **env) -> Container``; every container is removed at the end."""
    names: list[str] = []

    def _start(*args: str, **env: str) -> Container:
        name = f"peaknet-test-{uuid.uuid4().hex[:8]}"
        port, metrics = free_port(), free_port()
        env_args = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
        engine(
            "run",
            "-d",
            "--name",
            name,
            *run_flags(),
            "-p",
            f"127.0.0.1:{port}:8080",
            "-p",
            f"127.0.0.1:{metrics}:8082",
            *env_args,
            *args,
            image,
        )
        names.append(name)
        return Container(name, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics}")

    yield _start
    for name in names:
        engine("rm", "-f", "-t", "5", name, check=False)


@pytest.fixture(scope="module")
def served(start) -> Container:
    # metrics carry no token: published only where asked for (the entrypoint's PEAKNET_METRICS_BIND_ADDRESS)
    container = start(PEAKNET_METRICS_BIND_ADDRESS="0.0.0.0")
    seconds = container.wait_healthy()
    print(f"\n{container.name} healthy after {seconds:.0f} s")
    return container


def small_frames(dtype: str) -> np.ndarray:
    return simulate_frames(Geometry("small", 2, 64, 96), 2, dtype, seed=3).frames


def predict(container: Container, frames: np.ndarray, encoding: str, headers: dict[str, str]) -> requests.Response:
    request = encode_request(frames, encoding)
    return requests.post(
        f"{container.inference}/predictions/peaknet",
        data=request.body,
        headers={**request.headers, **headers},
        timeout=300,
    )


def test_image_keeps_its_healthcheck_and_user(image):
    document = json.loads(engine("image", "inspect", image).stdout)[0]
    config = document["Config"]
    assert config["User"] == "10001"
    healthcheck = config.get("Healthcheck") or document.get("Healthcheck")  # docker: in Config; podman: top level
    assert healthcheck and "/opt/peaknet/docker/healthcheck.py" in " ".join(healthcheck["Test"])
    assert config["Entrypoint"][0] == "/usr/bin/tini"


def test_runs_as_the_image_user_not_root(served):
    assert engine("exec", served.name, "id", "-u").stdout.strip() == "10001"
    status = engine("exec", served.name, "cat", "/proc/1/status").stdout
    assert "Uid:\t10001" in status  # PID 1 (tini) too; so are its children, started by it


def unauthorized(answer: requests.Response) -> bool:
    """The proxy's refusal of a missing or wrong key: a JSON 401 ``unauthorized``."""
    return answer.status_code == 401 and answer.json()["error"]["type"] == "unauthorized"


def test_token_authorisation_with_the_key_from_the_container(served):
    frames = small_frames("uint16")
    assert unauthorized(requests.get(f"{served.inference}/ping", timeout=10))
    assert unauthorized(predict(served, frames, "raw", {}))
    assert unauthorized(predict(served, frames, "raw", {"Authorization": "Bearer wrong"}))
    ping = requests.get(f"{served.inference}/ping", headers=served.auth(), timeout=10)
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_every_encoding_gives_the_same_peaks(served, dtype):
    frames = small_frames(dtype)
    headers = served.auth()
    answers = {}
    for encoding in ENCODINGS:
        response = predict(served, frames, encoding, headers)
        assert response.status_code == 200, f"{encoding}: {response.status_code} {response.text[:300]}"
        document = response.json()
        assert check_prediction(document, len(frames)) == [], encoding
        assert document["dtype"] == dtype and document["device"] == "cpu"
        answers[encoding] = document["frames"]
    for encoding, found in answers.items():
        assert found == answers["raw"], f"{encoding} answered other peaks than raw"


def test_full_epix10k2m_frame(served):
    frames = simulate_frames(Geometry("epix10k2m", 16, 352, 384), 1, "uint16", seed=5).frames
    response = predict(served, frames, "hdf5-bslz4", served.auth())
    assert response.status_code == 200, response.text[:300]
    assert response.json()["shape"] == [1, 16, 352, 384]


def test_bad_input_gets_a_4xx_json_error(served):
    response = requests.post(
        f"{served.inference}/predictions/peaknet",
        data=b"\x00" * 10,
        headers={
            **served.auth(),
            "Content-Type": "application/octet-stream",
            "X-Dtype": "uint16",
            "X-Shape": "1,2,64,96",
        },
        timeout=60,
    )
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


def test_metrics_count_the_requests(served):
    predict(served, small_frames("uint16"), "raw", served.auth()).raise_for_status()
    text = requests.get(f"{served.metrics}/metrics", timeout=10).text
    requests_total = [
        line
        for line in text.splitlines()
        if line.startswith("ts_inference_requests_total") and 'model_name="peaknet"' in line
    ]
    assert requests_total and float(requests_total[0].rsplit(" ", 1)[1]) >= 1
    assert any(line.startswith("PeakNet") for line in text.splitlines()), "no handler metrics"


def test_restart_comes_back_with_a_new_key(served):
    old_key = served.key()
    started = time.monotonic()
    engine("restart", "-t", "30", served.name, timeout=120)
    restart_s = time.monotonic() - started
    assert restart_s < 20, f"restart took {restart_s:.0f} s: SIGTERM did not stop the server"
    healthy_s = served.wait_healthy()
    print(f"\nrestart {restart_s:.1f} s, healthy {healthy_s:.0f} s later")
    new_key = served.key()
    assert new_key != old_key
    frames = small_frames("uint16")
    assert unauthorized(predict(served, frames, "raw", {"Authorization": f"Bearer {old_key}"}))
    assert predict(served, frames, "raw", {"Authorization": f"Bearer {new_key}"}).status_code == 200


EMPTY_BOUNDARY = {"Content-Type": "multipart/form-data; boundary="}


def test_the_proxy_answers_what_torchserve_decides_badly(served):
    """An empty multipart boundary (TorchServe's own answer: a 500) and a dead worker, through the proxy."""
    answer = requests.post(
        f"{served.inference}/predictions/peaknet", data=b"x", headers={**served.auth(), **EMPTY_BOUNDARY}, timeout=60
    )
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "bad_multipart"
    assert requests.get(f"{served.inference}/token", headers=served.auth(), timeout=10).status_code == 404
    logs = served.logs()
    assert '"POST /predictions/peaknet HTTP/1.1" 400' in logs  # nginx's access log is the container's output


def test_stop_is_prompt_and_the_proxy_can_be_off(start):
    container = start(PEAKNET_DISABLE_TOKEN_AUTH="true", PEAKNET_PROXY="off")
    container.wait_healthy()
    # TorchServe itself on the published port: its own 500 for the empty boundary
    answer = requests.post(f"{container.inference}/predictions/peaknet", data=b"x", headers=EMPTY_BOUNDARY, timeout=60)
    assert answer.status_code == 500 and answer.json()["type"] == "StringIndexOutOfBoundsException"
    started = time.monotonic()
    engine("stop", "-t", "30", container.name, timeout=120)
    assert time.monotonic() - started < 15


def test_user_checkpoint_under_models_as_an_arbitrary_user(start, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("peaknet_tiny.pt", "peaknet_tiny.yaml"):
        shutil.copy2(FIXTURES / name, models / name)
    models.chmod(0o755)
    container = start(
        "--user",
        "4242:0",
        "-v",
        f"{models}:/models:ro",
        PEAKNET_WEIGHTS="peaknet_tiny.pt",
        PEAKNET_CONFIG="peaknet_tiny.yaml",
    )
    container.wait_healthy()
    assert engine("exec", container.name, "id", "-u").stdout.strip() == "4242"
    logs = engine("logs", container.name)
    assert "loaded PeakNet weights from /models/peaknet_tiny.pt" in logs.stdout + logs.stderr
    response = predict(container, small_frames("float32"), "npy", container.auth())
    assert response.status_code == 200, response.text[:300]
    assert response.json()["model"] == "peaknet_tiny"
    # TorchServe ends (its Java frontend killed): nginx is stopped and the container exits
    java = engine(
        "exec",
        container.name,
        "sh",
        "-c",
        "for p in /proc/[0-9]*; do grep -qa org.pytorch.serve.Model[S]erver $p/cmdline 2>/dev/null && basename $p; done; true",
    ).stdout.split()
    assert len(java) == 1, java
    engine("exec", container.name, "sh", "-c", f"kill -KILL {java[0]}")
    wait_exited(container, "TorchServe ended")


def wait_exited(container: Container, message: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while container.state() == "running":
        assert time.monotonic() < deadline, f"{container.name} still running:\n{container.logs()}"
        time.sleep(1)
    assert f"entrypoint: {message}" in container.logs()


def test_when_nginx_ends_the_container_exits(served):
    """Last of the tests on ``served``: nginx killed, TorchServe is stopped and the container ends."""
    pid = engine("exec", served.name, "cat", "/home/peaknet/proxy/nginx.pid").stdout.strip()
    engine("exec", served.name, "sh", "-c", f"kill -KILL {pid}")  # no kill binary in the image: the shell's
    wait_exited(served, "nginx ended")
    assert engine("inspect", "--format", "{{.State.ExitCode}}", served.name).stdout.strip() != "0"


def test_missing_checkpoint_fails_fast_with_a_message(image):
    result = engine("run", "--rm", *run_flags(), "-e", "PEAKNET_WEIGHTS=absent.pt", image, check=False, timeout=120)
    assert result.returncode == 64
    assert "PEAKNET_WEIGHTS: no file /models/absent.pt" in result.stderr


AOT_PROBE = """
import torch
net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(4, 1, 1)).eval()
x = torch.randn(2, 1, 16, 16)
path = torch._inductor.aoti_compile_and_package(torch.export.export(net, (x,)), package_path="/tmp/net.pt2")
with torch.inference_mode():
    torch.testing.assert_close(torch._inductor.aoti_load_package(path)(x), net(x))
print("AOT package built and answering")
"""


def test_the_image_builds_aot_packages_with_its_own_compiler(image):
    """AOT packages (compile_backend auto/aoti) build inside the container, as its user: g++ is there
    and CUDA_HOME names the CUDA headers gathered at build time (a CUDA image; the CPU image builds
    a CPU package of a small conv net, through the same C++ compiler and torch headers)."""
    flags = ["run", "--rm", *run_flags()]
    assert engine(*flags, "--entrypoint", "printenv", image, "CUDA_HOME").stdout.strip() == "/opt/venv/cuda"
    assert engine(*flags, "--entrypoint", "g++", image, "--version").stdout.startswith("g++")
    result = engine(*flags, "--entrypoint", "/opt/venv/bin/python", image, "-c", AOT_PROBE, timeout=900)
    assert "AOT package built and answering" in result.stdout
