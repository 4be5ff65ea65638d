"""One-copy reads of request bodies in TorchServe's Python worker (``socket_recv_into`` setting).

TorchServe 0.12's worker reads every field of a request from the frontend's socket with
``ts.protocol.otf_message_handler._retrieve_buffer``: ``conn.recv(n)`` in a loop, appending each
packet to a ``bytearray``. Each call allocates an ``n``-byte buffer for a packet of a few hundred
kB and every body is copied twice; for 4 MB detector frames, batch after batch, that is time the
single-threaded worker does not spend on the GPU. :func:`install` swaps in
:func:`read_exactly`, which allocates the ``bytearray`` once and fills it with ``recv_into``: the
same bytes, one copy. It changes nothing else and is a no-op when TorchServe is absent or its
internals moved (then it says so in the log).
"""

from __future__ import annotations

import logging
import socket
import sys

log = logging.getLogger(__name__)


def read_exactly(conn: socket.socket, length: int) -> bytearray:
    """Exactly ``length`` bytes from ``conn``; exits the worker if the frontend disconnects
    (what TorchServe's own reader does)."""
    data = bytearray(length)
    view = memoryview(data)
    received = 0
    while received < length:
        count = conn.recv_into(view[received:], length - received)
        if count == 0:
            logging.info("Frontend disconnected.")
            sys.exit(0)
        received += count
    view.release()
    return data


def install() -> bool:
    """Make TorchServe's worker read request fields with :func:`read_exactly`; True if it did."""
    try:
        from ts.protocol import otf_message_handler  # noqa: PLC0415 - only inside a TorchServe worker
    except ImportError:
        return False
    if not callable(getattr(otf_message_handler, "_retrieve_buffer", None)):
        log.warning("socket_recv_into: this TorchServe has no _retrieve_buffer; left unchanged")
        return False
    otf_message_handler._retrieve_buffer = read_exactly
    return True
