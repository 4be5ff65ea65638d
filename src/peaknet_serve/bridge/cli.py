"""peaknet-bridge: stream frames from the facility's ZMQ producers through the PeakNet server into CXI files.

    peaknet-bridge --bind tcp://0.0.0.0:12321 --url http://gpu-host:8080 --key-file key_file.json \\
        --output-dir peaks/run0042 --frames-per-file 1000

The bridge PULLs LCLStreamer HDF5 messages (optionally compressed) or PeakNet-pipeline NPZ
messages, sends the frames to the server (``--concurrency`` requests in flight, a bounded queue in
front: back-pressure reaches the producer instead of filling memory), and writes one CXI peak file
per ``--frames-per-file`` frames (CrystFEL reads them with ``--peaks=cxi``). A status line every
``--report-every`` seconds shows rates, hits, lag and back-pressure. While the server is down or
its queue is full, requests are retried for ``--retry-for`` seconds, then their frames are
marked failed in the files. Ctrl-C (or SIGTERM) stops receiving and finishes what was received; a
second one gives up the retries. Exit status: 0 every frame answered, 1 some failed or unreadable,
2 bad arguments, 3 the server refused the credentials.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from peaknet_serve.bridge.cxi import FRAME_COMPRESSIONS, CxiSink
from peaknet_serve.bridge.messages import PAD_STYLES
from peaknet_serve.bridge.sender import PeakServer
from peaknet_serve.bridge.stats import format_summary, summary
from peaknet_serve.bridge.stream import Bridge, StreamConfig
from peaknet_serve.clients.payloads import ENCODINGS
from peaknet_serve.clients.retry import TOKEN_REJECTED, RetryPolicy
from peaknet_serve.wire import DEFAULT_URL


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="peaknet-bridge",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    zmq_group = p.add_argument_group("producer (ZMQ PULL)")
    zmq_group.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="bind the PULL socket here, e.g. tcp://0.0.0.0:12321 (producers connect; repeatable)",
    )
    zmq_group.add_argument(
        "--connect",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="connect to a producer that binds, e.g. tcp://daq01:12321 (repeatable)",
    )
    zmq_group.add_argument(
        "--rcvhwm", type=int, default=4, help="messages ZMQ queues before holding the producer back (4)"
    )
    zmq_group.add_argument("--max-message-mb", type=float, default=1024.0, help="largest message accepted, MiB (1024)")
    zmq_group.add_argument(
        "--field",
        dest="field_name",
        help="frames' dataset (HDF5) or key (NPZ); default /data/data, /entry_1/data_1/data, /data;"
        " detector_data, data",
    )
    zmq_group.add_argument("--panels", type=int, help="split 3-D (N, P*H, W) slabs into P panels")
    zmq_group.add_argument(
        "--pad-style",
        default="center",
        choices=PAD_STYLES,
        help="where padded NPZ panels sit in their padded frame (center)",
    )

    server = p.add_argument_group("server")
    server.add_argument("--url", default=DEFAULT_URL, help=f"inference address ({DEFAULT_URL})")
    server.add_argument("--model", default="peaknet")
    server.add_argument("--token", help="inference key (TorchServe token authorisation)")
    server.add_argument("--key-file", help="TorchServe key_file.json; re-read when the server rotates keys")
    server.add_argument("--encoding", default="raw", choices=ENCODINGS, help="request encoding (raw)")
    server.add_argument(
        "--frames-per-request", type=int, default=4, help="frames per request, gathered across messages (4)"
    )
    server.add_argument(
        "--linger-ms", type=float, default=50.0, help="longest a frame waits for others to fill its request, ms (50)"
    )
    server.add_argument("--concurrency", type=int, default=4, help="requests in flight (4)")
    server.add_argument(
        "--queue", type=int, default=None, help="decoded requests waiting for a sender (2 x concurrency)"
    )
    server.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, s (120)")
    server.add_argument(
        "--retry-for",
        type=float,
        default=300.0,
        help="keep retrying an unavailable server this long per request, s (300)",
    )

    out = p.add_argument_group("output")
    out.add_argument("-o", "--output-dir", default="peaks", help="where CXI files go (./peaks)")
    out.add_argument("--prefix", default="peaks", help="file names: PREFIX-000000.cxi ... (peaks)")
    out.add_argument("--frames-per-file", type=int, default=1000, help="frames per CXI file (1000)")
    out.add_argument(
        "--save-frames", action="store_true", help="store the frames in the CXI files too (for indexamajig)"
    )
    out.add_argument(
        "--frames-compression", default="bslz4", choices=FRAME_COMPRESSIONS, help="with --save-frames (bslz4)"
    )
    out.add_argument("--min-peaks", type=int, default=10, help="a hit has at least this many peaks (10)")

    run = p.add_argument_group("run")
    run.add_argument("--max-frames", type=int, help="stop after this many frames")
    run.add_argument("--idle-timeout", type=float, help="stop after this many seconds without a message")
    run.add_argument("--report-every", type=float, default=5.0, help="status line period, s; 0: none (5)")
    run.add_argument("--stats-json", help="write the run's summary here as JSON")
    args = p.parse_args(argv)
    if not (args.bind or args.connect):
        p.error("give --bind or --connect (where the producer's PUSH socket is)")
    for name in ("rcvhwm", "frames_per_request", "concurrency", "frames_per_file", "queue", "max_frames", "panels"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.retry_for < 0 or args.linger_ms < 0 or args.timeout <= 0 or args.max_message_mb <= 0:
        p.error("--retry-for and --linger-ms must be >= 0, --timeout and --max-message-mb > 0")
    return args


def build_bridge(args: argparse.Namespace) -> Bridge:
    config = StreamConfig(
        bind=args.bind,
        connect=args.connect,
        rcvhwm=args.rcvhwm,
        max_message_bytes=int(args.max_message_mb * 2**20),
        field_name=args.field_name,
        panels=args.panels,
        pad_style=args.pad_style,
        frames_per_request=args.frames_per_request,
        linger_s=args.linger_ms / 1e3,
        concurrency=args.concurrency,
        queue_requests=args.queue or 2 * args.concurrency,
        max_frames=args.max_frames,
        idle_timeout_s=args.idle_timeout,
        report_every_s=args.report_every,
    )
    server = PeakServer(
        args.url, args.model, args.encoding, args.token, args.key_file, args.timeout, RetryPolicy(args.retry_for)
    )
    attrs = {"bridge_url": args.url, "bridge_endpoints": " ".join([*args.bind, *args.connect])}
    sink = CxiSink(
        args.output_dir, args.prefix, args.save_frames, args.frames_compression, min_peaks=args.min_peaks, attrs=attrs
    )
    return Bridge(config, server, sink, frames_per_file=args.frames_per_file)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bridge = build_bridge(args)
    status, text = bridge.server.ping()
    if status is None:
        bridge.log(f"server {args.url} does not answer yet ({text}); frames will wait for it")
    elif TOKEN_REJECTED in text and not args.key_file:
        print(f"{args.url} refused the inference key: {text}", file=sys.stderr)
        return 3
    elif status != 200:
        bridge.log(f"server {args.url}/ping answered {status}: {text}")

    def on_signal(signum, frame):
        if bridge.shared.stop.is_set():
            bridge.log("second signal: giving up retries, unanswered frames are counted failed")
            bridge.abort()
        else:
            bridge.log("stopping: finishing the frames received (signal again to give up retries)")
            bridge.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        bridge.log(
            f"pulling from {' '.join([*args.bind, *args.connect])}, sending to {args.url}, writing {args.output_dir}/"
        )
        stats = bridge.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    document = summary(stats, stats.snapshot())
    print(format_summary(document))
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(document, indent=2) + "\n")
    return 1 if document["frames_failed"] or document["bad_messages"] or document["frames_unanswered"] else 0


if __name__ == "__main__":
    sys.exit(main())
