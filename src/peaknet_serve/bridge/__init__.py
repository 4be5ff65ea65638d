"""Streaming from the facility's ZMQ producers to the PeakNet server (torch-free).

- :mod:`~peaknet_serve.bridge.messages` — LCLStreamer HDF5 / PeakNet-pipeline NPZ messages <-> frames;
- :mod:`~peaknet_serve.bridge.chunks` — the frame stream cut into requests and per-file chunks;
- :mod:`~peaknet_serve.bridge.sender` — POSTs with retries while the server is unavailable;
- :mod:`~peaknet_serve.bridge.cxi` — one CXI peak file per chunk;
- :mod:`~peaknet_serve.bridge.stats` — live rates, hits, lag and back-pressure;
- :mod:`~peaknet_serve.bridge.stream` — the bounded pipeline (receiver, senders, writer);
- :mod:`~peaknet_serve.bridge.cli` — ``peaknet-bridge``; :mod:`~peaknet_serve.bridge.producer` — ``peaknet-push``.
"""
