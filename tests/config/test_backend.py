"""compile_backend resolved against the device, the compile cache and the host's build tools (CPU only:
the CUDA cases take a CUDA device object, which needs no GPU, and fake compilers and CUDA roots)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from peaknet_serve.config.backend import (
    CUDA_HEADERS,
    BackendChoice,
    cuda_headers,
    cxx_compiler,
    resolve_compile_backend,
)

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


def fake_program(directory: Path, name: str, exit_code: int = 0) -> Path:
    """An executable ``name`` in ``directory`` that prints a version line and exits with ``exit_code``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{name} (fake) 12.2.0'\nexit {exit_code}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def cuda_root(tmp_path: Path, headers=CUDA_HEADERS) -> Path:
    root = tmp_path / "cuda"
    for header in headers:
        (root / "include" / header).parent.mkdir(parents=True, exist_ok=True)
        (root / "include" / header).write_text("/* header */\n")
    return root


@pytest.fixture
def with_gxx(tmp_path) -> dict[str, str]:
    """An environment whose PATH holds only a (fake) g++, CXX unset."""
    fake_program(tmp_path / "bin", "g++")
    return {"PATH": str(tmp_path / "bin")}


def test_auto_on_cuda_with_a_compiler_and_cuda_headers_is_aoti(tmp_path, with_gxx):
    root = cuda_root(tmp_path)
    choice = resolve_compile_backend("auto", CUDA, env=with_gxx, cuda_home=str(root))
    assert choice.backend == "aoti" and choice.requested == "auto"
    assert choice.describe() == f"auto -> aoti (g++ at {tmp_path / 'bin' / 'g++'}, CUDA headers in {root})"


def test_auto_on_cuda_without_a_compiler_is_inductor(tmp_path):
    root = cuda_root(tmp_path)
    (tmp_path / "empty").mkdir()
    fake_program(tmp_path / "other", "c++")  # AOTInductor does not try c++, so neither does auto
    env = {"PATH": f"{tmp_path / 'empty'}{os.pathsep}{tmp_path / 'other'}"}
    choice = resolve_compile_backend("auto", CUDA, env=env, cuda_home=str(root))
    assert choice == BackendChoice("auto", "inductor", "no C++ compiler: CXX unset, no g++ on PATH")
    assert choice.describe() == "auto -> inductor (no C++ compiler: CXX unset, no g++ on PATH)"


def test_auto_takes_cxx_first_as_aotinductor_does(tmp_path, with_gxx):
    root = cuda_root(tmp_path)
    clang = fake_program(tmp_path / "llvm", "clang++")
    choice = resolve_compile_backend("auto", CUDA, env={**with_gxx, "CXX": str(clang)}, cuda_home=str(root))
    assert choice.backend == "aoti" and choice.reason.startswith(f"clang++ at {clang}")
    missing = resolve_compile_backend("auto", CUDA, env={**with_gxx, "CXX": "no-such-cxx"}, cuda_home=str(root))
    assert missing.backend == "inductor"  # g++ on PATH does not stand in for a CXX that is not there
    assert missing.reason == "no C++ compiler: CXX='no-such-cxx' not found or not runnable"


def test_a_compiler_that_does_not_run_is_none(tmp_path):
    fake_program(tmp_path / "bin", "g++", exit_code=1)
    assert cxx_compiler({"PATH": str(tmp_path / "bin")}) is None
    fake_program(tmp_path / "good", "g++")
    assert cxx_compiler({"PATH": str(tmp_path / "good")}) == str(tmp_path / "good" / "g++")
    assert cxx_compiler({"PATH": str(tmp_path / "good"), "CXX": ""}) is None


def test_auto_on_cuda_without_cuda_headers_is_inductor(tmp_path, with_gxx):
    no_root = resolve_compile_backend("auto", CUDA, env=with_gxx, cuda_home=None)
    assert no_root.backend == "inductor" and "no CUDA root" in no_root.reason
    runtime_only = cuda_root(tmp_path, headers=("cuda.h", "cuda_runtime.h"))  # a runtime wheel's headers
    choice = resolve_compile_backend("auto", CUDA, env=with_gxx, cuda_home=str(runtime_only))
    assert choice.backend == "inductor"
    assert choice.reason == f"g++ found, but no crt/host_defines.h in {runtime_only / 'include'}"
    assert cuda_headers(cuda_root(tmp_path)) is None


def test_auto_on_the_cpu_is_inductor_whatever_the_host_has(tmp_path, with_gxx):
    root = cuda_root(tmp_path)
    choice = resolve_compile_backend("auto", CPU, env=with_gxx, cuda_home=str(root))
    assert choice == BackendChoice("auto", "inductor", "device cpu: AOT packages only on CUDA")
    assert resolve_compile_backend("auto", CPU).backend == "inductor"  # this host's real tools


def test_auto_with_the_compile_cache_off_is_inductor(tmp_path, with_gxx):
    choice = resolve_compile_backend(
        "auto", CUDA, compile_cache=False, env=with_gxx, cuda_home=str(cuda_root(tmp_path))
    )
    assert choice.backend == "inductor" and choice.reason == "compile cache off"


def test_explicit_backends_are_kept_on_any_device(tmp_path):
    empty = {"PATH": str(tmp_path)}
    for device in (CPU, CUDA):
        assert resolve_compile_backend("inductor", device, env=empty).describe() == "inductor (set)"
        assert resolve_compile_backend("aoti", device, env=empty, cuda_home=None).describe() == "aoti (set)"
    off = resolve_compile_backend("aoti", CUDA, compile_cache=False)
    assert off.describe() == "aoti -> inductor (AOT packages need compile_cache: true)"
    with pytest.raises(ValueError, match="compile_backend"):
        resolve_compile_backend("tensorrt", CPU)
