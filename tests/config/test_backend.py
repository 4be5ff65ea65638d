"""compile_backend resolved against the device, the compile cache and the host's build tools (CPU only:
the CUDA cases take a CUDA device object, which needs no GPU, and fake compilers and CUDA roots)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from peaknet_serve.config.backend import (
    CUDA_HEADERS,
    BackendChoice,
    build_host,
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


# This host's record of a failed AOT build (BuildFailureMarker), as auto and aoti read it.
H200 = "NVIDIA H200"


def auto_on_cuda(tmp_path: Path, env: dict[str, str], **kwargs) -> BackendChoice:
    """``auto`` on a CUDA device with ``env``'s tools, a CUDA root with every header and the compile
    cache in ``tmp_path / "cache"``."""
    kwargs = {"cuda_home": str(cuda_root(tmp_path)), "cache_dir": tmp_path / "cache", "gpu": H200, **kwargs}
    return resolve_compile_backend("auto", CUDA, env=env, **kwargs)


def test_auto_takes_inductor_on_a_host_whose_aot_build_failed_until_the_marker_goes(tmp_path, with_gxx):
    first = auto_on_cuda(tmp_path, with_gxx)
    assert first.backend == "aoti" and first.marker is not None and first.marker.read() is None
    assert first.marker.path.parent == tmp_path / "cache" and not first.marker.path.exists()
    assert first.marker.host == build_host(CUDA, str(tmp_path / "bin" / "g++"), cuda_root(tmp_path), gpu=H200)
    assert first.marker.host["compiler_version"] == "g++ (fake) 12.2.0" and first.marker.host["gpu"] == H200

    first.marker.write("CppCompileError: C++ compile error\n/usr/bin/ld: cannot find -lcuda")
    recorded = json.loads(first.marker.path.read_text())
    assert recorded["error"] == "CppCompileError: C++ compile error" and recorded["host"] == first.marker.host
    again = auto_on_cuda(tmp_path, with_gxx)
    assert again.backend == "inductor" and again.marker is None
    assert again.describe() == (
        "auto -> inductor (an AOT build failed on this host: CppCompileError: C++ compile error; "
        f"remove {first.marker.path} to retry)"
    )
    explicit = resolve_compile_backend(
        "aoti", CUDA, env=with_gxx, cuda_home=str(cuda_root(tmp_path)), cache_dir=tmp_path / "cache", gpu=H200
    )
    assert explicit.describe() == "aoti (set)" and explicit.marker.path == first.marker.path  # tries anyway

    first.marker.clear()  # what a successful build does
    assert auto_on_cuda(tmp_path, with_gxx).backend == "aoti"
    first.marker.clear()  # none left: nothing to do


def test_a_marker_is_this_hosts_only(tmp_path, with_gxx):
    auto_on_cuda(tmp_path, with_gxx).marker.write("RuntimeError: link failed")
    assert auto_on_cuda(tmp_path, with_gxx).backend == "inductor"
    assert auto_on_cuda(tmp_path, with_gxx, gpu="NVIDIA A100-SXM4-80GB").backend == "aoti"  # another GPU
    other_root = cuda_root(tmp_path / "other")
    assert auto_on_cuda(tmp_path, with_gxx, cuda_home=str(other_root)).backend == "aoti"  # another CUDA root
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "g++").write_text("#!/bin/sh\necho 'g++ (fake) 13.1.0'\n")
    (newer / "g++").chmod(0o755)
    assert auto_on_cuda(tmp_path, {"PATH": str(newer)}).backend == "aoti"  # another compiler version
    # the device and the tools decide first: a marker changes nothing where auto is inductor anyway
    on_cpu = resolve_compile_backend("auto", CPU, env=with_gxx, cache_dir=tmp_path / "cache")
    assert on_cpu.reason == "device cpu: AOT packages only on CUDA"
    assert auto_on_cuda(tmp_path, with_gxx, cuda_home=None).reason.startswith("g++ found, but no CUDA root")
    assert auto_on_cuda(tmp_path, with_gxx, cache_dir=None).backend == "aoti"  # no directory: no marker


def test_an_unreadable_or_foreign_marker_is_ignored(tmp_path, with_gxx, caplog):
    marker = auto_on_cuda(tmp_path, with_gxx).marker
    marker.path.parent.mkdir(parents=True)
    marker.path.write_text("{not json")
    assert auto_on_cuda(tmp_path, with_gxx).backend == "aoti" and "marker" in caplog.text
    marker.path.write_text(json.dumps({"host": {**marker.host, "gpu": "other"}, "error": "x"}))
    assert marker.read() is None and auto_on_cuda(tmp_path, with_gxx).backend == "aoti"
    marker.write("")  # an error without a message
    assert marker.read()["error"] == "" and auto_on_cuda(tmp_path, with_gxx).backend == "inductor"


def test_a_marker_that_cannot_be_written_is_a_warning(tmp_path, with_gxx, caplog):
    (tmp_path / "cache").write_text("a file where the directory should be")
    marker = auto_on_cuda(tmp_path, with_gxx).marker
    marker.write("RuntimeError: link failed")
    assert "not written" in caplog.text and marker.read() is None
