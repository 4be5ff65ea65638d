"""AOTInductor packages: the network compiled ahead of time, one package per input shape, built once
per host and loaded by every later worker start without tracing anything.

With ``compile_backend: aoti``, or ``auto`` resolved to it (:mod:`peaknet_serve.config.backend`),
the network's peak-score forward is exported (``torch.export``) at each micro-batch bucket's
(B, 1, Hp, Wp) input and compiled by AOTInductor
(``torch._inductor.aoti_compile_and_package``) into a ``.pt2`` package, which a later start loads
(:func:`open_package`) and calls directly: neither Dynamo nor Inductor run. The
weights are baked into each package as constants, so a package is keyed by their SHA-256 (of the
cast weights, :func:`weights_sha256`) besides the serving mode, the shape and memory layout, the
depthwise convs' padding (exported as chosen, :func:`~peaknet_serve.device.compile_cache.padding_of`)
the torch, Python, CUDA and GPU versions and the host CPU's vector-instruction flags
(:func:`cpu_vector_flags`: the package's C++ wrapper is compiled for them). A package for one GPU keeps its own copy of the
weights on that GPU, one copy per bucket.

Files in the compile cache's directory (:class:`~peaknet_serve.device.compile_cache.CompileCache`
keeps the set's tuning and lock, as for torch.compile's artefacts)::

    <label>-<set>.tuning.json   the depthwise padding the packages were exported with
    <label>-<set>.lock          held while a worker reads the tuning, or tunes and saves it
    <label>-<key>.pt2           one package per network input (``key`` = set, shape, strides, padding)
    <label>-<key>.json          what it was built for, by which process and how long the build took
    <label>-<key>.pt2.lock      held while a worker builds that package
    aot-build-failed-<key>.json a build failed on this host (key: its tools, versions and GPU)

Workers started together build different packages side by side, each package once, and wait for
the ones other workers are building (:meth:`AotPackages.prepare`); the locks are ``flock`` locks
(:class:`~peaknet_serve.device.compile_cache.FileLock`), which the kernel lets go when their holder
dies, so a worker killed mid-build blocks nobody: the next to take that package's lock builds it.

Every failure (export, compilation, a corrupt or foreign package) is logged as a warning and leaves
that shape to ``torch.compile`` (with the compile cache: :func:`~peaknet_serve.pipeline.build_finder`);
a package that fails to load is removed so that the next start builds it again. A worker never dies
of its packages. A failed build also writes this host's
:class:`~peaknet_serve.config.backend.BuildFailureMarker` (after which ``compile_backend: auto``
takes ``torch.compile``), and under ``auto`` ends the building for that start: no worker builds, or
waits for, another package once a build failed here (:attr:`AotPackages.stop_after_failure`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peaknet_serve.config.backend import BackendChoice, BuildFailureMarker, resolve_compile_backend
from peaknet_serve.config.mode import ServingMode
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.device.compile_cache import (
    CompileCache,
    FileLock,
    apply_padding,
    cache_directory,
    cache_key,
    held_lock,
    padding_of,
    write_atomic,
)
from peaknet_serve.model import resize
from peaknet_serve.model.peaknet import PeakNet

log = logging.getLogger(__name__)

__all__ = [
    "AotPackages",
    "PackagedForward",
    "ScoreModule",
    "cpu_vector_flags",
    "open_package",
    "serving_packages",
    "weights_sha256",
]

Signature = tuple[tuple[int, ...], tuple[int, ...]]  # (shape, strides) of a network input


def signature(x: torch.Tensor) -> Signature:
    """The shape and strides a package was compiled for (it assumes both)."""
    return tuple(x.shape), tuple(x.stride())


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 (hex) of ``model``'s state dict: every entry's name, dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ScoreModule(nn.Module):
    """What a package holds: ``forward_peak_score`` (B, 1, H, W) -> (B, 1, H, W), under
    ``torch.autocast(device_type, autocast)`` when ``autocast`` is set (as the finder serves it)."""

    def __init__(self, model: PeakNet, autocast: torch.dtype | None, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.autocast = autocast
        self.device_type = device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.autocast is None:
            return self.model.forward_peak_score(x)
        with torch.autocast(self.device_type, dtype=self.autocast):
            return self.model.forward_peak_score(x)


class PackagedForward:
    """The network's forward by input: the loaded package compiled for its shape and strides, else
    ``fallback`` (the ``torch.compile`` forward). (b, 1, Hp, Wp) -> (b, 1, Hp, Wp)."""

    def __init__(self, runners: Mapping[Signature, Callable[[torch.Tensor], torch.Tensor]], fallback: Callable) -> None:
        self.runners = dict(runners)
        self.fallback = fallback

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        runner = self.runners.get(signature(x))
        return runner(x) if runner is not None else self.fallback(x)


@dataclass
class AotPackages:
    """One model's AOTInductor packages.

    Attributes:
        store: the set's cache entry (directory, label, key of everything but the input, tuning
            file, lock).
        marker: this host's build-failure marker, written when a build fails and removed when one
            succeeds; None: none kept.
        stop_after_failure: build (and wait for) no more packages once a build failed in this
            process or ``marker`` exists (``compile_backend: auto``); False: try every package.
    """

    store: CompileCache
    marker: BuildFailureMarker | None = None
    stop_after_failure: bool = False

    @classmethod
    def for_model(
        cls,
        directory: Path,
        label: str,
        device: torch.device,
        *,
        marker: BuildFailureMarker | None = None,
        stop_after_failure: bool = False,
        **parts: Any,
    ) -> AotPackages:
        """The packages of a model served as ``parts`` say (weights' SHA-256, architecture, mode ...)
        on this host's CPU (:func:`cpu_vector_flags`, unless ``parts`` name ``cpu_vector_flags``)."""
        parts = {"cpu_vector_flags": cpu_vector_flags(), **parts}
        store = CompileCache.for_model(directory, label, device, backend="aoti", **parts)
        return cls(store, marker, stop_after_failure)

    def package_path(self, example: torch.Tensor, padding: Mapping[str, Any]) -> Path:
        """Where the package for inputs like ``example`` with the depthwise ``padding`` lives."""
        shape, strides = signature(example)
        key = cache_key({"set": self.store.key, "shape": shape, "strides": strides, "padding": padding})
        return self.store.directory / f"{self.store.label}-{key}.pt2"

    def lock_of(self, path: Path) -> FileLock:
        """The lock a worker holds while it builds the package ``path`` (``<package>.pt2.lock``)."""
        return FileLock(path.with_name(f"{path.name}.lock"))

    def prepare(
        self, module: nn.Module, examples: Sequence[torch.Tensor], tune: Callable[[], object]
    ) -> tuple[dict[Signature, Callable], str, list[dict[str, Any]]]:
        """Load, or build, save and load, a package of ``module`` (a :class:`ScoreModule` when serving)
        for each of ``examples`` (its inputs).

        Under the set's lock the depthwise padding is taken from the set's tuning file, or chosen by
        ``tune()`` (which sets the convs' ``compute_sizes``) and saved, before anything is exported;
        the lock is let go after that. Each package has a lock of its own (:meth:`lock_of`), held
        while a worker builds it, so that workers started together build different packages side by
        side: a worker walks ``examples`` in order, takes (without waiting) the lock of the first
        package that is neither on disk nor locked by another worker, builds and saves it, and walks
        again. When every missing package is locked by others it loads the packages it has, then
        waits for each of those locks in turn and loads that package, or builds it itself when the
        other worker's build failed or the worker died (the kernel lets a dead process's lock go).
        A worker alone builds every package, one after another. With :attr:`stop_after_failure`,
        once a build failed here or another worker wrote the build-failure marker, the packages not
        yet built are ``skipped`` (neither built nor waited for).

        Returns:
            The loaded packages by input signature; ``aot_hit`` (all loaded, none built here),
            ``aot_built`` (all loaded, some built here) or ``aot_fallback`` (some input has none:
            ``torch.compile`` runs it); and per example, in order, its ``shape``, its ``source``
            (``found`` on disk, ``built`` here, ``waited`` for: built by another worker while this
            one waited, or ``skipped``: an AOT build failed on this host), ``built_by`` (the builder's process id, from the package's ``.json``; None
            where unknown), and the seconds its ``build_s`` (0 unless built here), ``wait_s`` (for
            another worker's build), ``load_s`` and ``first_call_s`` took (None where that step did
            not happen or failed).
        """
        with held_lock(self.store.lock_path):
            tuning = self.store.load_tuning()
            if tuning is not None:
                apply_padding(module, tuning["depthwise_padding"])
            else:
                tune()
                self.store.save_tuning({"depthwise_padding": padding_of(module)})
        padding = padding_of(module)
        paths = [self.package_path(example, padding) for example in examples]
        records: list[dict[str, Any]] = [
            {
                "shape": list(example.shape),
                "source": "found",
                "built_by": None,
                "build_s": 0.0,
                "wait_s": 0.0,
                "load_s": None,
                "first_call_s": None,
            }
            for example in examples
        ]
        on_disk = [False] * len(examples)
        runners: dict[Signature, Callable] = {}
        failures = [0]  # builds that failed here

        def gave_up() -> bool:
            if not self.stop_after_failure:
                return False
            return failures[0] > 0 or (self.marker is not None and self.marker.path.exists())

        def build_locked(index: int, lock: FileLock) -> None:
            """Build package ``index`` unless it is on disk (or building was given up), its ``lock``
            taken (held, or unusable)."""
            path = paths[index]
            if path.exists():
                on_disk[index] = True
                return
            if gave_up():
                records[index]["source"] = "skipped"
                return
            if lock.held:  # what a build of this package that died left behind
                for stale in path.parent.glob(f".{path.stem}.*"):
                    stale.unlink(missing_ok=True)
            records[index].update(source="built", built_by=os.getpid())
            started = time.perf_counter()
            on_disk[index] = self.build(module, examples[index], path)
            records[index]["build_s"] = time.perf_counter() - started
            failures[0] += not on_disk[index]

        def load(index: int) -> None:
            if records[index]["source"] != "built":
                records[index]["built_by"] = builder_of(paths[index])
            runner, timing = load_package(paths[index], examples[index])
            records[index].update(timing)
            if runner is not None:
                runners[signature(examples[index])] = runner

        settled: set[int] = set()  # on disk, or built (or failed to build) here
        while True:
            others: list[int] = []  # missing and locked by another worker
            for index, path in enumerate(paths):
                if index in settled:
                    continue
                if path.exists():
                    on_disk[index] = True
                    settled.add(index)
                    continue
                lock = self.lock_of(path)
                if take(lock, wait=False):
                    try:
                        build_locked(index, lock)
                    finally:
                        lock.release()
                    settled.add(index)
                    break
                others.append(index)
            else:
                break  # nothing left to take
        for index in range(len(examples)):
            if on_disk[index]:
                load(index)
        for index in others:
            if gave_up() and not paths[index].exists():
                records[index]["source"] = "skipped"
                continue
            lock = self.lock_of(paths[index])
            log.info("AOT package for %s: waiting for another worker's build", tuple(examples[index].shape))
            started = time.perf_counter()
            take(lock, wait=True)
            try:
                records[index].update(source="waited", wait_s=time.perf_counter() - started)
                build_locked(index, lock)
            finally:
                lock.release()
            if on_disk[index]:
                load(index)
        if len(runners) < len(examples):
            return runners, "aot_fallback", records
        return runners, "aot_built" if any(r["source"] == "built" for r in records) else "aot_hit", records

    def build(self, module: nn.Module, example: torch.Tensor, path: Path) -> bool:
        """Export ``module`` at ``example``, compile it into the package ``path`` (atomically) and write
        the ``.json`` beside it; False (and a warning) when any step fails."""
        started = time.perf_counter()
        temporary = None
        try:
            with torch.no_grad():
                exported = torch.export.export(module, (example,), strict=False)
            descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".pt2")
            os.close(descriptor)
            torch._inductor.aoti_compile_and_package(exported, package_path=temporary)
            os.replace(temporary, path)
        except Exception as exc:  # noqa: BLE001 - an unexportable model or a failed compile must not stop a worker
            log.warning(
                "AOT package for %s not built (%s: %s): torch.compile runs it",
                tuple(example.shape),
                type(exc).__name__,
                exc,
            )
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)
            if self.marker is not None:
                self.marker.write(f"{type(exc).__name__}: {exc}")
            return False
        if self.marker is not None:
            self.marker.clear()
        seconds = time.perf_counter() - started
        shape, strides = signature(example)
        described = {
            **self.store.description,
            "input_shape": list(shape),
            "input_strides": list(strides),
            "input_dtype": str(example.dtype),
            "depthwise_padding": padding_of(module),
            "build_s": round(seconds, 2),
            "builder_pid": os.getpid(),
            "builder_host": socket.gethostname(),
            "bytes": path.stat().st_size,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            write_atomic(path.with_suffix(".json"), json.dumps(described, indent=1).encode())
        except OSError as exc:
            log.warning("AOT packages: cannot write %s (%s)", path.with_suffix(".json"), exc)
        log.info("AOT package built for %s in %.1f s by worker pid %d: %s", shape, seconds, os.getpid(), path.name)
        return True


#: CPU feature flags (as Linux's /proc/cpuinfo names them) that decide which vector instructions
#: compiled C++ may use.
VECTOR_FLAGS = frozenset(
    {
        "sse4_2", "avx", "avx2", "fma", "f16c",
        "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16", "avx512_fp16",
        "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
        "asimd", "asimdhp", "bf16", "sve", "sve2", "i8mm",
    }
)  # fmt: skip


def cpu_vector_flags(cpuinfo: str | None = None) -> list[str]:
    """The :data:`VECTOR_FLAGS` of this host's CPU, sorted, from ``cpuinfo`` (the text of
    /proc/cpuinfo, read when None; its first ``flags`` or ``Features`` line); [] where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return sorted(VECTOR_FLAGS.intersection(value.split()))
    return []


def open_package(path: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The AOTInductor package at ``path`` as a callable on ``device``, through AOTInductor's package
    loader itself.

    ``torch._inductor.aoti_load_package`` first gathers the host's device information to compare it
    with the package's, for a warning only; that includes choosing the CPU's vector ISA, which
    compiles and runs a test program per candidate ISA in child processes, once per process and
    under a file lock shared by the host's processes. The packages' key already holds what they
    were built for (versions, GPU, :func:`cpu_vector_flags`), so the loader is built directly; the
    public function is the fallback where this torch lacks the loader class.
    """
    index = (device.index or 0) if device.type == "cuda" else -1
    classes = package_loader_classes()
    if classes is None:
        return torch._inductor.aoti_load_package(str(path), device_index=index)
    compiled_model, loader = classes
    return compiled_model(loader(str(path), "model", False, 1, index))


def package_loader_classes() -> tuple[type, type] | None:
    """AOTInductor's ``(AOTICompiledModel, AOTIModelPackageLoader)``, or None where this torch has
    them elsewhere (then :func:`open_package` uses the public function)."""
    try:
        from torch.export.pt2_archive._package import AOTICompiledModel

        return AOTICompiledModel, torch._C._aoti.AOTIModelPackageLoader
    except (ImportError, AttributeError):
        return None


def load_package(
    path: Path, example: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, dict[str, float | None]]:
    """The package at ``path``, loaded onto ``example``'s device and run once on it (its first call),
    with the seconds ``load_s`` and ``first_call_s`` took; None (a warning, and the file removed so
    that the next start rebuilds it) when either fails."""
    device = example.device
    timing: dict[str, float | None] = {"load_s": None, "first_call_s": None}
    try:
        started = time.perf_counter()
        runner = open_package(path, device)
        timing["load_s"] = time.perf_counter() - started
        started = time.perf_counter()
        with torch.inference_mode():
            runner(example)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        timing["first_call_s"] = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign package must not stop a worker
        log.warning(
            "AOT package %s not loadable (%s: %s): torch.compile runs %s; removed",
            path.name,
            type(exc).__name__,
            str(exc)[:300],
            tuple(example.shape),
        )
        path.unlink(missing_ok=True)
        return None, timing
    return runner, timing


def take(lock: FileLock, *, wait: bool) -> bool:
    """:meth:`FileLock.acquire`, with a lock file that cannot be created or locked counted as taken
    (a warning: the worker goes on unlocked, as the compile cache does)."""
    try:
        return lock.acquire(wait=wait)
    except OSError as exc:
        log.warning("AOT packages: lock %s unusable (%s): going on without it", lock.path, exc)
        return True


def builder_of(path: Path) -> int | None:
    """The process id that built the package ``path``, from the ``.json`` beside it; None where that
    cannot be read."""
    try:
        pid = json.loads(path.with_suffix(".json").read_text()).get("builder_pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def serving_packages(
    settings: HandlerSettings,
    mode: ServingMode,
    model: PeakNet,
    device: torch.device,
    backend: BackendChoice | None = None,
) -> AotPackages | None:
    """The AOTInductor packages of ``model`` served in ``mode`` on ``device``; None unless the network
    is compiled (``mode.compile``), its backend is ``aoti`` (``backend``, else ``compile_backend``
    resolved for ``device``: :func:`~peaknet_serve.config.backend.resolve_compile_backend`) and the
    compile cache is on. They keep the backend's build-failure marker, and under ``auto`` stop
    building after a failure (:class:`AotPackages`)."""
    if mode.compile is None or not settings.compile_cache:
        return None
    directory = cache_directory(settings)
    if backend is None:
        backend = resolve_compile_backend(
            settings.compile_backend, device, compile_cache=settings.compile_cache, cache_dir=directory
        )
    if backend.backend != "aoti":
        return None
    return AotPackages.for_model(
        directory,
        settings.model_label,
        device,
        marker=backend.marker,
        stop_after_failure=backend.requested == "auto",
        weights_sha256=weights_sha256(model),
        architecture=model.config.as_mapping(),
        dtype=str(mode.dtype),
        autocast=str(mode.autocast),
        compile_mode=mode.compile,
        channels_last=mode.channels_last,
        depthwise_padding=mode.depthwise_padding,
        merge_separable=mode.merge_separable,
        warmup_shapes=[list(shape) for shape in settings.warmup_shapes],
        resize=resize.RESIZE_MODE,
    )
