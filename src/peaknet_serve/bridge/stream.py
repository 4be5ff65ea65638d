"""The bridge: ZMQ PULL -> decode -> bounded request queue -> HTTP workers -> CXI writer.

Threads and the bounds that keep memory finite whatever the producer does:

* the **receiver** (the calling thread) reads one message at a time from a PULL socket whose
  receive high-water mark is ``rcvhwm`` messages and whose largest message is
  ``max_message_bytes``; it decodes, cuts the frames into requests and puts them into the
  request queue (``queue_requests`` long). When that queue is full the receiver waits and reads
  nothing: ZMQ's queue fills, then TCP's, and the producer's PUSH blocks. That is back-pressure,
  counted as *stalled* time;
* ``concurrency`` **workers** POST requests (:class:`~peaknet_serve.bridge.sender.PeakServer`:
  retries while the server is unavailable, then counts the frames as failed);
* one **writer** turns answers into CXI files (:class:`~peaknet_serve.bridge.cxi.CxiSink`); its
  queue is bounded too, so a slow disk slows the workers, not memory.

At most ``rcvhwm + 1`` messages plus ``queue_requests + concurrency + writer_queue`` requests are
held at any time. Every frame received ends up in a file, answered or marked failed; a graceful
stop (first SIGINT/SIGTERM, ``max_frames``, ``idle_timeout_s``) first reads what ZMQ already
queued, then finishes every request; a second signal aborts the retries (those frames are
counted failed).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from peaknet_serve.bridge.chunks import Chunker, Request, Seal
from peaknet_serve.bridge.cxi import Answer, CxiSink
from peaknet_serve.bridge.messages import MessageError, decode_message
from peaknet_serve.bridge.sender import PeakServer, SendFailed
from peaknet_serve.bridge.stats import StreamStats, report_line

POLL_S = 0.1


@dataclass(frozen=True)
class StreamConfig:
    """Where frames come from and how they flow.

    Attributes:
        bind / connect: ZMQ endpoints the PULL socket binds to or connects to (at least one).
        rcvhwm: messages ZMQ may queue in the bridge before the producer is held back.
        max_message_bytes: larger messages are refused by ZMQ (the sender is disconnected).
        field_name / panels / pad_style: how to read frames from a message (:func:`decode_message`).
        frames_per_request: most frames per POST (frames of consecutive messages are gathered).
        linger_s: longest a frame waits for more frames to fill its request.
        concurrency: POSTs in flight.
        queue_requests: decoded requests waiting for a worker.
        max_frames: stop after this many frames (``None``: run until stopped).
        idle_timeout_s: stop after this long without a message (``None``: never).
        report_every_s: live status line period (``0``: none).
    """

    bind: Sequence[str] = ()
    connect: Sequence[str] = ()
    rcvhwm: int = 4
    max_message_bytes: int = 2**30
    field_name: str | None = None
    panels: int | None = None
    pad_style: str = "center"
    frames_per_request: int = 4
    linger_s: float = 0.05
    concurrency: int = 4
    queue_requests: int = 8
    max_frames: int | None = None
    idle_timeout_s: float | None = None
    report_every_s: float = 5.0

    def __post_init__(self) -> None:
        if not (self.bind or self.connect):
            raise ValueError("give at least one endpoint to bind or connect")
        for name in ("rcvhwm", "frames_per_request", "concurrency", "queue_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


@dataclass
class _Shared:
    stop: threading.Event = field(default_factory=threading.Event)  # graceful: stop receiving
    abort: threading.Event = field(default_factory=threading.Event)  # give up retries too
    writer_error: BaseException | None = None
    busy: int = 0


def open_pull_socket(config: StreamConfig, context: Any) -> Any:
    """A PULL socket with the config's bounds, bound/connected to its endpoints."""
    import zmq

    socket = context.socket(zmq.PULL)
    socket.setsockopt(zmq.RCVHWM, config.rcvhwm)
    socket.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
    socket.setsockopt(zmq.LINGER, 0)
    for endpoint in config.bind:
        socket.bind(endpoint)
    for endpoint in config.connect:
        socket.connect(endpoint)
    return socket


class Bridge:
    """One streaming run. ``run()`` blocks until the stream stops; ``stop()``/``abort()`` from any thread."""

    def __init__(
        self,
        config: StreamConfig,
        server: PeakServer,
        sink: CxiSink,
        stats: StreamStats | None = None,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
        frames_per_file: int = 1000,
    ):
        self.config, self.server, self.sink, self.log = config, server, sink, log
        self.stats = stats or StreamStats(min_peaks=sink.min_peaks)
        self.chunker = Chunker(config.frames_per_request, frames_per_file, config.linger_s)
        self.shared = _Shared()
        server.stop = self.shared.abort
        server.on_retry = self.stats.retry
        self._work: queue.Queue[Request | None] = queue.Queue(maxsize=config.queue_requests)
        self._written: queue.Queue[Answer | Seal | None] = queue.Queue(maxsize=2 * config.concurrency + 16)
        self._busy_lock = threading.Lock()
        self._finished = threading.Event()
        self.ready = threading.Event()  # set once the socket is bound/connected
        self.bound: list[str] = []  # the endpoint bound last (``tcp://host:port`` with the port a ``*`` chose)

    # ---------------------------------------------------------------- control

    def stop(self) -> None:
        """Stop receiving; finish what was received."""
        self.shared.stop.set()

    def abort(self) -> None:
        """Stop receiving and stop retrying: requests waiting on the server fail now."""
        self.shared.stop.set()
        self.shared.abort.set()

    @property
    def in_flight(self) -> int:
        return self._work.qsize() + self.shared.busy

    # ---------------------------------------------------------------- run

    def run(self, context: Any = None) -> StreamStats:
        import zmq

        own_context = context is None
        context = context or zmq.Context()
        socket = open_pull_socket(self.config, context)
        self.bound = [socket.getsockopt_string(zmq.LAST_ENDPOINT)] if self.config.bind else []
        self.ready.set()
        workers = [
            threading.Thread(target=self._work_loop, name=f"bridge-post-{i}", daemon=True)
            for i in range(self.config.concurrency)
        ]
        writer = threading.Thread(target=self._write_loop, name="bridge-writer", daemon=True)
        reporter = threading.Thread(target=self._report_loop, name="bridge-report", daemon=True)
        for thread in (*workers, writer, reporter):
            thread.start()
        try:
            self._receive_loop(socket, zmq)
            self._drain(socket, zmq)
        finally:
            requests, seals = self.chunker.finish()
            for request in requests:
                self._put(self._work, request, count_stall=False)
            for seal in seals:
                self._put(self._written, seal, count_stall=False)
            for _ in workers:
                self._put(self._work, None, count_stall=False)
            for thread in workers:
                thread.join()
            self._put(self._written, None, count_stall=False)
            writer.join()
            self.shared.stop.set()
            self._finished.set()
            reporter.join()
            socket.close(linger=0)
            if own_context:
                context.term()
        if self.shared.writer_error is not None:
            raise RuntimeError(f"writing peak files failed: {self.shared.writer_error}") from self.shared.writer_error
        return self.stats

    def _receive_loop(self, socket: Any, zmq: Any) -> None:
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        last_message = time.monotonic()
        while not self.shared.stop.is_set():
            if self.config.max_frames is not None and self.chunker.frames_seen >= self.config.max_frames:
                return
            due = self.chunker.due(time.monotonic())
            if due is not None and due <= 0:
                for request in self.chunker.flush():
                    self._put(self._work, request)
                continue
            wait_s = POLL_S if due is None else min(POLL_S, due)
            if not poller.poll(max(1, int(wait_s * 1e3))):
                idle = self.config.idle_timeout_s
                if idle is not None and time.monotonic() - last_message > idle:
                    self.log(f"no message for {idle:g} s: stopping")
                    return
                continue
            last_message = time.monotonic()
            self._handle(socket.recv(copy=False), last_message)

    def _drain(self, socket: Any, zmq: Any) -> None:
        """Read the messages ZMQ already holds (at most ``rcvhwm`` plus a few in transit)."""
        if self.shared.abort.is_set():
            return
        for _ in range(4 * self.config.rcvhwm):
            if self.config.max_frames is not None and self.chunker.frames_seen >= self.config.max_frames:
                return
            try:
                frame = socket.recv(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frame, time.monotonic())

    def _handle(self, frame: Any, received_at: float) -> None:
        payload = frame.buffer
        try:
            message = decode_message(
                payload,
                self.config.field_name,
                self.config.panels,
                self.config.pad_style,
                self.config.max_message_bytes,
            )
        except MessageError as err:
            self.stats.bad_message(str(err))
            self.log(f"unreadable message ({len(payload)} bytes): {err}")
            return
        if self.config.max_frames is not None:
            room = self.config.max_frames - self.chunker.frames_seen
            if message.n_frames > room:
                message = type(message)(
                    message.frames[:room], {k: v[:room] for k, v in message.metadata.items()}, message.source_format
                )
        self.stats.message(message.n_frames, len(payload))
        requests, seals = self.chunker.add(message, received_at)
        for request in requests:
            self._put(self._work, request)
        for seal in seals:
            self._put(self._written, seal, count_stall=False)

    def _put(self, target: queue.Queue, item: Any, count_stall: bool = True) -> None:
        """Blocking put; time spent waiting on the request queue is back-pressure."""
        try:
            target.put_nowait(item)
            return
        except queue.Full:
            pass
        started = time.monotonic()
        while True:
            try:
                target.put(item, timeout=POLL_S)
                break
            except queue.Full:
                continue
        if count_stall:
            self.stats.stalled(time.monotonic() - started)

    # ---------------------------------------------------------------- workers

    def _work_loop(self) -> None:
        while (request := self._work.get()) is not None:
            with self._busy_lock:
                self.shared.busy += 1
            try:
                answer = self._answer(request)
            finally:
                with self._busy_lock:
                    self.shared.busy -= 1
            self._put(self._written, answer, count_stall=False)

    def _answer(self, request: Request) -> Answer:
        try:
            document = self.server.predict(request.frames)
        except SendFailed as err:
            return Answer(request, None, error=err.reason, answered_at=time.monotonic(), attempts=err.attempts)
        except Exception as err:  # noqa: BLE001  (a bug must not lose the frames silently)
            return Answer(request, None, error=f"{type(err).__name__}: {err}", answered_at=time.monotonic())
        server = {k: str(document.get(k)) for k in ("model", "precision", "device") if k in document}
        return Answer(request, document["frames"], server=server, answered_at=time.monotonic())

    # ---------------------------------------------------------------- writer

    def _write_loop(self) -> None:
        while (item := self._written.get()) is not None:
            if self.shared.writer_error is not None:
                if isinstance(item, Answer):  # keep draining so the workers never block
                    self.stats.answered(item.request.n_frames, None, 0.0, "not written: peak file writer failed")
                continue
            try:
                done = self.sink.seal(item) if isinstance(item, Seal) else self._record(item)
            except Exception as err:  # noqa: BLE001
                self.shared.writer_error = err
                self.log(f"writing peak files failed, stopping: {err}")
                self.abort()
                continue
            if done is not None:
                self.stats.file_written()
        if self.shared.writer_error is not None:
            self.sink.abandon()

    def _record(self, answer: Answer):
        lag = answer.answered_at - answer.request.received_at
        counts = None if answer.failed else [int(f["num_peaks"]) for f in answer.frames]
        done = self.sink.add(answer)
        self.stats.answered(answer.request.n_frames, counts, lag, answer.error)
        return done

    # ---------------------------------------------------------------- reporting

    def _report_loop(self) -> None:
        every = self.config.report_every_s
        previous = self.stats.snapshot()
        if every <= 0:
            return
        while not self._finished.wait(every):
            now = self.stats.snapshot()
            self.log(report_line(previous, now, self.in_flight))
            previous = now
