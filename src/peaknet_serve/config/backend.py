"""Which backend compiles the network: the ``compile_backend`` setting resolved against the device and
the host's build tools, decided in one place.

``inductor`` is ``torch.compile``; ``aoti`` builds AOTInductor packages per micro-batch bucket, kept
in the compile cache (:mod:`peaknet_serve.device.aot_packages`). ``auto`` (the default) takes
``aoti`` where a package can be built, ``inductor`` elsewhere:

* on a CUDA device only (on the CPU ``torch.compile`` is not used by the server anyway, and tests,
  benchmarks and CI keep ``inductor`` there);
* with the compile cache on (the packages live in it);
* with a C++ compiler, found as AOTInductor finds one (:func:`cxx_compiler`);
* with the CUDA headers that AOTInductor's C++ wrapper includes (``cuda.h``, ``cuda_runtime.h``,
  ``crt/host_defines.h``), under the CUDA root that torch's C++ builder uses
  (:func:`cuda_headers`): without them a build fails in AOTInductor's C++ step, after the export
  and Inductor's lowering have run, so ``auto`` does not try.

A package build can still fail where the tools are found (a link error, no ``libcuda.so`` for the
linker). The failing worker then writes a marker into the compile cache's directory
(:class:`BuildFailureMarker`: ``aot-build-failed-<key>.json``, keyed by what decides whether a build
can work here: torch and CUDA versions, GPU, compiler path and version, CUDA root), and ``auto``
takes ``inductor`` wherever a marker of this host is found, so that later starts use torch.compile
and its cache instead of failing the same build again; removing the marker makes ``auto`` try again.

An explicit ``aoti`` is kept on any device (the CPU tests and benchmarks build packages there); with
the compile cache off it becomes ``inductor``, since the packages would have nowhere to live. It
ignores a marker (it always builds), but writes one when a build fails; a package built with either
``aoti`` or ``auto`` removes this host's marker.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peaknet_serve.config.settings import COMPILE_BACKENDS
from peaknet_serve.device.compile_cache import cache_key, torch_and_gpu, write_atomic

log = logging.getLogger(__name__)

__all__ = [
    "COMPILE_BACKENDS",
    "CUDA_HEADERS",
    "BackendChoice",
    "BuildFailureMarker",
    "build_host",
    "compiler_version",
    "cuda_headers",
    "cxx_compiler",
    "resolve_compile_backend",
    "torch_cuda_home",
]

#: headers (relative to ``<CUDA root>/include``) that AOTInductor's CUDA wrapper needs: the driver
#: and runtime APIs and the ``crt/`` headers the runtime API includes (the toolkit's ``nvcc``
#: component ships those; the ``nvidia-cuda-runtime`` wheels do not).
CUDA_HEADERS = ("cuda.h", "cuda_runtime.h", "crt/host_defines.h")

_UNSET = object()


@dataclass(frozen=True)
class BuildFailureMarker:
    """The record, in the compile cache's directory, that an AOT package build failed on this host.

    Attributes:
        path: ``<directory>/aot-build-failed-<key>.json``, ``key`` the
            :func:`~peaknet_serve.device.compile_cache.cache_key` of ``host``.
        host: what decides whether a package can be built here (:func:`build_host`).
    """

    path: Path
    host: dict[str, Any]

    @classmethod
    def for_host(cls, directory: str | os.PathLike[str], host: Mapping[str, Any]) -> BuildFailureMarker:
        return cls(Path(directory) / f"aot-build-failed-{cache_key(host)}.json", dict(host))

    def read(self) -> dict[str, Any] | None:
        """The marker's content (``host``, ``error``, ``failed_at``, ``pid``) when it exists and names
        this host; None otherwise (no marker, unreadable, or another host's)."""
        try:
            content = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("AOT build marker %s ignored (%s)", self.path, exc)
            return None
        if not isinstance(content, dict) or content.get("host") != self.host:
            return None
        return content

    def write(self, error: str) -> None:
        """Record a failed build with ``error`` (its first line is kept); a warning if it cannot be written."""
        lines = error.strip().splitlines()
        content = {
            "host": self.host,
            "error": (lines[0] if lines else error)[:300],
            "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pid": os.getpid(),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(content, indent=1, sort_keys=True).encode())
        except OSError as exc:
            log.warning("AOT build marker %s not written (%s)", self.path, exc)
            return
        log.warning("AOT build failed on this host: recorded in %s (compile_backend auto takes inductor)", self.path)

    def clear(self) -> None:
        """Remove the marker (a package was built on this host); nothing when there is none."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("AOT build marker %s not removed (%s)", self.path, exc)
            return
        log.info("AOT package built: removed the build-failure marker %s", self.path)


@dataclass(frozen=True)
class BackendChoice:
    """A resolved ``compile_backend``.

    Attributes:
        requested: the setting (``auto``, ``inductor`` or ``aoti``).
        backend: what compiles the network: ``inductor`` (``torch.compile``) or ``aoti``.
        reason: why, in a few words (``g++ at /usr/bin/g++, CUDA headers in /usr/local/cuda``).
        marker: with ``aoti`` resolved against a compile cache directory, this host's
            :class:`BuildFailureMarker` (written when a build fails, removed when one succeeds).
    """

    requested: str
    backend: str
    reason: str
    marker: BuildFailureMarker | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        """One line for logs and the model's metadata: ``auto -> aoti (g++ at /usr/bin/g++, ...)``,
        ``inductor (set)``."""
        if self.requested == self.backend:
            return f"{self.backend} ({self.reason})"
        return f"{self.requested} -> {self.backend} ({self.reason})"


def cxx_compiler(env: Mapping[str, str] = os.environ) -> str | None:
    """The C++ compiler AOTInductor would build packages with, as a path; None where there is none.

    AOTInductor (``torch._inductor.cpp_builder.get_cpp_compiler`` on Linux) takes ``$CXX``, else
    ``g++``, looked up on ``PATH``, and uses it if ``<compiler> --version`` runs; so does this
    (without the conda download torch makes only under ``TORCH_INDUCTOR_INSTALL_GXX``). ``c++`` or
    ``clang++`` alone are not tried: AOTInductor would not find them either.
    """
    name = env.get("CXX", "g++")
    if not name:
        return None
    path = shutil.which(name, path=env.get("PATH", os.defpath))
    if path is None:
        return None
    try:
        subprocess.run([path, "--version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return path


def compiler_version(path: str) -> str | None:
    """The first line ``<path> --version`` prints (``g++ (Debian 12.2.0-14) 12.2.0``); None where it
    does not run."""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, check=True, timeout=30, text=True)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0] if lines else ""


def gpu_name(device: torch.device) -> str | None:
    """``torch.cuda.get_device_name(device)``; None where it cannot be read."""
    try:
        return torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError):
        return None


def build_host(
    device: torch.device, compiler: str | None, cuda_home: str | os.PathLike[str] | None, *, gpu: object = _UNSET
) -> dict[str, Any]:
    """What decides whether an AOT package can be built on this host for ``device``: torch's version,
    the C++ ``compiler`` (path and :func:`compiler_version`), and on CUDA torch's CUDA version, the
    GPU's name (``gpu``, else :func:`gpu_name`) and the CUDA root ``cuda_home``."""
    if gpu is _UNSET:
        gpu = gpu_name(device) if device.type == "cuda" else None
    host: dict[str, Any] = {
        **torch_and_gpu(device, gpu),
        "device": device.type,
        "compiler": compiler,
        "compiler_version": compiler_version(compiler) if compiler is not None else None,
    }
    if device.type == "cuda":
        host["cuda_home"] = None if cuda_home is None else str(cuda_home)
    return host


def torch_cuda_home() -> str | None:
    """The CUDA root torch's C++ builder (and so AOTInductor) compiles against:
    ``torch.utils.cpp_extension.CUDA_HOME`` ($CUDA_HOME or $CUDA_PATH, else ``nvcc``'s parent on
    PATH, else /usr/local/cuda when it exists; None on a CPU build of torch)."""
    from torch.utils import cpp_extension  # noqa: PLC0415 - imports setuptools; only needed on CUDA

    return cpp_extension.CUDA_HOME


def cuda_headers(cuda_home: str | os.PathLike[str] | None) -> str | None:
    """Why the CUDA root ``cuda_home`` cannot serve AOTInductor's build (the first of
    :data:`CUDA_HEADERS` missing from its ``include``), or None when it can."""
    if cuda_home is None:
        return "no CUDA root (CUDA_HOME unset, no nvcc on PATH, no /usr/local/cuda)"
    include = Path(cuda_home) / "include"
    for header in CUDA_HEADERS:
        if not (include / header).is_file():
            return f"no {header} in {include}"
    return None


def resolve_compile_backend(
    requested: str,
    device: torch.device,
    *,
    compile_cache: bool = True,
    env: Mapping[str, str] = os.environ,
    cuda_home: object = _UNSET,
    cache_dir: str | os.PathLike[str] | None = None,
    gpu: object = _UNSET,
) -> BackendChoice:
    """``requested`` (``auto``, ``inductor`` or ``aoti``) resolved for a network compiled on ``device``
    (see the module docstring for the rules).

    Args:
        compile_cache: whether the compile cache is on (AOT packages live in it).
        env: where ``CXX`` and ``PATH`` are read (:func:`cxx_compiler`).
        cuda_home: the CUDA root to look for headers in; by default :func:`torch_cuda_home`.
        cache_dir: the compile cache's directory, where this host's :class:`BuildFailureMarker` is
            looked for (``auto``) and kept in the choice (``aoti``); None: no marker.
        gpu: the GPU's name in the marker's host (:func:`build_host`); by default the device's.
    """
    if requested == "inductor":
        return BackendChoice(requested, "inductor", "set")
    if requested == "aoti":
        if not compile_cache:
            return BackendChoice(requested, "inductor", "AOT packages need compile_cache: true")
        marker = None
        if cache_dir is not None:
            compiler = cxx_compiler(env)
            root = None if device.type != "cuda" else torch_cuda_home() if cuda_home is _UNSET else cuda_home
            marker = BuildFailureMarker.for_host(cache_dir, build_host(device, compiler, root, gpu=gpu))  # type: ignore[arg-type]
        return BackendChoice(requested, "aoti", "set", marker)
    if requested != "auto":
        raise ValueError(f"compile_backend must be one of {COMPILE_BACKENDS}, got {requested!r}")
    if device.type != "cuda":
        return BackendChoice(requested, "inductor", f"device {device.type}: AOT packages only on CUDA")
    if not compile_cache:
        return BackendChoice(requested, "inductor", "compile cache off")
    compiler = cxx_compiler(env)
    if compiler is None:
        wanted = f"CXX={env['CXX']!r} not found or not runnable" if "CXX" in env else "CXX unset, no g++ on PATH"
        return BackendChoice(requested, "inductor", f"no C++ compiler: {wanted}")
    root = torch_cuda_home() if cuda_home is _UNSET else cuda_home
    missing = cuda_headers(root)  # type: ignore[arg-type]
    name = Path(compiler).name
    if missing is not None:
        return BackendChoice(requested, "inductor", f"{name} found, but {missing}")
    if cache_dir is None:
        return BackendChoice(requested, "aoti", f"{name} at {compiler}, CUDA headers in {root}")
    marker = BuildFailureMarker.for_host(cache_dir, build_host(device, compiler, root, gpu=gpu))  # type: ignore[arg-type]
    return after_failures(BackendChoice(requested, "aoti", f"{name} at {compiler}, CUDA headers in {root}", marker))


def after_failures(choice: BackendChoice) -> BackendChoice:
    """``choice`` (``auto`` resolved to ``aoti``), or ``inductor`` when its host's marker says that a
    package build failed here: ``auto -> inductor (an AOT build failed on this host: <error>; remove
    <marker> to retry)``."""
    if choice.marker is None or choice.backend != "aoti" or choice.requested != "auto":
        return choice
    failed = choice.marker.read()
    if failed is None:
        return choice
    reason = f"an AOT build failed on this host: {failed.get('error')}; remove {choice.marker.path} to retry"
    return BackendChoice(choice.requested, "inductor", reason)
