"""``peaknet-serve start --proxy``: a real nginx in front of a real TorchServe started the way
``make serve`` starts it (the shipped config.properties on free ports, the tiny test model), and
``peaknet-serve stop`` ending both."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from peaknet_serve.launch.local_proxy import (
    find_nginx,
    listen_of,
    proxy_wanted,
    remove_upstream_socket,
    upstream_socket,
)
from peaknet_serve.launch.proxy import host_port
from peaknet_serve.launch.server import bearer, read_keys, read_properties, start, stop
from tests.e2e.conftest import model_store  # noqa: F401  (fixture)
from tests.e2e.test_security_e2e import shipped_config

NGINX = find_nginx()
SETPRIV = shutil.which("setpriv")
FRAMES = np.random.default_rng(5).integers(0, 60, (1, 2, 64, 96), dtype=np.uint16)
RAW = {"Content-Type": "application/octet-stream", "X-Dtype": "uint16", "X-Shape": "1,2,64,96"}


def test_auto_means_where_nginx_is_installed_and_on_needs_it():
    assert proxy_wanted("auto", "/usr/sbin/nginx") and not proxy_wanted("auto", None)
    assert proxy_wanted("on", "/usr/sbin/nginx") and not proxy_wanted("off", "/usr/sbin/nginx")
    with pytest.raises(RuntimeError, match="nginx not found"):
        proxy_wanted("on", None)
    with pytest.raises(ValueError, match="proxy must be one of"):
        proxy_wanted("maybe", None)
    assert listen_of("http://127.0.0.1:8080") == "127.0.0.1:8080"
    assert listen_of("http://0.0.0.0:9000") == "0.0.0.0:9000"
    with pytest.raises(ValueError):
        listen_of("https://127.0.0.1")


def unix_answers(path: Path, as_user: int | None = None) -> bool:
    """Whether a connection to the unix socket ``path`` is accepted, from this process or from a
    child running as the uid ``as_user`` (by ``setpriv``)."""
    if as_user is None:
        with socket.socket(socket.AF_UNIX) as client:
            try:
                client.connect(str(path))
            except OSError:
                return False
        return True
    probe = f"import socket; socket.socket(socket.AF_UNIX).connect({str(path)!r})"
    command = [SETPRIV, f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups", sys.executable, "-c", probe]
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


def test_upstream_socket_is_private_and_short_enough(tmp_path):
    run = tmp_path / ".run"
    path = upstream_socket(run)
    assert path == run.resolve() / "inference.sock" and stat.S_IMODE(run.stat().st_mode) == 0o700
    deep = tmp_path / ("d" * 120)
    fallback = upstream_socket(deep)
    assert len(os.fsencode(fallback)) <= 107 and fallback.parent.name.startswith("peaknet-serve-")
    assert stat.S_IMODE(fallback.parent.stat().st_mode) == 0o700
    fallback.write_text("")
    remove_upstream_socket(f"unix:{fallback}")
    assert not fallback.parent.exists()  # the temp directory made for it goes too
    remove_upstream_socket("http://127.0.0.1:8080")  # a TCP address: nothing to remove


def is_listening(url: str) -> bool:
    try:
        socket.create_connection(host_port(url), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.e2e
@pytest.mark.skipif(NGINX is None, reason="no nginx on PATH or in /usr/sbin (Debian: apt-get install nginx)")
def test_start_puts_nginx_in_front_and_stop_ends_both(tmp_path, model_store, monkeypatch):  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # TorchServe's pid file, this server's alone
    monkeypatch.setenv("TEMP", str(tmp_path))  # its worker sockets
    config = tmp_path / "config.properties"
    inference = shipped_config(config, model_store)["inference"]  # the shipped file on free ports
    try:
        assert start(config, 300, proxy="on", home=home) == 0
        upstream = read_properties(home / ".run" / "config.properties")["inference_address"]
        sock = Path(upstream.removeprefix("unix:"))
        # TorchServe moved behind nginx, to a socket in a directory only its owner may enter
        assert upstream.startswith("unix:") and sock.is_socket() and unix_answers(sock)
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        if os.geteuid() == 0 and SETPRIV is not None:  # root passes every permission check: ask as nobody
            assert not unix_answers(sock, as_user=65534)
        keys = read_keys(home / "key_file.json")
        predicted = requests.post(
            f"{inference}/predictions/peaknet", data=FRAMES.tobytes(), headers={**bearer(keys["inference"]), **RAW}
        )
        assert predicted.status_code == 200 and len(predicted.json()["frames"]) == 1
        # what TorchServe's frontend alone would answer, answered by the proxy in JSON
        refused = requests.post(f"{inference}/predictions/peaknet", data=FRAMES.tobytes(), headers=RAW)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "unauthorized"
        empty = {**bearer(keys["inference"]), "Content-Type": "multipart/form-data; boundary="}
        bad = requests.post(f"{inference}/predictions/peaknet", data=b"--\r\n", headers=empty)
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "bad_multipart"
        pid = int((home / ".run" / "proxy" / "nginx.pid").read_text())
    finally:
        assert stop(home) == 0
    with pytest.raises(OSError):
        os.kill(pid, 0)
    assert not sock.exists()  # stop removes the socket file
    deadline = time.monotonic() + 30  # `torchserve --stop` may return while the JVM still closes its sockets
    while is_listening(inference):
        assert time.monotonic() < deadline, "a port is still open after stop"
        time.sleep(0.1)
