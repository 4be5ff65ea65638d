#!/usr/bin/env python3
"""Container health check: exit 0 when the server can answer predictions, 1 otherwise.

Healthy means both: ``GET /ping`` on the local inference port answers 200, and the management
API (loopback only, inside the container) lists a READY worker for the model. TorchServe's
``/ping`` alone says Healthy while the worker is still loading and warming up the model, when
predictions would still get 503.

With token authorisation on, TorchServe checks keys on both APIs; they are read from
``key_file.json`` in ``PEAKNET_HOME`` (TorchServe writes it there at start). Standard library only,
so it runs in any image with Python. Environment: ``PEAKNET_HOME``, ``PEAKNET_INFERENCE_PORT``
(8080), ``PEAKNET_MANAGEMENT_PORT`` (8081), ``PEAKNET_HEALTH_MODEL`` (peaknet).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def read_keys(home: Path) -> dict[str, str]:
    """``{"inference": key, "management": key}`` from ``key_file.json``; empty without the file."""
    key_file = home / "key_file.json"
    if not key_file.is_file():
        return {}
    document = json.loads(key_file.read_text())
    return {api: document[api]["key"] for api in ("inference", "management") if api in document}


def get(url: str, key: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def unhealthy_reason(home: Path, inference_port: int, management_port: int, model: str) -> str | None:
    """Why the server cannot serve yet, or ``None`` when it can."""
    keys = read_keys(home)
    status, _ = get(f"http://127.0.0.1:{inference_port}/ping", keys.get("inference"))
    if status != 200:
        return f"/ping answered {status}"
    status, body = get(f"http://127.0.0.1:{management_port}/models/{model}", keys.get("management"))
    if status != 200:
        return f"/models/{model} answered {status}"
    workers = [w for entry in json.loads(body) for w in entry.get("workers", [])]
    if not any(w.get("status") == "READY" for w in workers):
        states = ", ".join(str(w.get("status")) for w in workers) or "none"
        return f"no READY worker for {model} (workers: {states})"
    return None


def main() -> int:
    home = Path(os.environ.get("PEAKNET_HOME", os.getcwd()))
    inference_port = int(os.environ.get("PEAKNET_INFERENCE_PORT", "8080"))
    management_port = int(os.environ.get("PEAKNET_MANAGEMENT_PORT", "8081"))
    model = os.environ.get("PEAKNET_HEALTH_MODEL", "peaknet")
    try:
        reason = unhealthy_reason(home, inference_port, management_port, model)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        reason = f"{type(err).__name__}: {err}"
    if reason is not None:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
