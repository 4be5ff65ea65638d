"""MpsDaemon against the real NVIDIA MPS control daemon (GPU hosts with the driver's MPS binaries)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from peaknet_serve.launch.mps import CONTROL, MpsDaemon, MpsUnavailable

torch = pytest.importorskip("torch")
needs_mps = pytest.mark.skipif(
    shutil.which(CONTROL) is None or not torch.cuda.is_available(), reason=f"needs a CUDA GPU and {CONTROL}"
)

CUDA_CLIENT = "import torch; x = torch.ones(1024, 1024, device='cuda'); print(float((x @ x).sum()))"


@needs_mps
def test_workers_started_with_its_env_run_under_the_daemon(tmp_path):
    daemon = MpsDaemon.start(tmp_path / "mps")
    try:
        result = subprocess.run(
            [sys.executable, "-c", CUDA_CLIENT],
            env={**os.environ, **daemon.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert float(result.stdout) == 1024.0**3
        # the control daemon starts an MPS server for its first client and logs both
        log = (tmp_path / "mps" / "log" / "control.log").read_text()
        assert "server" in log.lower(), log
    finally:
        assert daemon.stop()


def test_missing_binary_is_reported(tmp_path):
    with pytest.raises(MpsUnavailable, match="not found"):
        MpsDaemon.start(tmp_path / "mps", control=str(tmp_path / "no-such-binary"))
