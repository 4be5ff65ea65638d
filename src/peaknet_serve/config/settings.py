"""Handler settings: the ``handler:`` section of model-config.yaml plus environment overrides.

One place resolves every knob the handler reads, so the rest of the code takes a frozen
:class:`HandlerSettings` and never looks at ``os.environ`` itself (precision excepted: that is
resolved against the device, env first, by :func:`peaknet_serve.config.precision.resolve_precision`).

Environment overrides (a ``docker run -e`` or a shell export wins over the archive's YAML):

===============================  ======================================================
``PEAKNET_PRECISION``            read by :func:`peaknet_serve.config.precision.resolve_precision` (the one place)
``PEAKNET_CONFIG``               PeakNet YAML (public pipeline layout), path
``PEAKNET_WEIGHTS``              checkpoint (.pt/.bin/.safetensors), path
``PEAKNET_MODEL_LABEL``          model name reported in answers and logs
``PEAKNET_MAX_BATCH_PANELS``     panels per GPU micro-batch
``PEAKNET_THRESHOLD``            peak probability threshold in (0, 1); empty = argmax
``PEAKNET_COMPILE``              true/false: torch.compile the network (CUDA only)
``PEAKNET_AUTOCAST``             true/false: bf16/fp16 under torch.autocast (CUDA); false: every op in the weights' dtype
``PEAKNET_GPU_MEMORY_FRACTION``  share of the GPU's memory this worker may use, (0, 1]
``PEAKNET_TORCH_THREADS``        CPU threads of each worker's torch (default: 1 when it serves on a GPU)
``PEAKNET_BATCH_TIME_FRACTION``  share of responseTimeout one batch's estimated compute may take, [0, 1]; 0: off
``PEAKNET_MAX_MASK_FRACTION``    panels whose peak mask exceeds this fraction are not labelled (capped); empty = no cap
``PEAKNET_COMPILE_CACHE``        true/false: save torch.compile's artefacts after warm-up, load them at start
``PEAKNET_CACHE_DIR``            where those artefacts live (default ``~/.cache/peaknet-serve``)
``PEAKNET_COMPILE_BACKEND``      auto, inductor (torch.compile) or aoti (AOTInductor packages in the compile cache)
``PEAKNET_DEPTHWISE_PADDING``    true/false: time the depthwise convs padded at start-up, keep the faster (CUDA)
``PEAKNET_HIT_MIN_PEAKS``        peaks that make a frame a hit (the PeakNetHitFrames metric)
``PEAKNET_GPU_WAIT``             spin/block: how a worker waits for its GPU results
``PEAKNET_BAD_PIXEL_MASK``       the detector's bad-pixel mask file (.npy or HDF5, 1 = good); empty = none
===============================  ======================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from peaknet_serve.decode import DecodeLimits
from peaknet_serve.wire import CXI_MAX_PEAKS

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(value: Any) -> bool:
    """``True``/``False`` from a YAML bool or an env string (1/0, true/false, yes/no, on/off)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r} (use true/false)")


def parse_threshold(value: Any) -> float | None:
    """Peak probability threshold: ``None`` (argmax) or a float in (0, 1)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null"}):
        return None
    threshold = float(value)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return threshold


@dataclass(frozen=True)
class HandlerSettings:
    """Everything the handler reads from configuration.

    Paths (``config``, ``weights``) are relative to the model directory (the unpacked archive)
    unless absolute.
    """

    precision: str | None = None  # None/"auto": bf16 on CUDA (fp16 on old GPUs), fp32 on CPU
    config: str = "peaknet.yaml"  # PeakNet YAML in the public pipeline's layout
    weights: str | None = None  # overrides the YAML's weights_path
    model_label: str = "peaknet"  # name reported in responses
    max_batch_panels: int = 64  # panels per GPU micro-batch
    threshold: float | None = None  # None: argmax; else P(peak) >= threshold
    min_peak_pixels: int = 1  # smaller connected components are dropped
    max_peaks_per_frame: int = CXI_MAX_PEAKS  # width of CXI answers (brightest kept); JSON lists are not capped
    warmup: bool = True
    warmup_shapes: tuple[tuple[int, int, int], ...] = ((16, 352, 384),)  # (panels, H, W)
    compile: bool = False  # torch.compile (CUDA only; shape buckets are warmed up)
    compile_mode: str = "default"  # "default" | "reduce-overhead" (CUDA graphs) | "max-autotune"
    panel_buckets: tuple[int, ...] = ()  # compiled micro-batch sizes; () = max_batch_panels only
    channels_last: bool = False
    autocast: bool = True  # bf16/fp16 on CUDA under torch.autocast; False: pure weights dtype
    h2d_overlap: bool = False  # upload micro-batch i+1 on a side stream while i computes
    gpu_wait: str = "spin"  # how a worker waits for its GPU results: "spin" (a busy core) | "block" (sleeps)
    torch_threads: int | None = None  # CPU threads per worker; None: 1 on a GPU (workers share the host)
    gpu_memory_fraction: float | None = None  # cap per worker (several workers share a GPU); None = no cap
    max_mask_fraction: float | None = 0.25  # capped above this peak-mask fraction per panel; None = never
    max_label_iterations: int | None = 64  # labelling iterations per micro-batch before unsettled panels are capped
    compile_cache: bool = True  # compiled artefacts saved after warm-up and loaded at start (CUDA)
    compile_cache_dir: str | None = None  # None: $XDG_CACHE_HOME/peaknet-serve (~/.cache/peaknet-serve)
    compile_backend: str = "auto"  # "inductor" (torch.compile) | "aoti" (AOT packages) | "auto": config.backend
    depthwise_padding: bool = True  # CUDA: per warm-up shape, run depthwise convs padded where measured faster
    merge_separable: bool = True  # CUDA: fold the BiFPN's 1x1 depthwise convs into their pointwise convs
    batch_time_fraction: float = 0.5  # per-batch work budget (serve.budget); 0 = admit everything
    hit_min_peaks: int = 10  # a frame with at least this many peaks counts as a hit (metrics)
    bad_pixel_mask: str | None = None  # .npy / HDF5 file, 1 = good (config.bad_pixels); None: every pixel good
    limits: DecodeLimits = field(default_factory=DecodeLimits)

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None, env: Mapping[str, str] = os.environ) -> HandlerSettings:
        """Build settings from the YAML ``handler:`` section, then apply env overrides.

        Raises:
            ValueError: unknown keys or values of the wrong kind (a typo must not pass silently).
        """
        section = dict(section or {})
        known = {f.name for f in fields(cls)} | {f.name for f in fields(DecodeLimits)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"unknown handler setting(s) {unknown}; known: {sorted(known)}")

        limit_names = {f.name for f in fields(DecodeLimits)}
        limits = DecodeLimits(**{k: int(section.pop(k)) for k in list(section) if k in limit_names})
        values: dict[str, Any] = {**section, "limits": limits}

        overrides = {
            "config": env.get("PEAKNET_CONFIG"),
            "weights": env.get("PEAKNET_WEIGHTS"),
            "model_label": env.get("PEAKNET_MODEL_LABEL"),
            "max_batch_panels": env.get("PEAKNET_MAX_BATCH_PANELS"),
            "threshold": env.get("PEAKNET_THRESHOLD"),
            "compile": env.get("PEAKNET_COMPILE"),
            "autocast": env.get("PEAKNET_AUTOCAST"),
            "gpu_memory_fraction": env.get("PEAKNET_GPU_MEMORY_FRACTION"),
            "torch_threads": env.get("PEAKNET_TORCH_THREADS"),
            "depthwise_padding": env.get("PEAKNET_DEPTHWISE_PADDING"),
            "merge_separable": env.get("PEAKNET_MERGE_SEPARABLE"),
            "batch_time_fraction": env.get("PEAKNET_BATCH_TIME_FRACTION"),
            "hit_min_peaks": env.get("PEAKNET_HIT_MIN_PEAKS"),
            "max_mask_fraction": env.get("PEAKNET_MAX_MASK_FRACTION"),
            "compile_cache": env.get("PEAKNET_COMPILE_CACHE"),
            "compile_cache_dir": env.get("PEAKNET_CACHE_DIR"),
            "compile_backend": env.get("PEAKNET_COMPILE_BACKEND"),
            "gpu_wait": env.get("PEAKNET_GPU_WAIT"),
            "bad_pixel_mask": env.get("PEAKNET_BAD_PIXEL_MASK"),
        }
        values.update({k: v for k, v in overrides.items() if v not in (None, "")})
        if "PEAKNET_THRESHOLD" in env and env["PEAKNET_THRESHOLD"] == "":
            values["threshold"] = None
        if env.get("PEAKNET_MAX_MASK_FRACTION") == "":
            values["max_mask_fraction"] = None
        if env.get("PEAKNET_BAD_PIXEL_MASK") == "":
            values["bad_pixel_mask"] = None
        return cls()._coerce(values)

    def _coerce(self, values: Mapping[str, Any]) -> HandlerSettings:
        converters = {
            "precision": lambda v: None if v is None or str(v).lower() == "auto" else str(v),
            "config": str,
            "weights": lambda v: None if v is None else str(v),
            "model_label": str,
            "max_batch_panels": _positive_int,
            "threshold": parse_threshold,
            "min_peak_pixels": _positive_int,
            "max_peaks_per_frame": _positive_int,
            "warmup": parse_bool,
            "warmup_shapes": lambda v: tuple(tuple(int(s) for s in shape) for shape in v),
            "compile": parse_bool,
            "compile_mode": str,
            "panel_buckets": lambda v: tuple(sorted(_positive_int(b) for b in v)),
            "channels_last": parse_bool,
            "autocast": parse_bool,
            "h2d_overlap": parse_bool,
            "gpu_wait": parse_gpu_wait,
            "torch_threads": lambda v: None
            if v is None or str(v).lower() in ("", "auto", "none")
            else _positive_int(v),
            "gpu_memory_fraction": parse_fraction,
            "depthwise_padding": parse_bool,
            "merge_separable": parse_bool,
            "batch_time_fraction": parse_unit_interval,
            "hit_min_peaks": _positive_int,
            "max_mask_fraction": lambda v: parse_fraction(v, "max_mask_fraction"),
            "max_label_iterations": lambda v: None if v is None or str(v).lower() == "none" else _positive_int(v),
            "compile_cache": parse_bool,
            "compile_cache_dir": lambda v: None if v is None else str(v),
            "compile_backend": parse_compile_backend,
            "bad_pixel_mask": lambda v: None if v is None or str(v).strip() == "" else str(v),
            "limits": lambda v: v,
        }
        return replace(self, **{k: converters[k](v) for k, v in values.items()})

    def resolve_path(self, value: str | None, model_dir: Path) -> Path | None:
        """``value`` as a path, relative ones resolved against ``model_dir``."""
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else model_dir / path

    def buckets(self) -> tuple[int, ...]:
        """Micro-batch sizes (panels) that compiled graphs are built for, ascending."""
        sizes = {b for b in self.panel_buckets if b <= self.max_batch_panels}
        return tuple(sorted(sizes | {self.max_batch_panels}))


COMPILE_BACKENDS = ("auto", "inductor", "aoti")
GPU_WAITS = ("spin", "block")


def parse_gpu_wait(value: Any) -> str:
    """``spin`` or ``block`` (case-insensitive): whether a worker waiting for its GPU results keeps a
    CPU core busy polling (CUDA's default while there are fewer GPU processes than cores) or sleeps
    until the GPU signals (a blocking CUDA event), leaving the core to other workers' transport."""
    wait = str(value).strip().lower()
    if wait not in GPU_WAITS:
        raise ValueError(f"gpu_wait must be one of {GPU_WAITS}, got {value!r}")
    return wait


def parse_compile_backend(value: Any) -> str:
    """``auto``, ``inductor`` or ``aoti`` (case-insensitive); ``auto`` is resolved against the device
    and the host's compiler by :func:`peaknet_serve.config.backend.resolve_compile_backend`."""
    backend = str(value).strip().lower()
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"compile_backend must be one of {COMPILE_BACKENDS}, got {value!r}")
    return backend


def parse_unit_interval(value: Any) -> float:
    """A float in [0, 1]."""
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"expected a number in [0, 1], got {value!r}")
    return number


def parse_fraction(value: Any, name: str = "gpu_memory_fraction") -> float | None:
    """``None``/"none"/"" -> no cap; else a float in (0, 1] (``name`` is for the error message)."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    fraction = float(value)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return fraction


def _positive_int(value: Any) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return number
