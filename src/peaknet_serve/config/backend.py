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

An explicit ``aoti`` is kept on any device (the CPU tests and benchmarks build packages there); with
the compile cache off it becomes ``inductor``, since the packages would have nowhere to live.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from peaknet_serve.config.settings import COMPILE_BACKENDS

__all__ = [
    "COMPILE_BACKENDS",
    "CUDA_HEADERS",
    "BackendChoice",
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
class BackendChoice:
    """A resolved ``compile_backend``.

    Attributes:
        requested: the setting (``auto``, ``inductor`` or ``aoti``).
        backend: what compiles the network: ``inductor`` (``torch.compile``) or ``aoti``.
        reason: why, in a few words (``g++ at /usr/bin/g++, CUDA headers in /usr/local/cuda``).
    """

    requested: str
    backend: str
    reason: str

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
) -> BackendChoice:
    """``requested`` (``auto``, ``inductor`` or ``aoti``) resolved for a network compiled on ``device``
    (see the module docstring for the rules).

    Args:
        compile_cache: whether the compile cache is on (AOT packages live in it).
        env: where ``CXX`` and ``PATH`` are read (:func:`cxx_compiler`).
        cuda_home: the CUDA root to look for headers in; by default :func:`torch_cuda_home`.
    """
    if requested == "inductor":
        return BackendChoice(requested, "inductor", "set")
    if requested == "aoti":
        if not compile_cache:
            return BackendChoice(requested, "inductor", "AOT packages need compile_cache: true")
        return BackendChoice(requested, "aoti", "set")
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
    return BackendChoice(requested, "aoti", f"{name} at {compiler}, CUDA headers in {root}")
