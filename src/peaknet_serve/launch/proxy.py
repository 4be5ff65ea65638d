#!/usr/bin/env python3
"""Write the nginx configuration that fronts peaknet-serve's inference API.

    peaknet-proxy-config [--config config.properties] [--listen 0.0.0.0:8000] [--output peaknet.conf]

The template is ``deploy/nginx/peaknet.conf.in``. Its upstream, body limit and read timeout come
from the TorchServe config.properties it fronts (``inference_address``, ``max_request_size``,
``default_response_timeout``), so the proxy refuses exactly what TorchServe would and waits a
little longer than a batch may run; every other value has a default and an option. The error
bodies are those of :func:`peaknet_serve.errors.proxy_errors`, in the handler's JSON shape.
What the proxy adds, and how it is tested: docs/security.md; how to run it: docs/deployment.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from peaknet_serve.errors import RequestError, ServerFault, proxy_errors
from peaknet_serve.launch.properties import read_properties
from peaknet_serve.resources import REPO_ROOT, SERVER_CONFIG

TEMPLATE = REPO_ROOT / "deploy" / "nginx" / "peaknet.conf.in"
SHIPPED = REPO_ROOT / "deploy" / "nginx" / "peaknet.conf"
# TorchServe 0.12's defaults where config.properties leaves a value out
TORCHSERVE_INFERENCE_ADDRESS = "http://127.0.0.1:8080"
TORCHSERVE_MAX_REQUEST_SIZE = 6553500
TORCHSERVE_RESPONSE_TIMEOUT_S = 120
# seconds the proxy waits for an answer beyond TorchServe's responseTimeout
READ_TIMEOUT_MARGIN_S = 30
# longest wait for TorchServe's /ping in the key check (never longer than the read timeout)
KEY_CHECK_TIMEOUT_S = 10
# the statuses nginx itself produces, and the type of error each one is answered with
ERROR_PAGE_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    413: "too_large",
    429: "too_many_connections",
    502: "upstream_unavailable",
    504: "upstream_timeout",
}
# errors answered by a named location that the template's proxying location refers to, not by a
# server-wide error_page (503 from elsewhere is not a dead worker)
NAMED_TYPES = ("worker_died",)
PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


@dataclass(frozen=True)
class ProxySettings:
    """Everything the generated configuration depends on.

    Attributes:
        listen: nginx ``listen`` value (``ADDRESS:PORT`` or ``PORT``).
        upstream: TorchServe's inference API as ``HOST:PORT`` or ``unix:/PATH`` (a unix socket).
        max_body_bytes: TorchServe's ``max_request_size``; larger bodies get 413.
        read_timeout_s: seconds to wait for TorchServe's answer.
        body_timeout_s / header_timeout_s / send_timeout_s: nginx's client timeouts, in seconds.
        connections_per_client: requests in flight per client address; more get 429.
        body_buffer: ``client_body_buffer_size`` (body bytes kept in memory; the rest goes to disk).
        worker_processes: nginx ``worker_processes``.
        metrics: ``HOST:PORT`` of TorchServe's metrics API to serve as ``/metrics`` (behind the
            key check), or ``None`` to serve no metrics.
        access_log / error_log: where nginx logs, relative to its prefix, or ``/dev/stdout`` and
            ``stderr`` (the Docker entrypoint's choice: the container's log).
        reentry_socket: the unix socket nginx also listens on, where a chunked upload, read whole,
            is sent again with a Content-Length; a relative path resolves against nginx's working
            directory, so give an absolute one (one per nginx).
    """

    listen: str
    upstream: str
    max_body_bytes: int
    read_timeout_s: int
    body_timeout_s: int = 30
    header_timeout_s: int = 30
    send_timeout_s: int = 30
    connections_per_client: int = 16
    body_buffer: str = "1m"
    worker_processes: str = "auto"
    metrics: str | None = None
    access_log: str = "logs/access.log"
    error_log: str = "logs/error.log"
    reentry_socket: str = "peaknet-reentry.sock"


def host_port(inference_address: str) -> tuple[str, int]:
    """``http://0.0.0.0:8080`` -> ``("0.0.0.0", 8080)``: the address a server binds."""
    url = urlsplit(inference_address)
    if url.scheme != "http" or url.hostname is None or url.port is None:
        raise ValueError(f"inference_address {inference_address!r}: expected http://HOST:PORT")
    return url.hostname, url.port


def upstream_of(inference_address: str) -> str:
    """Where a proxy on the same host reaches TorchServe, as an nginx ``server``:
    ``http://0.0.0.0:8080`` -> ``127.0.0.1:8080``; ``unix:/run/ts/inference.sock`` (a unix socket,
    TorchServe's own syntax) -> ``unix:/run/ts/inference.sock``."""
    if inference_address.startswith("unix:"):
        path = inference_address.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError(f"inference_address {inference_address!r}: a unix socket needs an absolute path")
        return f"unix:{socket_path(path)}"
    host, port = host_port(inference_address)
    return f"{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"


def settings_from_properties(props: dict[str, str], listen: str, **overrides) -> ProxySettings:
    """Settings for the TorchServe that runs ``props`` (a config.properties as a dict)."""
    response_timeout = int(props.get("default_response_timeout", TORCHSERVE_RESPONSE_TIMEOUT_S))
    derived = {
        "upstream": upstream_of(props.get("inference_address", TORCHSERVE_INFERENCE_ADDRESS)),
        "max_body_bytes": int(props.get("max_request_size", TORCHSERVE_MAX_REQUEST_SIZE)),
        "read_timeout_s": response_timeout + READ_TIMEOUT_MARGIN_S,
    }
    derived.update({key: value for key, value in overrides.items() if value is not None})
    return ProxySettings(listen=listen, **derived)


def nginx_string(text: str) -> str:
    """``text`` for a single-quoted nginx string; refuses what nginx would interpret (``$``, quotes, ``\\``)."""
    if re.search(r"[$'\\\n]", text):
        raise ValueError(f"cannot put {text!r} into an nginx string literally")
    return text


def nginx_path(text: str) -> str:
    """``text`` as a bare nginx word (a log path); refuses blanks, quotes, ``;``, ``{``, ``}`` and ``$``."""
    if not text or re.search(r"[\s\"';{}$\\]", text):
        raise ValueError(f"cannot use {text!r} as an nginx path")
    return text


def socket_path(text: str) -> str:
    """``text`` as the path of a unix socket in ``listen unix:PATH`` and ``http://unix:PATH:``: an
    :func:`nginx_path` without ``:``."""
    if ":" in text:
        raise ValueError(f"cannot use {text!r} as a unix socket path (no ':')")
    return nginx_path(text)


def error_body(error: RequestError | ServerFault) -> str:
    """The JSON body of ``error`` exactly as the handler writes its own (``json.dumps`` of ``to_json``)."""
    return nginx_string(json.dumps(error.to_json()))


def error_location(error: RequestError | ServerFault, name: str) -> str:
    """An nginx location ``name`` that answers ``error``'s status with its JSON body."""
    header = "            add_header WWW-Authenticate 'Bearer' always;\n" if error.status == 401 else ""
    internal = "" if name.startswith("@") else "            internal;\n"
    return (
        f"        location {name} {{\n{internal}"
        f"            default_type application/json;\n{header}"
        f"            return {error.status} '{error_body(error)}';\n"
        f"        }}"
    )


def error_locations(errors: list[RequestError | ServerFault]) -> tuple[str, str]:
    """The ``error_page`` lines and the locations that answer them, one per error.

    The statuses in :data:`ERROR_PAGE_TYPES` are answered by named locations (``@peaknet_<type>``)
    through ``error_page``; the :data:`NAMED_TYPES` by named locations that the template names; every
    other error by an internal location ``/_peaknet/<type>`` that the configuration rewrites to.
    """
    pages, locations = [], []
    for error in errors:
        if ERROR_PAGE_TYPES.get(error.status) == error.type:
            pages.append(f"        error_page {error.status} @peaknet_{error.type};")
            locations.append(error_location(error, f"@peaknet_{error.type}"))
        elif error.type in NAMED_TYPES:
            locations.append(error_location(error, f"@peaknet_{error.type}"))
        else:
            locations.append(error_location(error, f"= /_peaknet/{error.type}"))
    missing = set(ERROR_PAGE_TYPES.values()) - {error.type for error in errors}
    if missing:
        raise ValueError(f"no error for the types {sorted(missing)}")
    return "\n".join(pages), "\n".join(locations)


def metrics_location(metrics: str | None) -> str:
    """``location = /metrics`` proxied to TorchServe's metrics API behind the key check, or nothing."""
    if metrics is None:
        return ""
    return (
        "\n        # TorchServe's metrics (no key of their own there) behind the inference key's check\n"
        "        location = /metrics {\n"
        "            auth_request /_peaknet/key;\n"
        f"            proxy_pass http://{metrics}/metrics;\n"
        "        }\n"
    )


def render(settings: ProxySettings, template: str) -> str:
    """The nginx configuration for ``settings`` from ``template`` (the text of peaknet.conf.in)."""
    errors = proxy_errors(settings.max_body_bytes, settings.connections_per_client, settings.read_timeout_s)
    pages, locations = error_locations(errors)
    values = {
        "LISTEN": settings.listen,
        "UPSTREAM": settings.upstream,
        "MAX_BODY_BYTES": str(settings.max_body_bytes),
        "READ_TIMEOUT": str(settings.read_timeout_s),
        "KEY_CHECK_TIMEOUT": str(min(KEY_CHECK_TIMEOUT_S, settings.read_timeout_s)),
        "BODY_TIMEOUT": str(settings.body_timeout_s),
        "HEADER_TIMEOUT": str(settings.header_timeout_s),
        "SEND_TIMEOUT": str(settings.send_timeout_s),
        "CONNECTIONS_PER_CLIENT": str(settings.connections_per_client),
        "BODY_BUFFER": settings.body_buffer,
        "WORKER_PROCESSES": settings.worker_processes,
        "ACCESS_LOG": nginx_path(settings.access_log),
        "ERROR_LOG": nginx_path(settings.error_log),
        "REENTRY_SOCKET": socket_path(settings.reentry_socket),
        "ERROR_PAGES": pages,
        "ERROR_LOCATIONS": locations,
        "METRICS_LOCATION": metrics_location(settings.metrics),
        "METRICS_NOTE": "" if settings.metrics is None else f" (but /metrics, from {settings.metrics})",
    }
    unknown = set(PLACEHOLDER.findall(template)) - set(values)
    if unknown:
        raise ValueError(f"template fields without a value: {sorted(unknown)}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=SERVER_CONFIG, help="TorchServe config.properties it fronts")
    parser.add_argument("--listen", default="0.0.0.0:8000", help="address:port nginx listens on (default %(default)s)")
    parser.add_argument(
        "--upstream", help="TorchServe inference API as HOST:PORT or unix:/PATH (default: from --config)"
    )
    parser.add_argument("--max-body-bytes", type=int, help="default: max_request_size from --config")
    parser.add_argument("--read-timeout", type=int, dest="read_timeout_s", help="default: responseTimeout + 30 s")
    parser.add_argument("--body-timeout", type=int, dest="body_timeout_s", help="default 30 s")
    parser.add_argument("--header-timeout", type=int, dest="header_timeout_s", help="default 30 s")
    parser.add_argument("--send-timeout", type=int, dest="send_timeout_s", help="default 30 s")
    parser.add_argument("--connections-per-client", type=int, help="requests in flight per address (default 16)")
    parser.add_argument("--body-buffer", help="body bytes held in memory per request (default 1m)")
    parser.add_argument("--worker-processes", help="nginx worker_processes (default auto)")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve TorchServe's metrics API as /metrics")
    parser.add_argument(
        "--access-log", help="access log: a path under nginx's prefix or /dev/stdout (default logs/access.log)"
    )
    parser.add_argument("--error-log", help="error log: a path under nginx's prefix or stderr (default logs/error.log)")
    parser.add_argument(
        "--reentry-socket",
        help="unix socket for chunked uploads sent again with a Content-Length: an absolute path, one per nginx "
        "(default peaknet-reentry.sock, in nginx's working directory)",
    )
    parser.add_argument("--output", type=Path, help="file to write (default: standard output)")
    args = vars(parser.parse_args(argv))
    config, listen, output = args.pop("config"), args.pop("listen"), args.pop("output")
    text = render(settings_from_properties(read_properties(config), listen, **args), TEMPLATE.read_text())
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
