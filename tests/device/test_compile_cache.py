"""CompileCache with real torch.compile (Inductor's CPU backend) in separate worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.config.mode import ServingMode
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.device.compile_cache import (
    CompileCache,
    FileLock,
    apply_padding,
    cache_key,
    default_cache_dir,
    padding_of,
    serving_cache,
)
from peaknet_serve.model.depthwise import PaddableDepthwiseConv2d

FIXTURE = Path(__file__).parents[1] / "fixtures" / "upstream" / "peaknet_tiny.yaml"

# A worker's start-up in miniature: compile a small conv net inside cache.compiling(), run it, report whether the cache was hit and what Inductor's FX-graph cache counted.
WORKER = """
import json, sys, torch
from pathlib import Path
from torch._dynamo.utils import counters
from peaknet_serve.device.compile_cache import CompileCache
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(4, 1, 1)).eval()
cache = CompileCache.for_model(Path(sys.argv[1]), "tiny", torch.device("cpu"), architecture="conv-gelu-conv")
forward = torch.compile(net, dynamic=False)
with cache.compiling() as hit, torch.inference_mode():
    forward(torch.randn(2, 1, 16, 16))
print(json.dumps({"hit": hit, "fx_hit": counters["inductor"]["fxgraph_cache_hit"],
                  "fx_miss": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def start_worker(cache_dir: Path, scratch: Path) -> subprocess.Popen:
    """A worker process with its own (empty) Inductor and Triton caches: only ``cache_dir`` is shared."""
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor"),
        "TRITON_CACHE_DIR": str(scratch / "triton"),
        "TORCHINDUCTOR_COMPILE_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(cache_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_workers_started_together_compile_once_and_a_restart_compiles_nothing(tmp_path):
    cache_dir = tmp_path / "cache"
    together = [start_worker(cache_dir, tmp_path / f"worker{i}") for i in range(2)]
    first, second = sorted((result(p) for p in together), key=lambda r: r["hit"])
    assert not first["hit"] and first["fx_miss"] == 1  # one worker built the graph ...
    assert second["hit"] and second["fx_hit"] == 1 and second["fx_miss"] == 0  # ... the other loaded it
    files = sorted(p.name for p in cache_dir.iterdir())
    assert [f for f in files if f.endswith(".artefacts")] and [f for f in files if f.endswith(".json")]
    description = json.loads(next(cache_dir.glob("*.json")).read_text())
    assert description["architecture"] == "conv-gelu-conv" and description["torch"] == torch.__version__

    restarted = result(start_worker(cache_dir, tmp_path / "restart"))
    assert restarted == {"hit": True, "fx_hit": 1, "fx_miss": 0}


def test_unreadable_artefacts_are_ignored(tmp_path, caplog):
    cache = CompileCache.for_model(tmp_path, "m", torch.device("cpu"), architecture="x")
    cache.artefacts_path.write_bytes(b"not torch's format")
    assert cache.load() is False
    assert "not loadable" in caplog.text
    with cache.compiling() as hit:  # and a start-up goes on without it
        assert hit is False


def test_key_follows_what_the_compiled_code_depends_on(tmp_path):
    cpu = torch.device("cpu")
    one = CompileCache.for_model(tmp_path, "m", cpu, architecture={"depths": [3, 3]}, buckets=[16, 64])
    same = CompileCache.for_model(tmp_path, "m", cpu, buckets=[16, 64], architecture={"depths": [3, 3]})
    other = CompileCache.for_model(tmp_path, "m", cpu, architecture={"depths": [3, 3]}, buckets=[64])
    assert one.key == same.key != other.key
    assert one.description["torch"] == torch.__version__
    assert cache_key({"a": 1}) != cache_key({"a": 2}) and len(cache_key({})) == 16
    odd = CompileCache.for_model(tmp_path, "../my model", cpu)
    assert odd.artefacts_path.parent == tmp_path and "/" not in odd.label


def test_depthwise_padding_round_trips_through_json():
    model = load_peaknet(FIXTURE)
    convs = [m for m in model.modules() if isinstance(m, PaddableDepthwiseConv2d)]
    assert convs
    convs[0].compute_sizes[(60, 60)] = (64, 64)
    saved = json.loads(json.dumps(padding_of(model)))
    assert list(saved.values()) == [[[60, 60, 64, 64]]]
    fresh = load_peaknet(FIXTURE)
    apply_padding(fresh, saved)
    assert [m.compute_sizes for m in fresh.modules() if isinstance(m, PaddableDepthwiseConv2d)] == [
        m.compute_sizes for m in convs
    ]
    with pytest.raises(ValueError, match="no depthwise conv"):
        apply_padding(fresh, {"not.a.module": [[1, 1, 2, 2]]})


def test_cache_directory_from_the_environment(tmp_path):
    assert default_cache_dir({"PEAKNET_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "peaknet-serve"
    assert default_cache_dir({}) == Path.home() / ".cache" / "peaknet-serve"


def test_nothing_is_cached_where_nothing_is_compiled(tmp_path):
    model = load_peaknet(FIXTURE)
    settings = HandlerSettings.from_mapping({"compile": True, "compile_cache_dir": str(tmp_path)}, env={})
    compiled = ServingMode(dtype=torch.bfloat16, compile="default")
    assert serving_cache(settings, ServingMode(dtype=torch.bfloat16), model, torch.device("cpu")) is None  # eager
    off = HandlerSettings.from_mapping({"compile": True, "compile_cache": False}, env={})
    assert serving_cache(off, compiled, model, torch.device("cpu")) is None
    cache = serving_cache(settings, compiled, model, torch.device("cpu"))  # a mode compiled on the CPU (benchmarks)
    assert cache is not None and cache.directory == tmp_path and cache.description["cpu"]


def test_the_resize_mode_is_part_of_the_serving_key(tmp_path, monkeypatch):
    from peaknet_serve.model import resize

    model = load_peaknet(FIXTURE)
    settings = HandlerSettings.from_mapping({"compile": True, "compile_cache_dir": str(tmp_path)}, env={})
    compiled = ServingMode(dtype=torch.bfloat16, compile="default")
    keys = {}
    for mode in resize.RESIZE_MODES:
        monkeypatch.setattr(resize, "RESIZE_MODE", mode)
        cache = serving_cache(settings, compiled, model, torch.device("cpu"))
        assert cache.description["resize"] == mode
        keys[mode] = cache.key
    assert keys["interpolate"] != keys["blend"]


def test_a_file_lock_is_exclusive_and_a_lock_file_left_on_disk_is_not_a_held_lock(tmp_path):
    path = tmp_path / "locks" / "set.lock"
    path.parent.mkdir()
    path.write_bytes(b"")  # what a worker that held it and exited leaves
    first, second = FileLock(path), FileLock(path)
    assert first.acquire(wait=False) and first.held
    assert not second.acquire(wait=False) and not second.held  # held by another open file
    first.release()
    first.release()  # nothing more to let go
    assert second.acquire(wait=False)
    second.release()
    assert FileLock(tmp_path / "new" / "dir" / "x.lock").acquire(wait=True)  # created with its directory


# Holds a FileLock, says so, and sleeps until it is killed.
HOLDER = """
import sys, time
from pathlib import Path
from peaknet_serve.device.compile_cache import FileLock
lock = FileLock(Path(sys.argv[1]))
assert lock.acquire(wait=False)
print("held", flush=True)
time.sleep(600)
"""


def test_the_lock_of_a_process_killed_while_holding_it_is_free(tmp_path):
    path = tmp_path / "held.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not FileLock(path).acquire(wait=False)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    assert path.exists()
    lock = FileLock(path)
    assert lock.acquire(wait=False)
    lock.release()
