"""torch.compile's artefacts built once per host and model, reused by every later worker start.

A compiled worker spends its start-up generating and compiling kernels for every micro-batch bucket.
:class:`CompileCache` keeps what that produced (``torch.compiler.save_cache_artifacts``: Inductor's
FX-graph cache with the compiled Triton kernels, AOTAutograd's cache, autotuning results) in one file
per model architecture and serving mode, and feeds it back (``torch.compiler.load_cache_artifacts``)
before the next start compiles, which then finds every graph in the cache instead of building it.

Files in ``directory`` (one set per :attr:`CompileCache.key`)::

    <label>-<key>.artefacts   the serialized artefacts (bytes, as torch wrote them)
    <label>-<key>.json        what they were built for and when (for people; never read back)
    <label>-<key>.tuning.json start-up measurements the compiled graphs were traced with (the depthwise
                              convs' padding, :func:`padding_of`): reused so that a warm start neither
                              repeats them nor traces a different graph
    <label>-<key>.lock        held while a worker loads, or builds and saves, the artefacts

Workers that start together (TorchServe starts all of a model's workers at once) take the lock in
turn: the first builds and saves while the others wait, and then load instead of compiling the same
graphs side by side. Loading stale or foreign artefacts is harmless: Inductor's own keys decide
what is a hit, so a mismatch costs a compilation, never a wrong kernel.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from peaknet_serve.config.mode import ServingMode
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.model import resize
from peaknet_serve.model.depthwise import PaddableDepthwiseConv2d
from peaknet_serve.model.peaknet import PeakNet

log = logging.getLogger(__name__)

__all__ = ["CompileCache", "FileLock", "apply_padding", "cache_key", "default_cache_dir", "padding_of", "serving_cache"]


def default_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$PEAKNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/peaknet-serve``, else ``~/.cache/peaknet-serve``."""
    if env.get("PEAKNET_CACHE_DIR"):
        return Path(env["PEAKNET_CACHE_DIR"]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "peaknet-serve"


def cache_key(parts: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``parts`` (JSON, keys sorted): what the compiled code depends on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def torch_and_gpu(device: torch.device, gpu: str | None) -> dict[str, Any]:
    """torch's version and, on CUDA, torch's CUDA version and the GPU's name ``gpu`` (ignored on
    the CPU): what both a compiled artefact (:func:`build_description`) and the decision to build
    AOT packages on a host (``config.backend.build_host``) depend on."""
    described: dict[str, Any] = {"torch": torch.__version__}
    if device.type == "cuda":
        described.update(cuda=torch.version.cuda, gpu=gpu)
    return described


def build_description(device: torch.device) -> dict[str, Any]:
    """The software and device a compiled artefact is built for (part of every key)."""
    cuda = device.type == "cuda"
    described = torch_and_gpu(device, torch.cuda.get_device_name(device) if cuda else None)
    described["python"] = platform.python_version()
    if cuda:
        described["capability"] = list(torch.cuda.get_device_capability(device))
    else:
        described["cpu"] = platform.machine()
    return described


@dataclass
class CompileCache:
    """One model's compiled artefacts in ``directory``.

    Attributes:
        directory: where the files live (created on first save).
        label: readable prefix of the file names (the model's name).
        key: :func:`cache_key` of everything the compiled code depends on.
        description: written beside the artefacts for people reading the directory.
    """

    directory: Path
    label: str
    key: str
    description: dict[str, Any] = field(default_factory=dict)
    loaded: frozenset[tuple[str, str]] | None = field(default=None, init=False)

    @classmethod
    def for_model(cls, directory: Path, label: str, device: torch.device, **parts: Any) -> CompileCache:
        """The cache of a model served as ``parts`` say (architecture, dtype, compile mode, shapes ...)
        on ``device`` with this torch build."""
        description = {**build_description(device), **parts}
        return cls(Path(directory), safe_label(label), cache_key(description), description)

    @property
    def artefacts_path(self) -> Path:
        return self.directory / f"{self.label}-{self.key}.artefacts"

    @property
    def tuning_path(self) -> Path:
        return self.directory / f"{self.label}-{self.key}.tuning.json"

    def load_tuning(self) -> dict[str, Any] | None:
        """The tuning saved with the artefacts, or None (none saved, or unreadable)."""
        try:
            return json.loads(self.tuning_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("compile cache: ignoring %s (%s)", self.tuning_path, exc)
            return None

    def save_tuning(self, tuning: dict[str, Any]) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write(self.tuning_path, json.dumps(tuning, indent=1, sort_keys=True).encode())
        except OSError as exc:
            log.warning("compile cache: cannot write %s (%s)", self.tuning_path, exc)

    @property
    def lock_path(self) -> Path:
        return self.directory / f"{self.label}-{self.key}.lock"

    @contextlib.contextmanager
    def compiling(self) -> Iterator[bool]:
        """Around a worker's first compiled runs: load the artefacts before, save them after.

        Holds the lock throughout when no artefacts exist yet (this worker builds them; the others
        wait and then load), only while loading otherwise. Yields whether artefacts were loaded.
        Cache errors (unreadable file, full disk) are logged and never fail the start-up.
        """
        with held_lock(self.lock_path) as release:
            if release is None:
                yield False
                return
            loaded = self.load()
            if loaded:
                release()
                log.info("compile cache: loaded %s", self.artefacts_path.name)
            yield loaded
            self.save()

    def load(self) -> bool:
        """Feed the saved artefacts to torch; False when there are none or they cannot be read."""
        try:
            data = self.artefacts_path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("compile cache: cannot read %s (%s)", self.artefacts_path, exc)
            return False
        try:
            info = torch.compiler.load_cache_artifacts(data)
        except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file must not stop a worker
            log.warning("compile cache: %s not loadable (%s: %s)", self.artefacts_path, type(exc).__name__, exc)
            return False
        if info is None:  # torch logged why (e.g. a checksum mismatch)
            log.warning("compile cache: %s not loadable", self.artefacts_path)
            return False
        self.loaded = _entries(info)
        return True

    def save(self) -> Path | None:
        """Write this process's artefacts unless they are the ones loaded; atomic (rename into place)."""
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return None
        data, info = saved
        if self.loaded is not None and _entries(info) <= self.loaded:
            return None  # nothing new since the load
        try:
            self._write(self.artefacts_path, data)
            summary = {name: len(keys) for name, keys in info.artifacts.items()}
            self._write(
                self.artefacts_path.with_suffix(".json"),
                json.dumps(
                    {
                        **self.description,
                        "artefacts": summary,
                        "bytes": len(data),
                        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    },
                    indent=1,
                ).encode(),
            )
        except OSError as exc:
            log.warning("compile cache: cannot write %s (%s)", self.artefacts_path, exc)
            return None
        log.info("compile cache: saved %s (%.1f MiB)", self.artefacts_path.name, len(data) / 2**20)
        return self.artefacts_path

    def _write(self, path: Path, data: bytes) -> None:
        write_atomic(path, data)


class FileLock:
    """An exclusive ``flock`` on the file ``path`` (created, with its directory, when first taken).

    The kernel holds an flock for as long as the open file it was taken on exists: :meth:`release`
    closes it, and so does the end of the holding process however it ends (exit, crash, SIGKILL),
    so a lock file left on disk is only a file, never a held lock, and nothing ever deletes one
    (deleting a lock file that another process holds would let a third take a second lock). The
    descriptor is close-on-exec (Python's default), so programs the holder runs (a compiler) do not
    keep the lock after it dies; a child forked without exec would, until it exits.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BinaryIO | None = None

    @property
    def held(self) -> bool:
        return self.file is not None

    def acquire(self, *, wait: bool = True) -> bool:
        """Take the lock: True once this process holds it; with ``wait`` False, False at once when
        another process holds it. A wait of more than a second is logged.

        Raises:
            OSError: the lock file cannot be created or locked (read-only or lock-less file system).
        """
        if self.file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+b")  # noqa: SIM115 - held until release
        started = time.perf_counter()
        try:
            fcntl.flock(file, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            if wait:
                raise
            return False
        except BaseException:
            file.close()
            raise
        waited = time.perf_counter() - started
        if waited > 1.0:
            log.info("compile cache: waited %.1f s for %s", waited, self.path.name)
        self.file = file
        return True

    def release(self) -> None:
        """Let the lock go (nothing when it is not held)."""
        if self.file is not None:
            file, self.file = self.file, None
            file.close()


@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[Callable[[], None] | None]:
    """A :class:`FileLock` on ``path``, waited for and held for the block.

    Yields ``release``, which lets the lock go early (a worker that found what it needs lets the
    others in), or None when the lock file cannot be created or locked (the caller goes on unlocked).
    """
    lock = FileLock(path)
    try:
        lock.acquire()
    except OSError as exc:
        log.warning("compile cache %s unusable (%s): going on without it", path.parent, exc)
        yield None
        return
    try:
        yield lock.release
    finally:
        lock.release()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in its directory renamed into place, so
    that a reader sees the old file or the whole new one, never a part."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def safe_label(label: str) -> str:
    """``label`` with every character but letters, digits and ``-_.`` replaced by ``_`` (a file name prefix)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "model"


def _entries(info: Any) -> frozenset[tuple[str, str]]:
    """The (kind, key) pairs of a ``torch.compiler.CacheInfo``."""
    if info is None:
        return frozenset()
    return frozenset((kind, key) for kind, keys in info.artifacts.items() for key in keys)


def padding_of(model: torch.nn.Module) -> dict[str, list[list[int]]]:
    """The depthwise convs' padding choices (``compute_sizes``) by module name, as JSON-able lists
    of ``[H, W, H', W']``; modules without a choice are left out."""
    return {
        name: [[*size, *target] for size, target in sorted(module.compute_sizes.items())]
        for name, module in model.named_modules()
        if isinstance(module, PaddableDepthwiseConv2d) and module.compute_sizes
    }


def apply_padding(model: torch.nn.Module, padding: dict[str, list[list[int]]]) -> None:
    """Set every depthwise conv's ``compute_sizes`` from :func:`padding_of`'s mapping (others: none).

    Raises:
        ValueError: a name in ``padding`` is not a depthwise conv of ``model``.
    """
    convs = {name: m for name, m in model.named_modules() if isinstance(m, PaddableDepthwiseConv2d)}
    unknown = sorted(set(padding) - set(convs))
    if unknown:
        raise ValueError(f"no depthwise conv named {unknown[0]!r} in this model")
    for name, module in convs.items():
        module.compute_sizes = {(h, w): (th, tw) for h, w, th, tw in padding.get(name, [])}


def cache_directory(settings: HandlerSettings) -> Path:
    """Where the compiled artefacts of ``settings`` live: ``compile_cache_dir``, else :func:`default_cache_dir`."""
    return Path(settings.compile_cache_dir).expanduser() if settings.compile_cache_dir else default_cache_dir()


def serving_cache(
    settings: HandlerSettings, mode: ServingMode, model: PeakNet, device: torch.device
) -> CompileCache | None:
    """The compiled artefacts' cache of ``model`` served in ``mode`` on ``device``; None when nothing
    is compiled (eager mode: the handler compiles on CUDA only) or the cache is off (``compile_cache``)."""
    if mode.compile is None or not settings.compile_cache:
        return None
    directory = cache_directory(settings)
    return CompileCache.for_model(
        directory,
        settings.model_label,
        device,
        architecture=model.config.as_mapping(),
        dtype=str(mode.dtype),
        autocast=str(mode.autocast),
        compile_mode=mode.compile,
        channels_last=mode.channels_last,
        buckets=list(settings.buckets()),
        warmup_shapes=[list(shape) for shape in settings.warmup_shapes],
        depthwise_padding=mode.depthwise_padding,
        merge_separable=mode.merge_separable,
        resize=resize.RESIZE_MODE,
    )
