"""The allocator-trace replay of benchmarks.memory_peak (the GPU run itself needs CUDA)."""

import linecache

from benchmarks.memory_peak import allocation_site, live_at_peak


def _alloc(addr, size, frames=()):
    return {"action": "alloc", "addr": addr, "size": size, "frames": list(frames)}


def _free(addr, size):
    return {"action": "free_completed", "addr": addr, "size": size}


def test_live_at_peak_keeps_the_blocks_alive_at_the_highest_total():
    trace = [_alloc(1, 100), _alloc(2, 50), _free(1, 100), _alloc(3, 120), _alloc(4, 10), _free(3, 120), _alloc(5, 40)]
    peak, live = live_at_peak(trace)
    assert peak == 180  # blocks 2, 3 and 4
    assert sorted(b["addr"] for b in live) == [2, 3, 4]


def test_live_at_peak_ignores_frees_of_blocks_allocated_before_recording():
    peak, live = live_at_peak([_free(9, 1000), _alloc(1, 10), {"action": "segment_alloc", "addr": 0, "size": 4096}])
    assert peak == 10 and [b["addr"] for b in live] == [1]


def test_allocation_site_names_the_innermost_model_frame(tmp_path):
    generated = tmp_path / "torchinductor_user" / "cabc.py"
    generated.parent.mkdir()
    generated.write_text("def call(args):\n    buf0 = empty_strided_cuda((8, 256), (256, 1), torch.float32)  # a|b\n")
    linecache.checkcache(str(generated))
    frames = [
        {"filename": "??", "line": 0, "name": "c10::alloc"},
        {"filename": "/usr/lib/python3/site-packages/torch/_ops.py", "line": 5, "name": "__call__"},
        {"filename": str(generated), "line": 2, "name": "call"},
    ]
    site = allocation_site(frames)
    assert site.startswith("cabc.py:2 call: buf0 = empty_strided_cuda((8, 256)")
    assert "|" not in site  # safe inside a markdown table
    assert allocation_site([{"filename": "??", "line": 0, "name": "cudaMalloc"}]).startswith("(no Python frame")
