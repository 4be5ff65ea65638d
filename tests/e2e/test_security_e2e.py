"""The management API refuses unauthenticated registration, scaling and loading, in both shipped
configurations, against a real TorchServe; and what the frontend and the handler answer to hostile
or conflicting requests (docs/security.md quotes these tests).

* **local**: the shipped ``config.properties`` as ``peaknet-serve start`` runs it
  (:func:`~peaknet_serve.launch.server.effective_config`), only ports and the model store replaced;
* **docker**: ``docker/entrypoint.sh`` run outside a container (its generated config.properties and
  configured archive), bound to loopback on free ports; with nginx in front of the inference API as
  in the image (``PEAKNET_PROXY`` on), where nginx is installed, else TorchServe alone.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

from peaknet_serve.launch.java import find_java_home
from peaknet_serve.launch.server import (
    allowed_urls_pattern,
    bearer,
    effective_config,
    free_ports,
    properties_text,
    read_keys,
    read_properties,
    wait_ready,
)
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
TIMEOUT = 120
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
FRAMES = np.random.default_rng(17).integers(0, 60, (1, 2, 64, 96), dtype=np.uint16)
RAW = {"Content-Type": "application/octet-stream", "X-Dtype": "uint16", "X-Shape": "1,2,64,96"}


URL_NAMES = ("inference", "management", "metrics")


def shipped_config(path: Path, store: Path) -> dict[str, str]:
    """The shipped config.properties as `peaknet-serve start` runs it, on free ports and the test store."""
    running = effective_config(ROOT / "config.properties", path.parent / "run")
    ports = free_ports(7)
    urls = {name: f"http://127.0.0.1:{port}" for name, port in zip(URL_NAMES, ports[:3], strict=True)}
    grpc_inference, grpc_management, worker, distribution = map(str, ports[3:])
    overrides = {
        "inference_address": urls["inference"],
        "management_address": urls["management"],
        "metrics_address": urls["metrics"],
        "grpc_inference_port": grpc_inference,
        "grpc_management_port": grpc_management,
        "initial_worker_port": worker,
        "initial_distribution_port": distribution,
        "model_store": str(store),
        "allowed_urls": allowed_urls_pattern(store),
    }
    path.write_text(f"{running.read_text()}{properties_text(overrides)}")
    return urls


@pytest.fixture(scope="module")
def local(start_server) -> Server:
    return start_server(token_auth=True, config_writer=shipped_config)


@pytest.fixture(scope="module")
def docker(tmp_path_factory, model_store):
    """The Docker entrypoint's TorchServe (outside a container), tokens on as shipped, with the proxy in
    front as in the image where nginx is installed. Every port is a free one and TorchServe's pid file
    and worker sockets are in its own directory (TMPDIR, TEMP); stopping its process group stops both."""
    home = tmp_path_factory.mktemp("entrypoint")
    java_home = find_java_home()
    names = ("INFERENCE", "MANAGEMENT", "METRICS", "GRPC_INFERENCE", "GRPC_MANAGEMENT")
    ports = {name: str(port) for name, port in zip(names, free_ports(len(names)), strict=True)}
    env = {
        "PATH": f"{Path(sys.executable).parent}:{Path(java_home) / 'bin'}:{os.environ['PATH']}:/usr/sbin",
        "JAVA_HOME": java_home,
        "HOME": str(home),
        "TMPDIR": str(home),
        "TEMP": str(home),
        "PEAKNET_PROXY": "on" if NGINX else "off",
        "PEAKNET_HOME": str(home),
        "PEAKNET_MODEL_ARCHIVE": str(model_store / "peaknet.mar"),
        "PEAKNET_PYTHON": sys.executable,
        "PEAKNET_GPUS": "0",
        "PEAKNET_BIND_ADDRESS": "127.0.0.1",
        "PEAKNET_PRECISION": "float32",
        **{f"PEAKNET_{name}_PORT": port for name, port in ports.items()},
    }
    log = open(home / "entrypoint.out", "wb")
    process = subprocess.Popen(
        ["bash", str(ENTRYPOINT)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(
        f"http://127.0.0.1:{ports['INFERENCE']}",
        f"http://127.0.0.1:{ports['MANAGEMENT']}",
        f"http://127.0.0.1:{ports['METRICS']}",
        home / "logs",
        process,
        workdir=home,
    )
    try:
        wait_ready(
            server.inference_url,
            server.management_url,
            "peaknet",
            300,
            alive=lambda: process.poll() is None,
            key_file=home / "key_file.json",
        )
    except (TimeoutError, RuntimeError) as exc:
        server.stop()
        pytest.fail(f"{exc}\n{(home / 'entrypoint.out').read_text(errors='replace')[-3000:]}")
    keys = read_keys(home / "key_file.json")
    server.headers, server.management_headers = bearer(keys["inference"]), bearer(keys["management"])
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["local", "docker"])
def config(request) -> Server:
    return request.getfixturevalue(request.param)


def refused_for_want_of_a_key(answer: requests.Response) -> bool:
    """TorchServe 0.12 refuses a missing or wrong key with 400 InvalidKeyException (its own JSON body)."""
    return answer.status_code == 400 and answer.json().get("type") == "InvalidKeyException"


def proxied(server: Server) -> bool:
    """The inference API is nginx's (the Docker entrypoint with PEAKNET_PROXY on)."""
    return (Path(server.workdir) / "proxy" / "peaknet.conf").exists()


def refused_by_the_proxy(answer: requests.Response) -> bool:
    """The proxy refuses a missing or wrong inference key with its JSON 401 before forwarding."""
    return (
        answer.status_code == 401
        and answer.headers.get("WWW-Authenticate") == "Bearer"
        and answer.json() == {"error": {**answer.json()["error"], "type": "unauthorized", "status": 401}}
    )


def ready_workers(server: Server) -> list[dict]:
    described = requests.get(f"{server.management_url}/models/peaknet", headers=server.management_headers, timeout=10)
    assert described.status_code == 200, described.text
    return [w for w in described.json()[0]["workers"] if w["status"] == "READY"]


def predict_ok(server: Server) -> dict:
    answer = requests.post(
        server.predict_url, data=FRAMES.tobytes(), headers={**server.headers, **RAW}, timeout=TIMEOUT
    )
    assert answer.status_code == 200, answer.text[:300]
    return answer.json()


# -- the management API ---------------------------------------------------------------------------


def store_of(server: Server) -> Path:
    return Path(read_properties(Path(server.workdir) / "config.properties")["model_store"])


def test_workflow_registration_is_refused(config, tmp_path):
    """POST /workflows (a workflow archive's Python runs in a worker), also from other folders named model_store."""
    elsewhere = tmp_path / "model_store"
    elsewhere.mkdir()
    for name in ("x.war", "x.mar"):
        (elsewhere / name).write_bytes(b"PK\x05\x06" + bytes(18))
    for url in [f"file://{elsewhere}/x.war", f"file://{elsewhere}/x.mar", f"file://{store_of(config)}/x.war"]:
        answer = requests.post(f"{config.management_url}/workflows", params={"url": url}, timeout=TIMEOUT)
        assert refused_for_want_of_a_key(answer), answer.text
        # with the management key, allowed_urls still admits no workflow archive and no other folder
        keyed = requests.post(
            f"{config.management_url}/workflows",
            params={"url": url},
            headers=config.management_headers,
            timeout=TIMEOUT,
        )
        assert keyed.status_code in (400, 404) and "does not match any allowed URL" in keyed.text, keyed.text
    listed = requests.get(f"{config.management_url}/workflows", headers=config.management_headers, timeout=10)
    assert listed.status_code == 200 and listed.json()["workflows"] == []


def test_model_registration_and_unregistration_are_refused(config):
    url = f"file://{store_of(config)}/peaknet.mar"
    for method, path, params in [
        ("POST", "/models", {"url": url, "model_name": "second"}),
        ("POST", "/models", {"url": "peaknet.mar", "model_name": "second"}),
        ("DELETE", "/models/peaknet", {}),
        ("DELETE", "/models/peaknet/1.0", {}),
    ]:
        answer = requests.request(method, f"{config.management_url}{path}", params=params, timeout=TIMEOUT)
        assert refused_for_want_of_a_key(answer), (method, path, answer.text)
        keyed = requests.request(
            method, f"{config.management_url}{path}", params=params, headers=config.management_headers, timeout=TIMEOUT
        )
        assert keyed.status_code == 405, keyed.text  # enable_model_api=false, even with the key
    listed = requests.get(f"{config.management_url}/models", headers=config.management_headers, timeout=10).json()
    assert [m["modelName"] for m in listed["models"]] == ["peaknet"]


def test_scaling_is_refused_and_the_worker_stays(config):
    for params in (
        {"min_worker": "0"},
        {"min_worker": "0", "max_worker": "0", "synchronous": "true"},
        {"min_worker": "4"},
    ):
        for path in ("/models/peaknet", "/models/peaknet/1.0"):
            answer = requests.put(f"{config.management_url}{path}", params=params, timeout=TIMEOUT)
            assert refused_for_want_of_a_key(answer), answer.text
        wrong = requests.put(
            f"{config.management_url}/models/peaknet", params=params, headers=config.headers, timeout=TIMEOUT
        )  # the inference key is not enough
        assert refused_for_want_of_a_key(wrong), wrong.text
    assert len(ready_workers(config)) == 1
    predict_ok(config)


def test_keys_are_needed_everywhere_but_metrics(config):
    """TorchServe refuses with its 400; through the proxy (docker) the inference routes are the proxy's 401."""
    inference = refused_by_the_proxy if proxied(config) else refused_for_want_of_a_key
    for url, refused in (
        (f"{config.inference_url}/ping", inference),
        (config.predict_url, inference),
        (f"{config.management_url}/models", refused_for_want_of_a_key),
        (f"{config.management_url}/token?type=management", refused_for_want_of_a_key),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            answer = requests.request(
                "GET" if "predictions" not in url else "POST", url, headers=headers, timeout=TIMEOUT
            )
            assert refused(answer), (url, headers, answer.status_code, answer.text)
    if proxied(config):  # behind the proxy TorchServe's inference API is a socket in a private directory
        upstream = read_properties(Path(config.workdir) / "config.properties")["inference_address"]
        sock = Path(upstream.removeprefix("unix:"))
        assert upstream.startswith("unix:") and sock.is_socket()
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert requests.get(f"{config.inference_url}/ping", headers=config.headers, timeout=10).status_code == 200
    assert urlsplit(config.metrics_url).hostname == "127.0.0.1"  # token-less, loopback only
    assert requests.get(f"{config.metrics_url}/metrics", timeout=10).status_code == 200
    key_file = Path(config.workdir) / "key_file.json"
    assert key_file.stat().st_mode & 0o077 == 0  # the owner's alone
    assert predict_ok(config)["frames"][0]["num_peaks"] >= 0


# -- hostile and conflicting requests (local config) --------------------------------------------------


def post(server: Server, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(server.predict_url, data=body, headers={**server.headers, **headers}, timeout=TIMEOUT)


def error_type(answer: requests.Response) -> str:
    assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
    return answer.json()["error"]["type"]


def test_accept_negotiation(local):
    for accept, status, kind in [
        ("image/png", 406, "json"),
        ("application/x-hdf5;q=0", 406, "json"),
        ("application/x-hdf5;q=0, application/json", 200, "json"),
        ("application/x-hdf5;q=0, */*", 200, "json"),
        ("application/x-hdf5", 200, "cxi"),
        ("*/*", 200, "json"),
    ]:
        answer = post(local, FRAMES.tobytes(), {**RAW, "Accept": accept})
        assert answer.status_code == status, (accept, answer.text[:200])
        if status == 406:
            assert error_type(answer) == "not_acceptable"
        elif kind == "cxi":
            assert answer.headers["Content-Type"].startswith("application/x-hdf5") and answer.content[:4] == b"\x89HDF"
        else:
            assert answer.headers["Content-Type"].startswith("application/json") and "frames" in answer.json()


def multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "peaknetboundary") -> tuple[bytes, str]:
    chunks = []
    for name, value, content_type in parts:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
        head += f'; filename="{name}.bin"\r\nContent-Type: {content_type}' if content_type else ""
        chunks.append(head.encode() + b"\r\n\r\n" + value + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_conflicting_inputs_are_bad_options(local):
    frames = FRAMES.tobytes()
    good = [("data", frames, "application/octet-stream"), ("dtype", b"uint16", None), ("shape", b"1,2,64,96", None)]
    body, content_type = multipart(good)
    assert post(local, body, {"Content-Type": content_type}).status_code == 200
    cases = {
        "two data parts": multipart([good[0], ("data", frames[:-2], "application/octet-stream"), *good[1:]]),
        "two dtype fields": multipart([*good, ("dtype", b"float32", None)]),
        "form shape vs X-Shape": multipart(good),
    }
    for name, (body, content_type) in cases.items():
        headers = {"Content-Type": content_type, **({"X-Shape": "2,1,64,96"} if "X-Shape" in name else {})}
        answer = post(local, body, headers)
        assert answer.status_code == 400 and error_type(answer) == "bad_option", (name, answer.text)
    # two spellings of X-Dtype (two headers for TorchServe's frontend) with different values
    answer = raw_post(local, [("X-Dtype", "uint16"), ("x-dtype", "float32"), ("X-Shape", "1,2,64,96")], frames)
    assert answer[0] == 400 and json.loads(answer[1])["error"]["type"] == "bad_option"
    # the routes that pass query parameters on as fields (/predictions does not): a contradicting one is refused
    for route in ("/models/peaknet/invoke", "/peaknet/predict", "/invocations"):
        params = {"dtype": "float32", **({"model_name": "peaknet"} if route == "/invocations" else {})}
        answer = requests.post(
            f"{local.inference_url}{route}",
            params=params,
            data=frames,
            headers={**local.headers, **RAW},
            timeout=TIMEOUT,
        )
        assert answer.status_code == 400 and error_type(answer) == "bad_option", (route, answer.text)


def test_identically_spelled_repeated_headers_reach_the_handler_as_one(local):
    """TorchServe's frontend keeps the last of two identically spelled headers (a map by name): the
    handler sees X-Dtype: float32 only and refuses the body for its size, never serves it as uint16."""
    status, body = raw_post(
        local, [("X-Dtype", "uint16"), ("X-Dtype", "float32"), ("X-Shape", "1,2,64,96")], FRAMES.tobytes()
    )
    assert status == 400 and json.loads(body)["error"]["type"] == "size_mismatch"


def raw_post(server: Server, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
    """POST with headers exactly as given (repeats and spellings kept), over http.client."""
    url = urlsplit(server.predict_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)
    try:
        connection.putrequest("POST", url.path)
        for name, value in [
            *server.headers.items(),
            ("Content-Type", "application/octet-stream"),
            *headers,
            ("Content-Length", str(len(body))),
        ]:
            connection.putheader(name, value)
        connection.endheaders(body)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_multipart_without_a_data_part_is_a_json_400(local):
    body, content_type = multipart([("dtype", b"uint16", None), ("shape", b"1,2,64,96", None)])
    answer = post(local, body, {"Content-Type": content_type})
    assert answer.status_code == 400 and error_type(answer) == "empty_body"


def test_empty_multipart_boundary_is_refused_by_the_frontend(local):
    """TorchServe's frontend fails to parse it before the handler runs: its own 500 JSON body
    (StringIndexOutOfBoundsException). The worker is not involved and goes on serving."""
    answer = post(
        local,
        b'--\r\nContent-Disposition: form-data; name="data"\r\n\r\nx\r\n----\r\n',
        {"Content-Type": "multipart/form-data; boundary="},
    )
    assert answer.status_code == 500 and answer.json()["type"] == "StringIndexOutOfBoundsException"
    assert len(ready_workers(local)) == 1
    predict_ok(local)


def test_bodies_over_max_request_size_get_an_empty_413(local):
    """The frontend (Netty's aggregator) refuses a body over max_request_size with an empty 413 and
    closes the connection, without buffering it; the server goes on serving."""
    limit = 268435456  # config.properties
    url = urlsplit(local.predict_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)
    connection.putrequest("POST", url.path)
    for name, value in [*local.headers.items(), *RAW.items(), ("Content-Length", str(limit + 1))]:
        connection.putheader(name, value)
    connection.endheaders()
    started = time.monotonic()
    try:
        connection.send(b"\0" * (1 << 20))  # 1 MiB of the announced 256 MiB + 1 byte
    except OSError:
        pass
    answer = connection.getresponse()
    assert answer.status == 413 and answer.read() == b""
    assert time.monotonic() - started < 30
    connection.close()
    predict_ok(local)


# -- the gRPC management API (always started by TorchServe, on loopback) -------------------------------

MANAGEMENT_SERVICE = "/org.pytorch.serve.grpc.management.ManagementAPIsService"


def protobuf_message(*fields: tuple[int, str | int | bool]) -> bytes:
    """A protobuf message of string and varint fields (the few the management calls need)."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, str):
            data = value.encode()
            out += bytes([number << 3 | 2]) + varint(len(data)) + data
        else:
            out += bytes([number << 3]) + varint(int(value))
    return bytes(out)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_grpc_scaling_and_registration_are_refused(config):
    grpc = pytest.importorskip("grpc")
    port = read_properties(Path(config.workdir) / "config.properties")["grpc_management_port"]
    calls = {
        "ScaleWorker": protobuf_message((1, "peaknet"), (3, 0), (4, 0), (6, True)),  # min/max_worker 0
        "RegisterModel": protobuf_message((5, "second"), (9, f"file://{store_of(config)}/peaknet.mar")),
        "UnregisterModel": protobuf_message((1, "peaknet")),
    }
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for method, request in calls.items():
            call = channel.unary_unary(
                f"{MANAGEMENT_SERVICE}/{method}", request_serializer=None, response_deserializer=None
            )
            for metadata in ((), tuple((k.lower(), v) for k, v in config.headers.items())):  # none; inference key
                with pytest.raises(grpc.RpcError) as info:
                    call(request, metadata=metadata, timeout=60)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, (method, info.value)
        # the same channel and encoding work with the management key (a harmless call: scale 1 -> 1)
        management = tuple((k.lower(), v) for k, v in config.management_headers.items())
        scale = channel.unary_unary(
            f"{MANAGEMENT_SERVICE}/ScaleWorker", request_serializer=None, response_deserializer=None
        )
        assert b"Workers scaled to 1" in scale(
            protobuf_message((1, "peaknet"), (3, 1), (4, 1), (6, True)), metadata=management, timeout=120
        )
    assert len(ready_workers(config)) == 1
    listed = requests.get(f"{config.management_url}/models", headers=config.management_headers, timeout=10).json()
    assert [m["modelName"] for m in listed["models"]] == ["peaknet"]


def test_a_stalled_upload_is_not_timed_out_by_the_frontend(local):
    """TorchServe 0.12 has no read timeout: a client that stops mid-body keeps its connection (and the
    frontend the bytes so far). Not protected here; docs/security.md says what to put in front."""
    url = urlsplit(local.predict_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT)
    connection.putrequest("POST", url.path)
    for name, value in [*local.headers.items(), *RAW.items(), ("Content-Length", str(8 << 20))]:
        connection.putheader(name, value)
    connection.endheaders()
    connection.send(b"\0" * (1 << 20))  # 1 MiB of 8 MiB, then nothing
    time.sleep(10)
    connection.sock.settimeout(1)
    with pytest.raises(TimeoutError):  # no answer and no close after 10 s
        connection.sock.recv(1)
    connection.close()
    predict_ok(local)
