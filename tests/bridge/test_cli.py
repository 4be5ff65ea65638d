"""peaknet-bridge's command line: arguments, and that the bridge runs without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from peaknet_serve.bridge.cli import build_bridge, parse_args


def test_defaults_become_a_bounded_configuration(tmp_path):
    args = parse_args(["--bind", "tcp://127.0.0.1:*", "-o", str(tmp_path), "--concurrency", "3"])
    bridge = build_bridge(args)
    config = bridge.config
    assert (config.rcvhwm, config.frames_per_request, config.concurrency, config.queue_requests) == (4, 4, 3, 6)
    assert config.linger_s == pytest.approx(0.05) and config.max_message_bytes == 2**30
    assert bridge.server.policy.retry_for_s == 300 and bridge.chunker.frames_per_file == 1000


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no endpoint
        ["--bind", "tcp://*:1", "--concurrency", "0"],
        ["--bind", "tcp://*:1", "--frames-per-file", "0"],
        ["--bind", "tcp://*:1", "--retry-for", "-1"],
        ["--bind", "tcp://*:1", "--encoding", "jpeg"],
    ],
)
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2


def test_bridge_and_producer_import_no_torch():
    code = "import sys, peaknet_serve.bridge.cli, peaknet_serve.bridge.producer; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
