"""AOTInductor packages built and loaded for real (AOTInductor's CPU backend and the host's C++ compiler).

A package build compiles C++ (about 12 s for the small conv net here on one core, 90 s for the tiny
PeakNet): the conv net carries the locking and keying tests, the tiny PeakNet the slow end-to-end one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

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
