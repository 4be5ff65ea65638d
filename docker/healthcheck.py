#!/usr/bin/env python3
"""Container health checks: readiness (default) and liveness (``--live``); exit 0 when they pass.

* **readiness**: the model has at least one worker in state READY, read from the management API
  (``GET /models/<model>`` on the local management port). TorchServe's ``/ping`` cannot say this:
  it stays Healthy while a worker restarts and when the workers are scaled to zero.
* **liveness** (``--live``): ``GET /ping`` answers 200, i.e. TorchServe runs and has not given up
  restarting a failed worker (it turns Unhealthy, 500, after its retry window). In the image it is
  asked on the inference port, i.e. through the reverse proxy when that is on.

With token authorisation on, the keys are read from ``key_file.json`` in ``PEAKNET_HOME``
(TorchServe writes it there at start): the management key for readiness, the inference key for
liveness. Those expire (``token_expiration_min``); when TorchServe refuses an expired one, the check
asks for a new one with the file's API key (which does not expire; TorchServe rewrites the file)
and tries once more. Environment: ``PEAKNET_HOME``, ``PEAKNET_INFERENCE_PORT`` (8080),
``PEAKNET_MANAGEMENT_PORT`` (8081), ``PEAKNET_MODEL_NAME`` (peaknet).
Standard library only, so it runs in any image with Python.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def keyed_request(url: str, home: Path, kind: str) -> urllib.request.Request:
    """A GET of ``url`` with the ``kind`` key ("inference" or "management") when a key file exists."""
    request = urllib.request.Request(url)
    key_file = home / "key_file.json"
    if key_file.is_file():
        key = json.loads(key_file.read_text())[kind]["key"]
        request.add_header("Authorization", f"Bearer {key}")
    return request


def ping_request(home: Path, port: int) -> urllib.request.Request:
    """The liveness request: ``/ping`` with the inference key."""
    return keyed_request(f"http://127.0.0.1:{port}/ping", home, "inference")


def describe_request(home: Path, port: int, model: str) -> urllib.request.Request:
    """The readiness request: the model's description with the management key."""
    return keyed_request(f"http://127.0.0.1:{port}/models/{model}", home, "management")


def fetch(request: urllib.request.Request) -> tuple[int, bytes]:
    """(status, body) of ``request``; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def refused_key(status: int, body: bytes) -> bool:
    """TorchServe 0.12 refuses a missing, wrong or expired key with 400 InvalidKeyException; the
    reverse proxy in front of it (``PEAKNET_PROXY``, the image's default) with 401 unauthorized."""
    return (status == 400 and b"InvalidKeyException" in body) or (status == 401 and b'"unauthorized"' in body)


def renew_key(home: Path, management_port: int, kind: str) -> bool:
    """Have TorchServe replace the ``kind`` key (``/token`` with the API key); True when it did."""
    key_file = home / "key_file.json"
    if not key_file.is_file():
        return False
    api_key = (json.loads(key_file.read_text()).get("API") or {}).get("key")
    if not api_key:
        return False
    request = urllib.request.Request(f"http://127.0.0.1:{management_port}/token?type={kind}")
    request.add_header("Authorization", f"Bearer {api_key}")
    return fetch(request)[0] == 200


def ready_workers(description: object) -> int:
    """Number of READY workers in a ``GET /models/<model>`` answer (a list with one entry per version)."""
    if not isinstance(description, list):
        return 0
    return sum(
        1
        for version in description
        if isinstance(version, dict)
        for worker in version.get("workers") or ()
        if isinstance(worker, dict) and worker.get("status") == "READY"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true", help="liveness (/ping) instead of readiness")
    args = parser.parse_args(argv)
    home = Path(os.environ.get("PEAKNET_HOME", os.getcwd()))
    inference_port = int(os.environ.get("PEAKNET_INFERENCE_PORT", "8080"))
    management_port = int(os.environ.get("PEAKNET_MANAGEMENT_PORT", "8081"))
    model = os.environ.get("PEAKNET_MODEL_NAME", "peaknet")

    def request() -> urllib.request.Request:  # the key file is read anew each time
        return ping_request(home, inference_port) if args.live else describe_request(home, management_port, model)

    try:
        status, body = fetch(request())
        if refused_key(status, body) and renew_key(home, management_port, "inference" if args.live else "management"):
            status, body = fetch(request())
        if status != 200:
            print(f"unhealthy: {request().full_url} answered {status}", file=sys.stderr)
            return 1
        if args.live:
            return 0
        ready = ready_workers(json.loads(body))
    except (OSError, ValueError, KeyError, urllib.error.URLError) as err:
        print(f"unhealthy: {err}", file=sys.stderr)
        return 1
    if ready == 0:
        print("not ready: no worker of the model is READY", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
