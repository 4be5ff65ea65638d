"""peakfinder8 worker: runs OM's peakfinder8 in its own Python (``ondamonitor`` needs numpy < 2).

Started by :class:`peaknet_serve.eval.peakfinder8.Peakfinder8` as ``<pf8 python> pf8_worker.py``;
imports only numpy and OM, so it runs in a virtual environment that holds nothing else.

Protocol, one JSON object per line on stdin, one answer per line on stdout:

* ``{"op": "find", "data": ".npy path", "mask": ".npy path", "radius": ".npy path",
  "layout": {"asic_nx", "asic_ny", "nasics_x", "nasics_y"}, "params": {...}, "repeat": int}``:
  ``data`` is a float32 (nasics_y * asic_ny, nasics_x * asic_nx) slab, ``mask`` int8 of the same
  shape (1 = good), ``radius`` float32 distances from the beam in pixels. ``params`` is a list
  of parameter sets: peaks are found for each (a grid search reads the data once). Answer:
  ``{"ok": true, "results": [{"fs": [...], "ss": [...], "intensity": [...], "num_pixels": [...],
  "snr": [...], "ms": float}, ...]}`` (``ms``: the median over ``repeat`` calls of peakfinder8).
* ``{"op": "version"}``: ``{"ok": true, "om": "...", "numpy": "..."}``.

Errors answer ``{"ok": false, "error": "..."}`` and the worker goes on.
"""

import json
import sys
import time

import numpy

_CACHE = {}


def _load(path):
    """Arrays by path, cached: masks and radius maps repeat across frames."""
    if path not in _CACHE:
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[path] = numpy.load(path)
    return _CACHE[path]


def _find(request):
    from om.algorithms.crystallography import Peakfinder8PeakDetection

    data = numpy.load(request["data"]).astype(numpy.float32, copy=False)
    mask = _load(request["mask"]).astype(numpy.int8, copy=False)
    radius = _load(request["radius"]).astype(numpy.float32, copy=False)
    layout = request["layout"]
    repeat = max(1, int(request.get("repeat", 1)))
    results = []
    for params in request["params"]:
        finder = Peakfinder8PeakDetection(
            radius_pixel_map=radius,
            layout_info=layout,
            crystallography_parameters={
                "max_num_peaks": int(params.get("max_num_peaks", 20000)),
                "adc_threshold": float(params["adc_threshold"]),
                "minimum_snr": float(params["minimum_snr"]),
                "min_pixel_count": int(params["min_pixel_count"]),
                "max_pixel_count": int(params["max_pixel_count"]),
                "local_bg_radius": int(params["local_bg_radius"]),
                "min_res": int(params.get("min_res", 0)),
                "max_res": int(params.get("max_res", 100000)),
                "bad_pixel_map_filename": None,
                "bad_pixel_map_hdf5_path": None,
            },
        )
        finder.set_bad_pixel_map(mask)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            peaks = finder.find_peaks(data=data)
            times.append((time.perf_counter() - start) * 1e3)
        results.append(
            {
                "fs": [float(v) for v in peaks["fs"]],
                "ss": [float(v) for v in peaks["ss"]],
                "intensity": [float(v) for v in peaks["intensity"]],
                "num_pixels": [int(v) for v in peaks["num_pixels"]],
                "snr": [float(v) for v in peaks["snr"]],
                "ms": float(numpy.median(times)),
            }
        )
    return {"ok": True, "results": results}


def _version():
    from importlib.metadata import version

    return {"ok": True, "om": version("ondamonitor"), "numpy": numpy.__version__}


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = request.get("op")
            if op == "find":
                answer = _find(request)
            elif op == "version":
                answer = _version()
            else:
                answer = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as error:  # noqa: BLE001 - every failure is answered, the worker goes on
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
