"""Image build: a CUDA root holding the headers that AOTInductor's C++ wrapper includes, made from the
NVIDIA wheels, so that AOT packages (``compile_backend: auto``/``aoti``) build inside the container,
which has no CUDA toolkit.

    python docker/cuda_home.py /opt/venv/cuda [--nvcc-wheel 'nvidia-cuda-nvcc-cu12==12.8.*']

AOTInductor compiles its wrapper with ``-I<CUDA root>/include`` (torch's
``torch.utils.cpp_extension.CUDA_HOME``: $CUDA_HOME, ``nvcc``'s parent or /usr/local/cuda) and needs
``cuda.h``, ``cuda_runtime.h`` and the ``crt/`` headers that ``cuda_runtime_api.h`` includes. The
CUDA runtime wheel that torch's CUDA wheels install (``nvidia/cuda_runtime/include``, or
``nvidia/cu13/include`` for CUDA 13) has the first two; ``crt/`` belongs to the toolkit's nvcc
component, whose wheel is unpacked into a temporary directory (``pip install --no-deps --target``)
for its ``include/`` only (its ptxas and libnvvm, about 95 MB, are not kept). Both ``include/``
trees are copied into ``<target>/include``; the image sets ``CUDA_HOME`` to ``<target>``.

With a CPU build of torch nothing is made (exit status 0). Any other failure exits non-zero, so a
broken image is not built.
"""

from __future__ import annotations

import argparse
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

#: what AOTInductor's CUDA wrapper needs under ``include/`` (peaknet_serve.config.backend.CUDA_HEADERS,
#: which ``compile_backend: auto`` looks for; repeated here so that this build step does not depend
#: on the package's sources).
HEADERS = ("cuda.h", "cuda_runtime.h", "crt/host_defines.h")

#: wheel files that are no headers
SKIPPED = shutil.ignore_patterns("__init__.py", "__pycache__")


def site_directories() -> list[Path]:
    """Where this interpreter's packages live (the venv's site-packages first)."""
    places = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    unique: list[Path] = []
    for place in places:
        path = Path(place)
        if path not in unique and path.is_dir():
            unique.append(path)
    return unique


def include_with(header: str, roots: Iterable[Path]) -> Path | None:
    """The first ``<root>/nvidia/<component>/include`` holding ``header``, or None."""
    for root in roots:
        for include in sorted((root / "nvidia").glob("*/include")):
            if (include / header).is_file():
                return include
    return None


def nvcc_wheel(cuda_version: str) -> str:
    """The pip requirement of the nvcc component matching torch's CUDA ``major.minor``: the
    ``-cu12`` wheels for CUDA 12, the unsuffixed ones from CUDA 13 on."""
    major, minor = cuda_version.split(".")[:2]
    name = "nvidia-cuda-nvcc-cu12" if major == "12" else "nvidia-cuda-nvcc"
    return f"{name}=={major}.{minor}.*"


def assemble(target: Path, includes: Sequence[Path]) -> list[str]:
    """Copy every tree of ``includes`` (each over the ones before it) into ``target/include``; return
    the :data:`HEADERS` still missing there."""
    destination = target / "include"
    destination.mkdir(parents=True, exist_ok=True)
    for include in includes:
        shutil.copytree(include, destination, ignore=SKIPPED, dirs_exist_ok=True)
    return [header for header in HEADERS if not (destination / header).is_file()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path, help="the CUDA root to make (CUDA_HOME in the image)")
    parser.add_argument("--nvcc-wheel", help="pip requirement of the nvcc component (default: torch's CUDA)")
    args = parser.parse_args(argv)

    import torch  # noqa: PLC0415 - only to read which CUDA this torch is built for

    if torch.version.cuda is None:
        print(f"cuda_home: torch {torch.__version__} is a CPU build: no CUDA headers needed")
        return 0
    roots = site_directories()
    runtime = include_with("cuda_runtime.h", roots)
    if runtime is None or not (runtime / "cuda.h").is_file():
        print(f"cuda_home: no CUDA runtime headers (cuda.h, cuda_runtime.h) under {roots}", file=sys.stderr)
        return 1
    includes = [runtime]
    with tempfile.TemporaryDirectory() as scratch:
        if not (runtime / "crt" / "host_defines.h").is_file():
            requirement = args.nvcc_wheel or nvcc_wheel(torch.version.cuda)
            command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--target", scratch]
            subprocess.run([*command, requirement], check=True)
            crt = include_with("crt/host_defines.h", [Path(scratch)])
            if crt is None:
                print(f"cuda_home: {requirement} has no include/crt/host_defines.h", file=sys.stderr)
                return 1
            includes.append(crt)
        missing = assemble(args.target, includes)
    if missing:
        print(f"cuda_home: {args.target}/include lacks {missing}", file=sys.stderr)
        return 1
    sources = ", ".join(str(include) for include in includes)
    print(f"cuda_home: {args.target}/include from {sources} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
