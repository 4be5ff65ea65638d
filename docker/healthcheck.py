#!/usr/bin/env python3
"""Container health check: exit 0 when ``GET /ping`` on the local inference port answers 200.

With token authorisation on, TorchServe checks the inference key on ``/ping`` too; the key is
read from ``key_file.json`` in ``PEAKNET_HOME`` (TorchServe writes it there at start).
Standard library only, so it runs in any image with Python.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def ping_request(home: Path, port: int) -> urllib.request.Request:
    """The ``/ping`` request, with the inference key when a key file exists."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/ping")
    key_file = home / "key_file.json"
    if key_file.is_file():
        key = json.loads(key_file.read_text())["inference"]["key"]
        request.add_header("Authorization", f"Bearer {key}")
    return request


def main() -> int:
    home = Path(os.environ.get("PEAKNET_HOME", os.getcwd()))
    port = int(os.environ.get("PEAKNET_INFERENCE_PORT", "8080"))
    try:
        with urllib.request.urlopen(ping_request(home, port), timeout=5) as answer:
            healthy = answer.status == 200
    except (OSError, ValueError, KeyError, urllib.error.URLError) as err:
        print(f"unhealthy: {err}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
