"""Load a PeakNet from a pipeline-style YAML config and a checkpoint, safely and strictly.

Checkpoint formats read by :func:`read_state_dict`:

* a state dict saved with ``torch.save`` (any suffix, e.g. ``.pt``/``.pth``/``.bin``), loaded with
  ``weights_only=True``: no code in a checkpoint ever runs;
* the same wrapped in ``{"model_state_dict" | "state_dict" | "model": ...}`` (training checkpoints);
* ``.safetensors`` files;

with keys possibly prefixed by ``module.`` (DataParallel/DDP) or containing ``_orig_mod.``
(torch.compile) / ``_fsdp_wrapped_module.`` / ``_checkpoint_wrapped_module.`` (FSDP, activation
checkpointing) segments.

Unlike the public pipeline, a missing weights file is an error; random weights are only ever used
when asked for with ``random_init=True``.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from peaknet_serve.config.precision import parse_dtype
from peaknet_serve.model.peaknet import PeakNet, PeakNetConfig

__all__ = ["CheckpointError", "load_config", "load_peaknet", "read_state_dict"]

logger = logging.getLogger(__name__)

#: Keys under which training scripts nest the model's state dict, tried in this order.
WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
#: Leading key prefix added by DataParallel / DistributedDataParallel.
DATA_PARALLEL_PREFIX = "module."
#: Key segments added by wrappers (torch.compile, FSDP, activation checkpointing), anywhere in a key.
WRAPPER_SEGMENTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
#: How many offending keys an error message lists per category.
MAX_LISTED_KEYS = 5

ConfigSource = str | Path | Mapping[str, Any] | PeakNetConfig


class CheckpointError(Exception):
    """A checkpoint or config that cannot be turned into the requested model."""


# --------------------------------------------------------------------------------------------
# Reading state dicts
# --------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict on the CPU, with wrapper
    nesting and wrapper key prefixes removed.

    Raises:
        CheckpointError: if the file is missing, unreadable, refused by ``weights_only`` loading
            (it contains objects other than tensors and plain containers), or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        raw: Any = _read_safetensors(path)
    else:
        raw = _read_torch_pickle(path)
    return normalize_state_dict(_unwrap(raw, path), path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read safetensors file {path}: {error}") from error


def _read_torch_pickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {path}: it contains objects other than tensors and plain containers, "
            f"which weights_only loading does not execute ({_first_line(error)})"
        ) from error
    except Exception as error:  # torch.load reports corrupt files through many exception types
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    """Descend through ``{"model_state_dict" | "state_dict" | "model": ...}`` wrappers."""
    while isinstance(obj, Mapping):
        inner = next((obj[key] for key in WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, Mapping) and any(isinstance(value, torch.Tensor) for value in obj.values()):
        return obj
    found = f"keys {sorted(map(str, obj))[:MAX_LISTED_KEYS]}" if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(
        f"{path} holds no state dict (a mapping of parameter names to tensors, possibly under one of "
        f"{list(WRAPPER_KEYS)}); found {found}"
    )


def strip_wrapper_prefixes(key: str) -> str:
    """``module._orig_mod.backbone._fsdp_wrapped_module.x`` -> ``backbone.x``."""
    while key.startswith(DATA_PARALLEL_PREFIX):
        key = key[len(DATA_PARALLEL_PREFIX) :]
    return ".".join(part for part in key.split(".") if part not in WRAPPER_SEGMENTS)


def normalize_state_dict(state_dict: Mapping[str, Any], source: str | Path = "state dict") -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes from every key; raise CheckpointError on collisions or non-tensors."""
    normalized: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        clean = strip_wrapper_prefixes(str(key))
        if clean in normalized:
            raise CheckpointError(f"{source}: two entries map to {clean!r} after removing wrapper prefixes")
        normalized[clean] = value
    return normalized


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def _model_section(document: Mapping[str, Any]) -> tuple[Mapping[str, Any], Any]:
    """Find ``peaknet_config.model`` in a pipeline YAML document, or accept the inner mapping itself.

    Returns the architecture mapping and the raw ``weights_path`` value (None if absent).
    """
    model = document.get("model")
    if isinstance(model, Mapping) and "peaknet_config" in model:  # whole pipeline YAML
        inner = model["peaknet_config"]
        weights_path = model.get("weights_path")
    elif "peaknet_config" in document:  # its `model:` section
        inner, weights_path = document["peaknet_config"], document.get("weights_path")
    elif isinstance(model, Mapping):  # `peaknet_config:` section
        inner, weights_path = document, None
    else:  # the architecture mapping alone
        return document, None
    if isinstance(inner, Mapping) and isinstance(inner.get("model"), Mapping):
        inner = inner["model"]
    if not isinstance(inner, Mapping):
        raise CheckpointError(f"peaknet_config must be a mapping, got {type(inner).__name__}")
    return inner, weights_path


def load_config(config: ConfigSource) -> tuple[PeakNetConfig, Path | None]:
    """Parse a PeakNet config and the weights path it names.

    Args:
        config: path to a YAML in the public pipeline's layout
            (``model: {weights_path, peaknet_config: {model: {...}}}``), such a mapping already
            loaded, any inner part of it down to the architecture mapping alone, or a PeakNetConfig.

    Returns:
        The config and the weights path (a relative path resolved against the YAML's folder;
        None if the config names none).

    Raises:
        CheckpointError: unreadable YAML, or invalid or unknown architecture values.
    """
    if isinstance(config, PeakNetConfig):
        return config, None
    base_dir: Path | None = None
    if isinstance(config, (str, Path)):
        path = Path(config)
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise CheckpointError(f"cannot read PeakNet config {path}: {error}") from error
        if not isinstance(document, Mapping):
            raise CheckpointError(f"PeakNet config {path} is not a YAML mapping")
        base_dir = path.resolve().parent
    else:
        document = config
    inner, weights_path = _model_section(document)
    try:
        peaknet_config = PeakNetConfig.from_mapping(inner)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"invalid PeakNet config: {error}") from error
    if weights_path in (None, ""):
        return peaknet_config, None
    resolved = Path(weights_path).expanduser()
    if base_dir is not None and not resolved.is_absolute():
        resolved = (base_dir / resolved).resolve()
    return peaknet_config, resolved


# --------------------------------------------------------------------------------------------
# Matching a checkpoint to a config
# --------------------------------------------------------------------------------------------


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Read the architecture values a PeakNet state dict implies, from its key names and shapes.

    Only values that can be determined are returned (keys as in :class:`PeakNetConfig`).
    """
    found: dict[str, Any] = {}
    uses = "head_upsample_layer.0.weight" in state_dict
    if uses or any(key.startswith("head_segmask.") for key in state_dict):
        found["uses_learned_upsample"] = uses

    stem = state_dict.get("backbone.embeddings.patch_embeddings.weight")
    if stem is not None and stem.ndim == 4:
        found["num_channels"] = int(stem.shape[1])
    sizes = [state_dict.get(f"backbone.hidden_states_norms.stage{i}.weight") for i in range(1, 5)]
    if all(t is not None and t.ndim == 1 for t in sizes):
        found["backbone_hidden_sizes"] = [int(t.shape[0]) for t in sizes]

    depths = [0, 0, 0, 0]
    for key in state_dict:
        parts = key.split(".")
        if parts[:3] == ["backbone", "encoder", "stages"] and len(parts) > 5 and parts[4] == "layers":
            stage, layer = int(parts[3]), int(parts[5])
            if stage < len(depths):
                depths[stage] = max(depths[stage], layer + 1)
    if any(depths):
        found["backbone_depths"] = depths

    blocks = {int(key.split(".")[2]) for key in state_dict if key.startswith("bifpn.blocks.")}
    if blocks:
        found["bifpn_num_blocks"] = max(blocks) + 1
    adapter = state_dict.get("backbone_to_bifpn.0.weight")
    if adapter is not None and adapter.ndim == 4:
        found["bifpn_num_features"] = int(adapter.shape[0])
    head = state_dict.get("head_segmask.weight")
    if head is not None and head.ndim == 4:
        found["num_classes"] = int(head.shape[0])
        found["seg_out_channels"] = int(head.shape[1])
    return found


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = len(keys) - MAX_LISTED_KEYS
    return shown + (f", ... ({more} more)" if more > 0 else "")


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], config: PeakNetConfig, source: str | Path
) -> None:
    """Raise one CheckpointError describing every missing, unexpected and mis-shaped key.

    The message names the config values that disagree with what the checkpoint implies.
    """
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{key} (checkpoint {list(state_dict[key].shape)}, model {list(expected[key])})"
        for key in set(expected) & set(state_dict)
        if tuple(state_dict[key].shape) != expected[key]
    )
    if not (missing or unexpected or mis_shaped):
        return
    lines = [
        (
            f"checkpoint {source} does not match the PeakNet config: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mis_shaped)} mis-shaped key(s)"
        )
    ]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if keys:
            lines.append(f"  {label}: {_list_keys(keys)}")
    configured = config.as_mapping()
    disagreements = [
        f"{name}: config says {configured[name]!r}, checkpoint implies {value!r}"
        for name, value in infer_architecture(state_dict).items()
        if configured.get(name) != value
    ]
    if disagreements:
        lines.append("  probably disagreeing config value(s): " + "; ".join(disagreements))
    raise CheckpointError("\n".join(lines))


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------


def load_peaknet(
    config: ConfigSource,
    weights: str | Path | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    random_init: bool = False,
) -> PeakNet:
    """Build a PeakNet from ``config``, load its weights strictly, convert, and return it in eval mode.

    Args:
        config: YAML path, mapping or PeakNetConfig (see :func:`load_config`).
        weights: checkpoint path; overrides the config's ``weights_path``.
        dtype: float32, bfloat16 or float16 (aliases as in :func:`peaknet_serve.config.precision.parse_dtype`).
            Parameters are converted (true reduced precision, not autocast).
        device: where the model lives.
        random_init: build with random weights instead of loading any; the only way to get an
            untrained model. Cannot be combined with an explicit ``weights``.

    Returns:
        The model, in eval mode, with ``requires_grad`` off on all parameters.

    Raises:
        CheckpointError: no weights given, file missing/unreadable/unsafe, or keys/shapes that do
            not match the config.
        ValueError: an unknown ``dtype`` or contradictory arguments.
    """
    target_dtype = parse_dtype(dtype)
    device = torch.device(device)
    peaknet_config, configured_weights = load_config(config)

    if random_init:
        if weights is not None:
            raise ValueError("pass either weights= or random_init=True, not both")
        with device:
            model = PeakNet(peaknet_config)
        logger.warning("PeakNet built with RANDOM weights (random_init=True)")
    else:
        weights_path = Path(weights) if weights is not None else configured_weights
        if weights_path is None:
            raise CheckpointError(
                "no weights: the config has no model.weights_path and no weights= was given "
                "(pass random_init=True to build an untrained model on purpose)"
            )
        state_dict = read_state_dict(weights_path)
        with torch.device("meta"):
            model = PeakNet(peaknet_config)
        check_state_dict(model, state_dict, peaknet_config, weights_path)
        model.load_state_dict(state_dict, strict=True, assign=True)
        logger.info("loaded PeakNet weights from %s", weights_path)

    model.to(device=device, dtype=target_dtype)
    model.requires_grad_(False)
    return model.eval()
