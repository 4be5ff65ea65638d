"""Which floating-point precision PeakNet runs in, decided in one place.

Order of precedence (first one set wins):

1. the environment variable ``PEAKNET_PRECISION``;
2. the value configured for the model (e.g. the pipeline YAML's ``precision.dtype``);
3. the device default: bfloat16 on a CUDA GPU that supports it (compute capability >= 8.0),
   float16 on an older CUDA GPU (with a logged warning), float32 anywhere else.

The value ``"auto"`` (or an empty string) at any level means "fall through to the next one".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

__all__ = [
    "ACCEPTED_NAMES",
    "PRECISION_ENV_VAR",
    "default_dtype",
    "dtype_name",
    "parse_dtype",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

PRECISION_ENV_VAR = "PEAKNET_PRECISION"

_AUTO = frozenset({"auto", ""})

_ALIASES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "f32": torch.float32,
    "float": torch.float32,
    "single": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "f16": torch.float16,
    "half": torch.float16,
}

_CANONICAL_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}

#: Every spelling :func:`parse_dtype` accepts, for error messages and docs.
ACCEPTED_NAMES: tuple[str, ...] = tuple(_ALIASES)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Turn a precision name (``"bf16"``, ``"torch.float16"``, ``torch.float32`` ...) into a dtype.

    Matching ignores case, surrounding blanks and a leading ``"torch."``.

    Raises:
        ValueError: for anything that is not float32, bfloat16 or float16, naming the accepted values.
        TypeError: if ``name`` is neither a string nor a torch.dtype.
    """
    if isinstance(name, torch.dtype):
        if name in _CANONICAL_NAMES:
            return name
        raise ValueError(f"unsupported dtype {name}; accepted: {', '.join(ACCEPTED_NAMES)}")
    if not isinstance(name, str):
        raise TypeError(f"precision must be a string or torch.dtype, got {type(name).__name__}")
    key = name.strip().lower().removeprefix("torch.")
    try:
        return _ALIASES[key]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}; accepted: {', '.join(ACCEPTED_NAMES)} (or 'auto')") from None


def dtype_name(dtype: torch.dtype) -> str:
    """Canonical name of a supported dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``."""
    try:
        return _CANONICAL_NAMES[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype}; expected one of {list(_CANONICAL_NAMES.values())}") from None


def default_dtype(device_type: str, cuda_bf16_supported: bool = False) -> torch.dtype:
    """The precision used when neither the environment nor the config chooses one.

    Args:
        device_type: ``torch.device.type`` of the device the model runs on (``"cuda"``, ``"cpu"`` ...).
        cuda_bf16_supported: whether that CUDA device computes natively in bfloat16 (Ampere or newer).
    """
    if device_type != "cuda":
        return torch.float32
    if cuda_bf16_supported:
        return torch.bfloat16
    logger.warning(
        "this CUDA GPU has no native bfloat16 support; running PeakNet in float16 "
        "(set %s=float32 if the outputs overflow)",
        PRECISION_ENV_VAR,
    )
    return torch.float16


def _cuda_bf16_supported(device: torch.device) -> bool:
    major, _minor = torch.cuda.get_device_capability(device)
    return major >= 8


def _chosen_value(configured: str | None, env: Mapping[str, str]) -> tuple[str | None, str]:
    """The first non-auto value by precedence, and where it came from (for error messages)."""
    from_env = env.get(PRECISION_ENV_VAR)
    if from_env is not None and from_env.strip().lower() not in _AUTO:
        return from_env, f"environment variable {PRECISION_ENV_VAR}"
    if configured is not None and str(configured).strip().lower() not in _AUTO:
        return configured, "model config"
    return None, "device default"


def resolve_precision(
    configured: str | torch.dtype | None,
    device: torch.device | str,
    env: Mapping[str, str] = os.environ,
) -> torch.dtype:
    """Decide the dtype PeakNet runs in: ``$PEAKNET_PRECISION`` > ``configured`` > device default.

    Args:
        configured: the model config's precision (a name accepted by :func:`parse_dtype`,
            ``"auto"`` or None for "not set").
        device: the device the model will run on.
        env: the environment to read ``PEAKNET_PRECISION`` from.

    Raises:
        ValueError: if the chosen value is not a known precision; the message says where it came from.
    """
    device = torch.device(device)
    if isinstance(configured, torch.dtype):
        configured = dtype_name(configured)
    value, source = _chosen_value(configured, env)
    if value is None:
        bf16 = device.type == "cuda" and _cuda_bf16_supported(device)
        return default_dtype(device.type, bf16)
    try:
        return parse_dtype(value)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
