"""One-copy socket reads for TorchServe's worker: same bytes as TorchServe's own reader."""

import os
import socket
import threading

import pytest

from handler import ts_backend


def send_in_pieces(sock: socket.socket, payload: bytes, piece: int) -> threading.Thread:
    def run():
        for start in range(0, len(payload), piece):
            sock.sendall(payload[start:start + piece])
    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("length, piece", [(0, 1), (7, 3), (4_325_376, 65_536), (1_000_003, 999_999)])
def test_read_exactly_returns_the_bytes_sent_and_stops_there(length, piece):
    ours, theirs = socket.socketpair()
    payload, trailer = os.urandom(length), b"next message"
    with ours, theirs:
        sender = send_in_pieces(theirs, payload + trailer, piece)
        data = ts_backend.read_exactly(ours, length)
        assert isinstance(data, bytearray) and data == payload
        assert ts_backend.read_exactly(ours, len(trailer)) == trailer      # nothing read ahead
        sender.join()


def test_read_exactly_exits_like_torchserve_when_the_frontend_goes():
    ours, theirs = socket.socketpair()
    with ours:
        theirs.sendall(b"abc")
        theirs.close()
        with pytest.raises(SystemExit):
            ts_backend.read_exactly(ours, 10)


def test_install_replaces_torchserves_reader_and_matches_it(monkeypatch):
    otf = pytest.importorskip("ts.protocol.otf_message_handler")
    original = otf._retrieve_buffer
    monkeypatch.setattr(otf, "_retrieve_buffer", original)       # restored after the test
    assert ts_backend.install()
    assert otf._retrieve_buffer is ts_backend.read_exactly
    payload = os.urandom(300_000)
    for reader in (original, otf._retrieve_buffer):
        ours, theirs = socket.socketpair()
        with ours, theirs:
            sender = send_in_pieces(theirs, payload, 40_000)
            assert reader(ours, len(payload)) == payload
            sender.join()
