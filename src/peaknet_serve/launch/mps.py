"""NVIDIA MPS for the workers of one host: their kernels share the GPU instead of taking turns.

Every TorchServe worker is its own process with its own CUDA context, and a GPU runs one context at a
time: kernels of four workers are time-sliced, not overlapped. Under the Multi-Process Service the
workers' contexts are funnelled into one server process, so small kernels of different workers run
side by side. The control daemon is started before TorchServe (whose workers find it through
``CUDA_MPS_PIPE_DIRECTORY``) and told to quit after TorchServe has stopped.

    daemon = MpsDaemon.start(Path("logs/mps"))     # raises MpsUnavailable without the binary or a GPU
    env.update(daemon.env)                         # for TorchServe and so for its workers
    ...
    daemon.stop()

The daemon's state (pipe and log directories) lives under one directory, so several daemons (tests,
benchmarks, a server) never share a pipe. Nothing here changes the GPU's compute mode or other settings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"

__all__ = ["CONTROL", "MpsDaemon", "MpsUnavailable"]


class MpsUnavailable(RuntimeError):
    """The MPS control binary is missing or the daemon did not come up."""


@dataclass(frozen=True)
class MpsDaemon:
    """A running MPS control daemon whose pipe and log directories are under ``directory``."""

    directory: Path

    @property
    def env(self) -> dict[str, str]:
        """What CUDA clients (TorchServe's workers) need to find this daemon."""
        return {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.directory / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(self.directory / "log"),
        }

    @classmethod
    def start(cls, directory: Path, timeout: float = 10.0, control: str | None = None) -> MpsDaemon:
        """Start ``nvidia-cuda-mps-control -d`` with its state under ``directory``; wait until it listens.

        Raises:
            MpsUnavailable: no control binary on ``PATH`` (or at ``control``), or no control pipe
                within ``timeout`` seconds (the end of the daemon's log says why).
        """
        binary = shutil.which(control or CONTROL)
        if binary is None:
            raise MpsUnavailable(f"{control or CONTROL} not found (the MPS binaries come with the NVIDIA driver)")
        daemon = cls(Path(directory).resolve())
        for sub in ("pipe", "log"):
            (daemon.directory / sub).mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [binary, "-d"], env={**os.environ, **daemon.env}, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise MpsUnavailable(f"{binary} -d failed ({result.returncode}): {result.stderr.strip()}")
        deadline = time.monotonic() + timeout
        while not (daemon.directory / "pipe" / "control").exists():
            if time.monotonic() > deadline:
                raise MpsUnavailable(f"MPS control pipe did not appear in {timeout:.0f} s: {daemon.log_tail()}")
            time.sleep(0.1)
        return daemon

    def stop(self, timeout: float = 30.0, control: str | None = None) -> bool:
        """Tell the daemon to quit (it ends its MPS server once the clients are gone).

        Returns:
            whether the daemon took the command (False: it was not running).
        """
        binary = shutil.which(control or CONTROL)
        if binary is None:
            return False
        result = subprocess.run(
            [binary],
            input="quit\n",
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return result.returncode == 0

    def log_tail(self, lines: int = 10) -> str:
        """The end of the control daemon's log, for error messages."""
        path = self.directory / "log" / "control.log"
        if not path.exists():
            return "(no control.log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
