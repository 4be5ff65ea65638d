"""nginx in front of the TorchServe that ``peaknet-serve start`` runs (``make serve``, ``make demo``).

With the proxy, TorchServe's inference API moves to a unix socket that only its owner may open
(:func:`upstream_socket`: in the private run directory, mode 0700), so nothing on the host reaches
it but through nginx, and nginx answers on the address the config.properties gives
(``inference_address``), configured by
:mod:`peaknet_serve.launch.proxy` from TorchServe's running configuration: the same checks and
JSON answers as in the Docker image (docs/security.md). nginx runs as a daemon with everything
under its prefix ``.run/proxy/`` (configuration, pid file, logs, body temp files, the re-entry
socket); ``peaknet-serve stop`` ends it before TorchServe.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from peaknet_serve.launch.proxy import TEMPLATE, host_port, render, settings_from_properties, upstream_of

PROXY_MODES = ("auto", "on", "off")
# the longest path a unix socket may have on Linux (sun_path is 108 bytes with its NUL)
MAX_SOCKET_PATH = 107
SOCKET_NAME = "inference.sock"
FALLBACK_PREFIX = "peaknet-serve-"


def find_nginx() -> str | None:
    """The nginx binary on PATH, else in /usr/sbin or /usr/local/sbin (Debian's place), else None."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def proxy_wanted(mode: str, nginx: str | None) -> bool:
    """Whether ``start`` puts nginx in front: ``on`` always (an error without nginx), ``off`` never,
    ``auto`` where nginx is installed."""
    if mode not in PROXY_MODES:
        raise ValueError(f"proxy must be one of {PROXY_MODES}, got {mode!r}")
    if mode == "on" and nginx is None:
        raise RuntimeError("--proxy on: nginx not found (Debian: apt-get install nginx), or --proxy off")
    return mode == "on" or (mode == "auto" and nginx is not None)


def upstream_socket(run_dir: Path) -> Path:
    """Where TorchServe's inference API listens behind the proxy: ``run_dir/inference.sock``
    (``run_dir`` made mode 0700), or, where that path is too long for a unix socket, the same name
    in a new private directory under the system temp dir (``peaknet-serve-*``, mode 0700)."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    path = run_dir.resolve() / SOCKET_NAME
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        path = Path(tempfile.mkdtemp(prefix=FALLBACK_PREFIX)) / SOCKET_NAME
    path.unlink(missing_ok=True)  # left by a TorchServe that did not stop
    return path


def remove_upstream_socket(inference_address: str) -> None:
    """After TorchServe stopped: remove the socket file of a ``unix:`` ``inference_address``, and
    its directory where :func:`upstream_socket` made one under the temp dir; nothing otherwise."""
    if not inference_address.startswith("unix:"):
        return
    path = Path(inference_address.removeprefix("unix:"))
    path.unlink(missing_ok=True)
    if path.parent.name.startswith(FALLBACK_PREFIX) and path.parent.parent == Path(tempfile.gettempdir()):
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def listen_of(inference_address: str) -> str:
    """``http://127.0.0.1:8080`` -> ``127.0.0.1:8080``: where nginx listens instead of TorchServe."""
    host, port = host_port(inference_address)
    return f"{host}:{port}"


@dataclass(frozen=True)
class LocalProxy:
    """An nginx daemon under ``prefix``, started by :meth:`start` and ended by :meth:`stop`."""

    prefix: Path
    nginx: str

    @property
    def conf(self) -> Path:
        return self.prefix / "peaknet.conf"

    @property
    def pid_file(self) -> Path:
        return self.prefix / "nginx.pid"

    def _command(self, *extra: str) -> list[str]:
        # as root nginx's workers would switch to "nobody", who cannot write the private prefix
        user = ["-g", "user root;"] if os.geteuid() == 0 else []
        # -e stderr: not the compiled-in error log (/var/log/nginx/...), which a user may not write
        return [self.nginx, "-p", str(self.prefix), "-c", str(self.conf), "-e", "stderr", *user, *extra]

    @classmethod
    def start(
        cls, prefix: Path, nginx: str, torchserve: dict[str, str], listen: str, timeout_s: float = 30
    ) -> LocalProxy:
        """Configure nginx for the TorchServe running ``torchserve`` (its config.properties as a dict),
        listening on ``listen`` (``HOST:PORT``), check the configuration (``nginx -t``) and start it.

        Raises:
            RuntimeError: nginx refused the configuration, or did not listen within ``timeout_s``.
        """
        proxy = cls(prefix, nginx)
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        settings = settings_from_properties(torchserve, listen, reentry_socket=str(prefix / "reentry.sock"))
        proxy.conf.write_text(render(settings, TEMPLATE.read_text()))
        for extra in (("-t", "-q"), ()):
            done = subprocess.run(proxy._command(*extra), capture_output=True, text=True, timeout=timeout_s)
            if done.returncode != 0:
                raise RuntimeError(f"nginx {' '.join(extra) or 'start'} failed:\n{done.stderr.strip()}")
        host, port = upstream_of(f"http://{listen}").rsplit(":", 1)  # where nginx is reached from here
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return proxy
            except OSError:
                if time.monotonic() > deadline:
                    proxy.stop()
                    raise RuntimeError(f"nginx did not listen on {listen} within {timeout_s:.0f} s") from None
                time.sleep(0.05)

    def running(self) -> bool:
        """Whether the pid file names a live process."""
        try:
            os.kill(int(self.pid_file.read_text().strip()), 0)
        except (OSError, ValueError):
            return False
        return True

    def stop(self, timeout_s: float = 30) -> None:
        """Ask nginx to quit (``-s quit``: answers in flight are finished) and wait for it to end;
        nothing when it is not running."""
        if not self.running():
            return
        pid = int(self.pid_file.read_text().strip())
        subprocess.run(self._command("-s", "quit"), capture_output=True, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.05)
        os.kill(pid, 9)
