"""AOTInductor packages built and loaded for real (AOTInductor's CPU backend and the host's C++ compiler).

A package build compiles C++ (about 12 s for the small conv net here on one core, 90 s for the tiny
PeakNet): the conv net carries the locking and keying tests, the tiny PeakNet the slow end-to-end one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from peaknet_serve.config.backend import CUDA_HEADERS, BackendChoice, resolve_compile_backend
from peaknet_serve.config.mode import ServingMode
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.device import aot_packages
from peaknet_serve.device.aot_packages import (
    AotPackages,
    PackagedForward,
    ScoreModule,
    cpu_vector_flags,
    load_package,
    open_package,
    serving_packages,
    weights_sha256,
)
from peaknet_serve.pipeline import build_finder

FIXTURE = Path(__file__).parents[1] / "fixtures" / "upstream" / "peaknet_tiny.yaml"
CPU = torch.device("cpu")
SHAPE = (2, 1, 16, 16)


def conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(4, 1, 1)).eval()


def packages_of(directory: Path, net: torch.nn.Module) -> AotPackages:
    return AotPackages.for_model(
        directory, "net", CPU, weights_sha256=weights_sha256(net), architecture="conv-gelu-conv"
    )


def nothing_to_tune() -> None:
    """The conv net has no depthwise convs."""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A cache directory holding the conv net's package for SHAPE (built once for this module)."""
    directory = tmp_path_factory.mktemp("aot") / "cache"
    runners, outcome, timings = packages_of(directory, conv_net()).prepare(
        conv_net(), [torch.zeros(SHAPE)], nothing_to_tune
    )
    assert outcome == "aot_built" and len(runners) == 1 and timings[0]["build_s"] > 0
    return directory


def copy_of(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "cache"))


def test_a_package_loads_answers_as_torch_compile_and_a_key_change_rebuilds(built, tmp_path):
    directory = copy_of(built, tmp_path)
    net = conv_net()
    runners, outcome, timings = packages_of(directory, net).prepare(net, [torch.zeros(SHAPE)], nothing_to_tune)
    assert outcome == "aot_hit" and timings[0]["build_s"] == 0 and timings[0]["load_s"] is not None
    x = torch.randn(SHAPE)
    compiled = torch.compile(net, dynamic=False)
    with torch.inference_mode():
        torch.testing.assert_close(PackagedForward(runners, fallback=compiled)(x), compiled(x))

    (package,) = directory.glob("*.pt2")
    described = json.loads(package.with_suffix(".json").read_text())
    assert described["input_shape"] == list(SHAPE) and described["torch"] == torch.__version__
    assert described["weights_sha256"] == weights_sha256(net) and described["backend"] == "aoti"

    with torch.no_grad():
        net[0].bias.add_(1.0)  # other weights: another key, so another package
    runners, outcome, _ = packages_of(directory, net).prepare(net, [torch.zeros(SHAPE)], nothing_to_tune)
    assert outcome == "aot_built" and len(list(directory.glob("*.pt2"))) == 2
    with torch.inference_mode():
        torch.testing.assert_close(next(iter(runners.values()))(x), net(x))


def test_the_direct_loader_and_torch_public_one_give_the_same_answers(built, tmp_path, monkeypatch):
    (package,) = copy_of(built, tmp_path).glob("*.pt2")
    x = torch.randn(SHAPE)
    with torch.inference_mode():
        direct = open_package(package, CPU)(x)
        public = torch._inductor.aoti_load_package(str(package))(x)
        torch.testing.assert_close(direct, public, rtol=0, atol=0)
        torch.testing.assert_close(direct, conv_net()(x))
        assert aot_packages.package_loader_classes() is not None  # this torch: the direct loader
        monkeypatch.setattr(aot_packages, "package_loader_classes", lambda: None)  # a torch without it
        torch.testing.assert_close(open_package(package, CPU)(x), direct, rtol=0, atol=0)


def test_cpu_vector_flags_come_from_the_first_flags_line():
    x86 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 amx_tile ht\nprocessor\t: 1\n"
    assert cpu_vector_flags(x86) == ["amx_tile", "avx", "avx2", "avx512_bf16", "avx512f", "fma", "sse4_2"]
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve i8mm bf16\n"
    assert cpu_vector_flags(arm) == ["asimd", "bf16", "i8mm", "sve"]
    assert cpu_vector_flags("processor\t: 0\n") == []


def test_packages_built_for_another_cpu_are_not_this_hosts(built):
    net = conv_net()
    here = packages_of(built, net)
    elsewhere = AotPackages.for_model(
        built, "net", CPU, weights_sha256=weights_sha256(net), architecture="conv-gelu-conv", cpu_vector_flags=["avx2"]
    )
    assert here.store.description["cpu_vector_flags"] == cpu_vector_flags()
    if cpu_vector_flags() != ["avx2"]:
        assert elsewhere.store.key != here.store.key


def test_a_corrupt_package_falls_back_to_torch_compile_with_a_warning(built, tmp_path, caplog):
    directory = copy_of(built, tmp_path)
    (package,) = directory.glob("*.pt2")
    package.write_bytes(b"not a package")
    net = conv_net()
    runners, outcome, _ = packages_of(directory, net).prepare(net, [torch.zeros(SHAPE)], nothing_to_tune)
    assert outcome == "aot_fallback" and runners == {}
    assert "not loadable" in caplog.text and "torch.compile runs" in caplog.text
    assert not package.exists()  # the next start builds it again
    compiled = torch.compile(net, dynamic=False)
    x = torch.randn(SHAPE)
    with torch.inference_mode():
        torch.testing.assert_close(PackagedForward(runners, fallback=compiled)(x), net(x))


def test_a_worker_that_finds_every_package_loads_with_the_lock_let_go(built, tmp_path, monkeypatch):
    directory = copy_of(built, tmp_path)
    packages = packages_of(directory, conv_net())
    lock_states = []

    def load_and_probe_the_lock(path, example):
        with open(packages.store.lock_path, "a+b") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock_states.append("held")
            else:
                lock_states.append("free")
                fcntl.flock(other, fcntl.LOCK_UN)
        return load_package(path, example)

    monkeypatch.setattr(aot_packages, "load_package", load_and_probe_the_lock)
    net = conv_net()
    runners, outcome, _ = packages.prepare(net, [torch.zeros(SHAPE)], nothing_to_tune)
    assert outcome == "aot_hit" and len(runners) == 1
    assert lock_states == ["free"]  # other workers load side by side


# Two workers started together: each prepares the same package in its own process.
WORKER = """
import json, sys, torch
from pathlib import Path
from tests.device.test_aot_packages import SHAPE, conv_net, nothing_to_tune, packages_of
net = conv_net()
runners, outcome, timings = packages_of(Path(sys.argv[1]), net).prepare(net, [torch.zeros(SHAPE)], nothing_to_tune)
print(json.dumps({"outcome": outcome, "build_s": timings[0]["build_s"]}))
"""


def test_workers_started_together_build_each_package_once(tmp_path):
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / "cache")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["outcome"] for r in results) == ["aot_built", "aot_hit"]
    assert sorted(r["build_s"] == 0 for r in results) == [False, True]


# The walk over the packages, with builds and loads that only write and read a file.
BUCKETS = [(1, 1, 16, 16), (2, 1, 16, 16), (3, 1, 16, 16)]


def fake_builds(monkeypatch, on_load: Callable[[int], None] = lambda calls: None) -> list[tuple[int, ...]]:
    """Make ``AotPackages.build`` write a placeholder file (and its ``.json``) and ``load_package``
    return the identity; returns the shapes built, in order. ``on_load(n)`` runs at the n-th load."""
    built: list[tuple[int, ...]] = []
    loads = [0]

    def build(self, module, example, path):
        built.append(tuple(example.shape))
        path.write_bytes(b"package")
        path.with_suffix(".json").write_text(json.dumps({"builder_pid": os.getpid()}))
        return True

    def load(path, example):
        assert path.read_bytes() == b"package"
        loads[0] += 1
        on_load(loads[0])
        return (lambda x: x), {"load_s": 0.0, "first_call_s": 0.0}

    monkeypatch.setattr(AotPackages, "build", build)
    monkeypatch.setattr(aot_packages, "load_package", load)
    return built


def bucket_paths(packages: AotPackages) -> list[Path]:
    return [packages.package_path(torch.zeros(shape), {}) for shape in BUCKETS]


def test_a_worker_builds_the_packages_nobody_builds_and_then_waits_for_the_others(tmp_path, monkeypatch):
    packages = packages_of(tmp_path, conv_net())
    paths = bucket_paths(packages)
    other = packages.lock_of(paths[1])  # another worker is building the 2-panel package
    assert other.acquire(wait=False)

    def other_worker_finishes(loads: int) -> None:
        if loads == 2:  # this worker has loaded what it built: now the other one saves and lets go
            paths[1].write_bytes(b"package")
            paths[1].with_suffix(".json").write_text(json.dumps({"builder_pid": 4242}))
            other.release()

    built = fake_builds(monkeypatch, other_worker_finishes)
    net = conv_net()
    runners, outcome, records = packages.prepare(net, [torch.zeros(s) for s in BUCKETS], nothing_to_tune)
    assert built == [BUCKETS[0], BUCKETS[2]]  # the free ones, in order; never the one locked by another
    assert outcome == "aot_built" and len(runners) == 3
    assert [r["source"] for r in records] == ["built", "waited", "built"]
    assert [r["built_by"] for r in records] == [os.getpid(), 4242, os.getpid()]
    assert records[1]["build_s"] == 0.0 and records[1]["wait_s"] >= 0.0
    assert [r["shape"] for r in records] == [list(s) for s in BUCKETS]

    built.clear()  # a restart finds them all
    runners, outcome, records = packages.prepare(net, [torch.zeros(s) for s in BUCKETS], nothing_to_tune)
    assert built == [] and outcome == "aot_hit" and [r["source"] for r in records] == ["found"] * 3
    assert [r["built_by"] for r in records] == [os.getpid(), 4242, os.getpid()]


def test_a_worker_builds_a_package_whose_builder_gave_up_and_removes_what_it_left(tmp_path, monkeypatch):
    packages = packages_of(tmp_path, conv_net())
    paths = bucket_paths(packages)
    left = paths[0].parent / f".{paths[0].stem}.x1y2.pt2"  # a temporary of a build that died
    left.write_bytes(b"part")
    other = packages.lock_of(paths[0])
    assert other.acquire(wait=False)

    def other_worker_stops(loads: int) -> None:
        if loads == 2:  # it lets the lock go without a package (a failed build; a death lets it go too)
            other.release()

    built = fake_builds(monkeypatch, other_worker_stops)
    runners, outcome, records = packages.prepare(conv_net(), [torch.zeros(s) for s in BUCKETS], nothing_to_tune)
    assert built == [BUCKETS[1], BUCKETS[2], BUCKETS[0]]
    assert outcome == "aot_built" and len(runners) == 3
    assert [r["source"] for r in records] == ["built"] * 3
    assert records[0]["wait_s"] >= 0.0 and not left.exists()


def test_a_worker_alone_builds_every_package_in_order(tmp_path, monkeypatch):
    built = fake_builds(monkeypatch)
    packages = packages_of(tmp_path, conv_net())
    runners, outcome, records = packages.prepare(conv_net(), [torch.zeros(s) for s in BUCKETS], nothing_to_tune)
    assert built == BUCKETS and outcome == "aot_built" and len(runners) == 3
    assert all(r["wait_s"] == 0.0 for r in records)
    for path in bucket_paths(packages):  # every lock let go
        lock = packages.lock_of(path)
        assert lock.acquire(wait=False)
        lock.release()


# A build that fails where the tools are found (a link error): the host's marker, written and read.
CUDA = torch.device("cuda", 0)


def auto_on_a_cuda_host(tmp_path: Path, requested: str = "auto") -> BackendChoice:
    """``requested`` resolved as on a CUDA host with a (fake) g++ and the CUDA headers, the compile
    cache in ``tmp_path / "cache"``."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    gxx = tmp_path / "bin" / "g++"
    gxx.write_text("#!/bin/sh\necho 'g++ (fake) 12.2.0'\n")
    gxx.chmod(0o755)
    for header in CUDA_HEADERS:
        (tmp_path / "cuda" / "include" / header).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cuda" / "include" / header).touch()
    return resolve_compile_backend(
        requested,
        CUDA,
        env={"PATH": str(tmp_path / "bin")},
        cuda_home=str(tmp_path / "cuda"),
        cache_dir=tmp_path / "cache",
        gpu="NVIDIA H200",
    )


def failing_compiles(monkeypatch) -> list[str]:
    """Make AOTInductor's compile step fail as a link error does (after a real export); returns the
    package paths it was asked for."""
    asked: list[str] = []

    def compile_and_package(exported, package_path):
        asked.append(package_path)
        raise RuntimeError("/usr/bin/ld: cannot find -lcuda: No such file or directory\ncollect2: error")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_and_package)
    return asked


def test_a_failed_build_under_auto_stops_the_builds_and_makes_auto_inductor(tmp_path, monkeypatch, caplog):
    asked = failing_compiles(monkeypatch)
    choice = auto_on_a_cuda_host(tmp_path)
    assert choice.backend == "aoti" and not choice.marker.path.exists()
    net = conv_net()
    packages = AotPackages.for_model(
        tmp_path / "cache", "net", CPU, marker=choice.marker, stop_after_failure=True,
        weights_sha256=weights_sha256(net), architecture="conv-gelu-conv",
    )  # fmt: skip
    runners, outcome, records = packages.prepare(net, [torch.zeros(s) for s in BUCKETS], nothing_to_tune)
    assert outcome == "aot_fallback" and runners == {} and len(asked) == 1  # no second try at this start
    assert [r["source"] for r in records] == ["built", "skipped", "skipped"]
    assert "torch.compile runs it" in caplog.text and not list((tmp_path / "cache").glob(".*"))
    recorded = json.loads(choice.marker.path.read_text())
    assert recorded["error"] == "RuntimeError: /usr/bin/ld: cannot find -lcuda: No such file or directory"
    assert recorded["host"] == choice.marker.host and recorded["pid"] == os.getpid()

    after = auto_on_a_cuda_host(tmp_path)  # the next start
    assert after.backend == "inductor" and after.describe() == (
        f"auto -> inductor (an AOT build failed on this host: {recorded['error']}; "
        f"remove {choice.marker.path} to retry)"
    )
    explicit = auto_on_a_cuda_host(tmp_path, "aoti")  # ignores the marker and tries every package
    assert explicit.backend == "aoti"
    again = AotPackages.for_model(
        tmp_path / "cache", "net", CPU, marker=explicit.marker,
        weights_sha256=weights_sha256(net), architecture="conv-gelu-conv",
    )  # fmt: skip
    asked.clear()
    choice.marker.path.unlink()
    _, outcome, records = again.prepare(net, [torch.zeros(s) for s in BUCKETS], nothing_to_tune)
    assert outcome == "aot_fallback" and len(asked) == 3 and [r["source"] for r in records] == ["built"] * 3
    assert choice.marker.read() is not None  # written again

    def compiles(exported, package_path):
        Path(package_path).write_bytes(b"package")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compiles)
    monkeypatch.setattr(aot_packages, "load_package", lambda path, x: ((lambda y: y), {"load_s": 0.0}))
    _, outcome, _ = again.prepare(net, [torch.zeros(BUCKETS[0])], nothing_to_tune)
    assert outcome == "aot_built" and not choice.marker.path.exists()  # a build worked: the marker goes
    assert auto_on_a_cuda_host(tmp_path).backend == "aoti"


def test_a_worker_neither_builds_nor_waits_once_another_worker_recorded_a_failure(tmp_path, monkeypatch):
    choice = auto_on_a_cuda_host(tmp_path)
    packages = AotPackages.for_model(
        tmp_path / "cache", "net", CPU, marker=choice.marker, stop_after_failure=True,
        weights_sha256=weights_sha256(conv_net()), architecture="conv-gelu-conv",
    )  # fmt: skip
    paths = bucket_paths(packages)
    paths[0].parent.mkdir(parents=True)
    paths[0].write_bytes(b"package")  # built before the failure
    other = packages.lock_of(paths[1])  # another worker is building the 2-panel package ...
    assert other.acquire(wait=False)
    choice.marker.write("RuntimeError: link failed")  # ... and a build of its failed
    built = fake_builds(monkeypatch)
    safety = threading.Timer(20.0, other.release)  # a wait for the lock would end here
    safety.start()
    try:
        started = time.perf_counter()
        runners, outcome, records = packages.prepare(conv_net(), [torch.zeros(s) for s in BUCKETS], nothing_to_tune)
        waited = time.perf_counter() - started
    finally:
        safety.cancel()
        other.release()
    assert built == [] and waited < 10.0
    assert outcome == "aot_fallback" and len(runners) == 1  # the package on disk is served
    assert [r["source"] for r in records] == ["found", "skipped", "skipped"]


@pytest.mark.slow
def test_buckets_without_a_package_compile_through_the_compile_cache(tmp_path, monkeypatch, caplog):
    """A start whose package build failed: its bucket runs under torch.compile, whose artefacts the
    compile cache saves (for the next start, which ``auto`` sends to ``inductor``)."""
    asked = failing_compiles(monkeypatch)
    settings = HandlerSettings.from_mapping(
        {
            "config": str(FIXTURE),
            "max_batch_panels": 1,
            "warmup_shapes": [[1, 32, 32]],
            "compile_backend": "aoti",
            "compile_cache_dir": str(tmp_path),
            "depthwise_padding": False,
        },
        env={},
    )
    with caplog.at_level(logging.INFO):
        pipeline = build_finder(settings, CPU, mode=ServingMode(compile="default"))
    assert pipeline.compile_cache == "aot_fallback" and len(asked) == 1
    assert [r["source"] for r in pipeline.packages] == ["built"]
    assert "torch.compile runs them, compile cache built" in caplog.text
    (artefacts,) = tmp_path.glob("*.artefacts")
    assert artefacts.stat().st_size > 0 and list(tmp_path.glob("aot-build-failed-*.json"))
    x = pipeline.finder.network_example(1, 32, 32) + torch.randn(pipeline.finder.network_example(1, 32, 32).shape)
    with torch.inference_mode():
        torch.testing.assert_close(pipeline.finder.forward(x), pipeline.model.forward_peak_score(x))


def worker_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "TORCHINDUCTOR_COMPILE_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


# A worker that, once every worker has started (a file each in the barrier folder), prepares the
# BUCKETS' packages of the conv net and saves its packages' answers to one input per bucket.
BUILDER = """
import json, logging, os, sys, time, torch
from pathlib import Path
from tests.device.test_aot_packages import BUCKETS, conv_net, nothing_to_tune, packages_of
logging.basicConfig(level=logging.INFO, format="%(message)s")
directory, barrier, workers, out = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
(barrier / str(os.getpid())).touch()
deadline = time.monotonic() + 300
while len(list(barrier.iterdir())) < workers and time.monotonic() < deadline:
    time.sleep(0.01)
net = conv_net()
examples = [torch.zeros(shape) for shape in BUCKETS]
runners, outcome, records = packages_of(directory, net).prepare(net, examples, nothing_to_tune)
torch.manual_seed(1)
with torch.inference_mode():
    outputs = [runners[(tuple(x.shape), tuple(x.stride()))](torch.randn(x.shape)) for x in examples]
torch.save(outputs, out)
print(json.dumps({"pid": os.getpid(), "outcome": outcome, "records": records}))
"""


@pytest.mark.slow
def test_workers_started_together_build_different_packages_side_by_side(tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    cache = tmp_path / "cache"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", BUILDER, str(cache), str(barrier), "2", str(tmp_path / f"out{n}.pt")],
            env=worker_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    results, logged = [], set()
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
        for shape, pid in re.findall(r"AOT package built for (\(.*?\)) in [\d.]+ s by worker pid (\d+)", err):
            logged.add((shape, int(pid)))

    builders = {}  # bucket -> pids that built it
    for result in results:
        assert result["outcome"] == "aot_built"  # each built some
        for bucket, record in zip(BUCKETS, result["records"], strict=True):
            assert record["load_s"] is not None and record["first_call_s"] is not None
            if record["source"] == "built":
                builders.setdefault(bucket, []).append(result["pid"])
    assert sorted(builders) == sorted(BUCKETS) and all(len(pids) == 1 for pids in builders.values())
    assert {(str(bucket), pids[0]) for bucket, pids in builders.items()} == logged
    for result in results:  # the other worker's packages: waited for, or found, and its builder named
        for bucket, record in zip(BUCKETS, result["records"], strict=True):
            if record["source"] != "built":
                assert record["built_by"] == builders[bucket][0] != result["pid"]
    assert len(list(cache.glob("*.pt2"))) == 3 and not list(cache.glob(".*"))

    first, second = (torch.load(tmp_path / f"out{n}.pt") for n in range(2))
    net = conv_net()
    torch.manual_seed(1)
    with torch.inference_mode():
        expected = [net(torch.randn(shape)) for shape in BUCKETS]
    for a, b, e in zip(first, second, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same packages
        torch.testing.assert_close(a, e)


@pytest.mark.slow
def test_a_builder_killed_mid_build_leaves_no_lock_that_blocks_the_next_worker(tmp_path, caplog):
    cache = tmp_path / "cache"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    packages = packages_of(cache, conv_net())
    path = bucket_paths(packages)[0]
    victim = subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(cache), str(barrier), "1", str(tmp_path / "out.pt")],
        env=worker_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its compiler processes too, to end them after the test
    )
    try:
        deadline = time.monotonic() + 300
        while not list(cache.glob(f".{path.stem}.*.pt2")):  # exported; AOTInductor compiling
            assert victim.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert not packages.lock_of(path).acquire(wait=False)  # it holds the package's lock
        os.kill(victim.pid, signal.SIGKILL)  # the worker alone, as a worker dies
        victim.wait(timeout=60)
        lock = packages.lock_of(path)
        assert lock.acquire(wait=False)  # free at once, its compiler's processes or not
        lock.release()
        assert not path.exists() and packages.lock_of(path).path.exists()

        net = conv_net()
        with caplog.at_level(logging.INFO, logger="peaknet_serve.device.aot_packages"):
            runners, outcome, records = packages.prepare(net, [torch.zeros(BUCKETS[0])], nothing_to_tune)
        assert outcome == "aot_built" and records[0]["source"] == "built" and records[0]["wait_s"] == 0.0
        assert f"by worker pid {os.getpid()}" in caplog.text
        assert not list(cache.glob(".*"))  # the killed build's temporary removed
        x = torch.randn(BUCKETS[0])
        with torch.inference_mode():
            torch.testing.assert_close(next(iter(runners.values()))(x), net(x))
    finally:
        try:
            os.killpg(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class NormNet(torch.nn.Module):
    """conv -> group norm -> conv with PeakNet's peak-score entry point: autocast keeps its norm in float32."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 4)
        self.head = torch.nn.Conv2d(4, 1, 1)

    def forward_peak_score(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)))


def test_a_package_exported_under_autocast_answers_as_autocast_does(tmp_path):
    module = ScoreModule(NormNet().eval(), torch.bfloat16, "cpu")
    packages = AotPackages.for_model(tmp_path, "norm", CPU, weights_sha256=weights_sha256(module), autocast="bf16")
    runners, outcome, _ = packages.prepare(module, [torch.zeros(SHAPE)], nothing_to_tune)
    assert outcome == "aot_built"
    x = torch.randn(SHAPE)
    with torch.inference_mode():
        packaged, expected = next(iter(runners.values()))(x), module(x)
    assert packaged.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(packaged, expected)


def test_packages_only_for_a_compiled_network_with_the_aoti_backend(tmp_path):
    from peaknet_serve.checkpoint import load_peaknet  # noqa: PLC0415

    model = load_peaknet(FIXTURE)
    compiled = ServingMode(compile="default")
    aoti = HandlerSettings.from_mapping({"compile_backend": "aoti", "compile_cache_dir": str(tmp_path)}, env={})
    assert serving_packages(aoti, ServingMode(), model, CPU) is None  # eager
    assert serving_packages(HandlerSettings(compile_cache_dir=str(tmp_path)), compiled, model, CPU) is None
    assert serving_packages(HandlerSettings(compile_backend="aoti", compile_cache=False), compiled, model, CPU) is None
    packages = serving_packages(aoti, compiled, model, CPU)
    assert packages is not None and packages.store.directory == tmp_path
    assert packages.store.description["weights_sha256"] == weights_sha256(model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert serving_packages(aoti, compiled, model, CPU).store.key != packages.store.key


def test_packages_follow_the_resolved_backend(tmp_path, caplog):
    """``auto`` is inductor on the CPU; a backend resolved to ``aoti`` (as ``auto`` is on CUDA with a
    compiler and CUDA headers) gets packages, one resolved to ``inductor`` none."""
    from peaknet_serve.checkpoint import load_peaknet  # noqa: PLC0415

    model = load_peaknet(FIXTURE)
    compiled = ServingMode(compile="default")
    auto = HandlerSettings.from_mapping({"compile_cache_dir": str(tmp_path)}, env={})
    assert auto.compile_backend == "auto" and serving_packages(auto, compiled, model, CPU) is None
    resolved = BackendChoice("auto", "aoti", "g++ at /usr/bin/g++, CUDA headers in /usr/local/cuda")
    assert serving_packages(auto, compiled, model, CPU, resolved).store.directory == tmp_path
    assert serving_packages(auto, compiled, model, CPU, BackendChoice("aoti", "inductor", "off")) is None
    off = HandlerSettings.from_mapping({"compile_cache_dir": str(tmp_path), "compile_cache": False}, env={})
    assert serving_packages(off, compiled, model, CPU, resolved) is None

    settings = {"config": str(FIXTURE), "warmup": False, "depthwise_padding": False, "compile_cache": False}
    with caplog.at_level(logging.INFO, logger="peaknet_serve.pipeline"):
        pipeline = build_finder(HandlerSettings.from_mapping(settings, env={}), CPU, mode=compiled)
    assert pipeline.backend == BackendChoice("auto", "inductor", "device cpu: AOT packages only on CUDA")
    assert "compile backend: auto -> inductor (device cpu: AOT packages only on CUDA)" in caplog.text
    assert build_finder(HandlerSettings.from_mapping(settings, env={}), CPU).backend is None  # eager


@pytest.mark.slow
def test_served_tiny_peaknet_from_packages_finds_what_torch_compile_finds(tmp_path):
    """build_finder twice with ``compile_backend: aoti`` (builds, then loads) against torch.compile."""
    settings = {
        "config": str(FIXTURE),
        "max_batch_panels": 2,
        "warmup_shapes": [[2, 64, 96]],
        "compile": True,
        "compile_cache_dir": str(tmp_path),
        "depthwise_padding": False,
    }
    mode = ServingMode(compile="default")
    aoti = HandlerSettings.from_mapping({**settings, "compile_backend": "aoti"}, env={})
    first = build_finder(aoti, CPU, mode=mode)
    again = build_finder(aoti, CPU, mode=mode)
    assert (first.compile_cache, again.compile_cache) == ("aot_built", "aot_hit")
    (package,) = tmp_path.glob("*.pt2")
    assert json.loads(package.with_suffix(".json").read_text())["input_shape"] == [2, 1, 64, 96]
    compiled = build_finder(HandlerSettings.from_mapping(settings, env={}), CPU, mode=mode)

    rng = np.random.default_rng(0)
    panels = torch.from_numpy(rng.poisson(5.0, (2, 64, 96)).astype(np.uint16))
    x = again.finder.network_example(2, 64, 96) + torch.randn(2, 1, 64, 96)
    with torch.inference_mode():
        torch.testing.assert_close(again.finder.forward(x), compiled.finder.forward(x))
        found, expected = again.finder.find(panels).table, compiled.finder.find(panels).table
    for name in ("image_index", "ss", "fs", "npix"):
        assert torch.equal(getattr(found, name), getattr(expected, name)), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_says_aoti_on_this_gpu_host_only_where_a_package_builds(tmp_path):
    """``auto`` on this GPU host: where it resolves to ``aoti`` (a C++ compiler and the CUDA headers
    found) a package of the conv net builds, loads and answers as the net does on the GPU."""
    cuda = torch.device("cuda", torch.cuda.current_device())
    choice = resolve_compile_backend("auto", cuda)
    if choice.backend != "aoti":
        pytest.skip(f"this host: {choice.describe()}")
    net = conv_net().to(cuda)
    packages = AotPackages.for_model(
        tmp_path, "net", cuda, weights_sha256=weights_sha256(net), architecture="conv-gelu-conv"
    )
    runners, outcome, records = packages.prepare(net, [torch.zeros(SHAPE, device=cuda)], nothing_to_tune)
    assert outcome == "aot_built", f"{choice.describe()}, yet the build failed: {records}"
    x = torch.randn(SHAPE, device=cuda)
    with torch.inference_mode():
        torch.testing.assert_close(next(iter(runners.values()))(x), net(x))
