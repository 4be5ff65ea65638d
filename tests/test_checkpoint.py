"""Checkpoint and config loading: every checkpoint format, safe (weights_only) loading, strict key
matching with helpful errors, config layouts, and dtype conversion. Real files in tmp_path throughout.
"""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from peaknet_serve.checkpoint import (
    CheckpointError,
    load_config,
    load_peaknet,
    read_state_dict,
)
from peaknet_serve.model import PeakNet, PeakNetConfig

UPSTREAM = Path(__file__).resolve().parent / "fixtures" / "upstream"
CONFIG_YAML = UPSTREAM / "peaknet_tiny.yaml"
CHECKPOINT = UPSTREAM / "peaknet_tiny.pt"


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    return torch.load(CHECKPOINT, weights_only=True)


@pytest.fixture(scope="module")
def tiny_input() -> torch.Tensor:
    return torch.from_numpy(np.load(UPSTREAM / "peaknet_tiny_input.npy"))


@pytest.fixture(scope="module")
def expected_logits() -> np.ndarray:
    return np.load(UPSTREAM / "peaknet_tiny_logits.npy")


@pytest.fixture(scope="module")
def inner_config() -> dict:
    return yaml.safe_load(CONFIG_YAML.read_text())["model"]["peaknet_config"]["model"]


def assert_reproduces_reference(model: PeakNet, x: torch.Tensor, expected: np.ndarray) -> None:
    assert not model.training
    with torch.no_grad():
        logits = model(x).numpy()
    assert np.linalg.norm(logits - expected) / np.linalg.norm(expected) <= 1e-4


def write_config(folder: Path, inner: dict, weights_path: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.yaml"
    document = {"model": {"weights_path": weights_path, "peaknet_config": {"model": inner}}}
    path.write_text(yaml.safe_dump(document))
    return path


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + key: value for key, value in state.items()}


def _fsdp_nested(state: dict) -> dict:
    """FSDP-style keys: the wrapper segment sits inside the key, after the wrapped module's name."""
    return {key.replace("backbone.", "backbone._fsdp_wrapped_module.", 1): value for key, value in state.items()}


CHECKPOINT_LAYOUTS = {
    "raw.pt": lambda s: s,
    "raw.bin": lambda s: s,
    "raw.pth": lambda s: s,
    "model_state_dict.pt": lambda s: {"model_state_dict": s, "optimizer_state_dict": {"step": 10}, "epoch": 3},
    "state_dict.pt": lambda s: {"state_dict": s, "iter": 1000},
    "model.bin": lambda s: {"model": s, "config": {"lr": 1e-3}},
    "nested.pt": lambda s: {"checkpoint": 1, "model": {"state_dict": s}},
    "ddp.pt": lambda s: _prefixed(s, "module."),
    "compiled.pt": lambda s: _prefixed(s, "_orig_mod."),
    "ddp_compiled.pt": lambda s: _prefixed(s, "module._orig_mod."),
    "fsdp.pt": lambda s: _prefixed(s, "_fsdp_wrapped_module."),
    "fsdp_nested.pt": _fsdp_nested,
    "wrapped_ddp.pt": lambda s: {"model_state_dict": _prefixed(s, "module.")},
}


@pytest.mark.parametrize("layout", sorted(CHECKPOINT_LAYOUTS))
def test_loads_every_torch_checkpoint_layout(
    layout: str, tmp_path: Path, state_dict, tiny_input, expected_logits
) -> None:
    path = tmp_path / layout
    torch.save(CHECKPOINT_LAYOUTS[layout](state_dict), path)
    assert read_state_dict(path).keys() == state_dict.keys()
    model = load_peaknet(CONFIG_YAML, weights=path)
    assert_reproduces_reference(model, tiny_input, expected_logits)


def test_loads_legacy_non_zip_torch_format(tmp_path: Path, state_dict, tiny_input, expected_logits) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(state_dict, path, _use_new_zipfile_serialization=False)
    assert_reproduces_reference(load_peaknet(CONFIG_YAML, weights=path), tiny_input, expected_logits)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_loads_safetensors(prefix: str, tmp_path: Path, state_dict, tiny_input, expected_logits) -> None:
    path = tmp_path / "weights.safetensors"
    save_file(_prefixed(state_dict, prefix), str(path))
    loaded = read_state_dict(path)
    assert loaded.keys() == state_dict.keys()
    assert all(torch.equal(loaded[key], state_dict[key]) for key in state_dict)
    assert_reproduces_reference(load_peaknet(CONFIG_YAML, weights=path), tiny_input, expected_logits)


def test_loads_weights_path_from_yaml(tiny_input, expected_logits) -> None:
    assert_reproduces_reference(load_peaknet(CONFIG_YAML), tiny_input, expected_logits)


def test_relative_weights_path_resolves_against_yaml_folder(
    tmp_path: Path, monkeypatch, inner_config, tiny_input, expected_logits
) -> None:
    (tmp_path / "deep").mkdir()
    shutil.copy(CHECKPOINT, tmp_path / "deep" / "w.pt")
    config_path = write_config(tmp_path / "configs", inner_config, "../deep/w.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, weights = load_config(config_path)
    assert weights == (tmp_path / "deep" / "w.pt").resolve()
    assert_reproduces_reference(load_peaknet(config_path), tiny_input, expected_logits)


def test_weights_argument_overrides_config(tmp_path: Path, inner_config, tiny_input, expected_logits) -> None:
    config_path = write_config(tmp_path, inner_config, "does-not-exist.pt")
    with pytest.raises(CheckpointError, match="does-not-exist.pt"):
        load_peaknet(config_path)
    assert_reproduces_reference(load_peaknet(config_path, weights=CHECKPOINT), tiny_input, expected_logits)


@pytest.mark.parametrize("level", ["document", "model section", "peaknet_config section", "inner", "dataclass"])
def test_config_given_as_mapping_at_any_level(level: str, inner_config, tiny_input, expected_logits) -> None:
    config = {
        "document": {"model": {"weights_path": str(CHECKPOINT), "peaknet_config": {"model": inner_config}}},
        "model section": {"weights_path": str(CHECKPOINT), "peaknet_config": {"model": inner_config}},
        "peaknet_config section": {"model": inner_config},
        "inner": inner_config,
        "dataclass": PeakNetConfig.from_mapping(inner_config),
    }[level]
    parsed, weights = load_config(config)
    assert parsed == PeakNetConfig.from_mapping(inner_config)
    assert weights == (CHECKPOINT if level in ("document", "model section") else None)
    assert_reproduces_reference(load_peaknet(config, weights=CHECKPOINT), tiny_input, expected_logits)


# --------------------------------------------------------------------------------------------
# Safety
# --------------------------------------------------------------------------------------------


class _CodeRunningPayload:
    """Unpickling this calls exec(), which writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_refuses_checkpoint_that_would_run_code(tmp_path: Path, state_dict) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "malicious.pt"
    torch.save({"state_dict": state_dict, "payload": _CodeRunningPayload(marker)}, path)

    with pytest.raises(CheckpointError, match="refused"):
        load_peaknet(CONFIG_YAML, weights=path)
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(path)
    assert not marker.exists()

    # The payload is real: unsafe loading does run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_missing_weights_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found.*nowhere.pt"):
        load_peaknet(CONFIG_YAML, weights=tmp_path / "nowhere.pt")


def test_no_weights_at_all_is_an_error(inner_config) -> None:
    with pytest.raises(CheckpointError, match="random_init=True"):
        load_peaknet(inner_config)


def test_random_init_only_when_asked(inner_config, tiny_input, expected_logits) -> None:
    model = load_peaknet(inner_config, random_init=True)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        logits = model(tiny_input)
    assert logits.shape == expected_logits.shape
    assert not np.allclose(logits.numpy(), expected_logits, atol=1e-2)
    # random_init ignores the YAML's weights_path but refuses an explicit contradiction.
    assert load_peaknet(CONFIG_YAML, random_init=True).config == model.config
    with pytest.raises(ValueError, match="either"):
        load_peaknet(CONFIG_YAML, weights=CHECKPOINT, random_init=True)


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (b"this is not a checkpoint", ".pt", "cannot read checkpoint"),
        (b"\x00" * 64, ".safetensors", "cannot read safetensors"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes, suffix: str, message: str) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([torch.zeros(3)], "holds no state dict"),
        ({"optimizer": {"lr": 1.0}}, "holds no state dict"),
        ({}, "holds no state dict"),
        (torch.zeros(3), "holds no state dict"),
        ({"weight": torch.zeros(2), "epoch": 3}, "not a tensor"),
    ],
)
def test_files_without_a_state_dict(tmp_path: Path, payload, message: str) -> None:
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)


def test_colliding_keys_after_prefix_removal(tmp_path: Path) -> None:
    path = tmp_path / "dup.pt"
    torch.save({"module.a": torch.zeros(1), "a": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match="two entries"):
        read_state_dict(path)


def _mismatch_error(inner_config: dict, tmp_path: Path, change: dict, state: dict | None = None) -> str:
    weights = CHECKPOINT
    if state is not None:
        weights = tmp_path / "edited.pt"
        torch.save(state, weights)
    with pytest.raises(CheckpointError) as caught:
        load_peaknet({**inner_config, **change}, weights=weights)
    return str(caught.value)


def test_mismatch_learned_upsample(tmp_path: Path, inner_config) -> None:
    message = _mismatch_error(inner_config, tmp_path, {"uses_learned_upsample": True})
    assert "2 missing, 0 unexpected, 0 mis-shaped" in message
    assert "head_upsample_layer.0.bias, head_upsample_layer.0.weight" in message
    assert "uses_learned_upsample: config says True, checkpoint implies False" in message


def test_mismatch_depths_lists_first_offenders(tmp_path: Path, inner_config) -> None:
    message = _mismatch_error(inner_config, tmp_path, {"backbone_depths": [1, 1, 4, 1]})
    assert "20 missing, 0 unexpected" in message
    assert "backbone.encoder.stages.2.layers.2." in message
    assert "(15 more)" in message
    assert "backbone_depths: config says [1, 1, 4, 1], checkpoint implies [1, 1, 2, 1]" in message


def test_mismatch_bifpn_blocks(tmp_path: Path, inner_config) -> None:
    message = _mismatch_error(inner_config, tmp_path, {"bifpn_num_blocks": 2})
    assert "bifpn.blocks.1." in message
    assert "bifpn_num_blocks: config says 2, checkpoint implies 1" in message


def test_mismatch_shapes_names_hidden_sizes(tmp_path: Path, inner_config) -> None:
    message = _mismatch_error(inner_config, tmp_path, {"backbone_hidden_sizes": [16, 32, 64, 96]})
    assert "0 missing, 0 unexpected" in message
    assert "mis-shaped" in message and "checkpoint [128" in message and "model [96" in message
    assert "backbone_hidden_sizes: config says [16, 32, 64, 96], checkpoint implies [16, 32, 64, 128]" in message


def test_mismatch_unexpected_and_missing_keys(tmp_path: Path, inner_config, state_dict) -> None:
    edited = dict(state_dict)
    edited["backbone.surprise"] = torch.zeros(1)
    del edited["head_segmask.bias"]
    message = _mismatch_error(inner_config, tmp_path, {}, edited)
    assert "1 missing, 1 unexpected, 0 mis-shaped" in message
    assert "missing: head_segmask.bias" in message
    assert "unexpected: backbone.surprise" in message


def test_config_errors(tmp_path: Path, inner_config) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed")
    with pytest.raises(CheckpointError, match="cannot read PeakNet config"):
        load_config(broken)
    with pytest.raises(CheckpointError, match="cannot read PeakNet config"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(CheckpointError, match="unknown PeakNet config key"):
        load_config({**inner_config, "bifpn_blocks": 3})


# --------------------------------------------------------------------------------------------
# dtype and device
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dtype"), [("bf16", torch.bfloat16), ("half", torch.float16), ("fp32", torch.float32)]
)
def test_dtype_conversion_after_loading(name: str, dtype: torch.dtype, state_dict) -> None:
    model = load_peaknet(CONFIG_YAML, dtype=name)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert model.bifpn.blocks[0].w_q_mask.dtype == torch.bool
    reference = state_dict["head_segmask.weight"].to(dtype)
    assert torch.equal(model.head_segmask.weight, reference)


def test_half_precision_checkpoint_loads_into_float32(tmp_path: Path, state_dict) -> None:
    path = tmp_path / "bf16.safetensors"
    save_file({k: (v.bfloat16() if v.is_floating_point() else v) for k, v in state_dict.items()}, str(path))
    model = load_peaknet(CONFIG_YAML, weights=path, dtype="float32")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.equal(model.head_segmask.weight, state_dict["head_segmask.weight"].bfloat16().float())


def test_unknown_dtype_is_rejected() -> None:
    with pytest.raises(ValueError, match="accepted"):
        load_peaknet(CONFIG_YAML, dtype="int8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_loads_onto_cuda_in_bfloat16(tiny_input, expected_logits) -> None:
    model = load_peaknet(CONFIG_YAML, dtype="bf16", device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    with torch.no_grad():
        logits = model(tiny_input.cuda()).float().cpu().numpy()
    assert np.linalg.norm(logits - expected_logits) / np.linalg.norm(expected_logits) <= 2e-2
    assert (logits.argmax(1) == expected_logits.argmax(1)).mean() >= 0.99
