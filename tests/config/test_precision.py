"""Precision names and the precedence env > config > device default."""

from __future__ import annotations

import logging

import pytest
import torch

from peaknet_serve.config.precision import (
    ACCEPTED_NAMES,
    PRECISION_ENV_VAR,
    default_dtype,
    dtype_name,
    parse_dtype,
    resolve_precision,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("float", torch.float32),
        ("FP32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        (" BF16 ", torch.bfloat16),
        ("torch.bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
        ("half", torch.float16),
        ("Half", torch.float16),
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float32),
    ],
)
def test_parse_dtype_accepts_names_and_aliases(name, expected: torch.dtype) -> None:
    assert parse_dtype(name) is expected


@pytest.mark.parametrize("name", ["int8", "float64", "fp8", "auto", "", torch.float64, torch.int32])
def test_parse_dtype_rejects_others_naming_the_accepted(name) -> None:
    with pytest.raises(ValueError) as caught:
        parse_dtype(name)
    for accepted in ("float32", "bfloat16", "float16"):
        assert accepted in str(caught.value)


def test_parse_dtype_rejects_non_names() -> None:
    with pytest.raises(TypeError, match="string or torch.dtype"):
        parse_dtype(16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_name_round_trips(dtype: torch.dtype) -> None:
    assert parse_dtype(dtype_name(dtype)) is dtype
    assert dtype_name(dtype) in ACCEPTED_NAMES


def test_dtype_name_rejects_unsupported() -> None:
    with pytest.raises(ValueError):
        dtype_name(torch.float64)


# --------------------------------------------------------------------------------------------
# Precedence
# --------------------------------------------------------------------------------------------


def test_env_overrides_config() -> None:
    assert resolve_precision("float32", CPU, env={PRECISION_ENV_VAR: "bf16"}) is torch.bfloat16


def test_config_overrides_default() -> None:
    assert resolve_precision("fp16", CPU, env={}) is torch.float16
    assert resolve_precision(torch.bfloat16, "cpu", env={}) is torch.bfloat16


@pytest.mark.parametrize("configured", [None, "auto", "AUTO", ""])
def test_default_on_cpu_is_float32(configured) -> None:
    assert resolve_precision(configured, CPU, env={}) is torch.float32


@pytest.mark.parametrize("env_value", ["auto", ""])
def test_auto_env_falls_through_to_config(env_value: str) -> None:
    assert resolve_precision("half", CPU, env={PRECISION_ENV_VAR: env_value}) is torch.float16


def test_reads_process_environment_by_default(monkeypatch) -> None:
    monkeypatch.setenv(PRECISION_ENV_VAR, "fp16")
    assert resolve_precision("float32", CPU) is torch.float16
    monkeypatch.delenv(PRECISION_ENV_VAR)
    assert resolve_precision("float32", CPU) is torch.float32


def test_unknown_env_value_is_an_error_naming_its_source() -> None:
    with pytest.raises(ValueError, match=f"{PRECISION_ENV_VAR}.*unknown precision 'fp8'.*bfloat16"):
        resolve_precision("float32", CPU, env={PRECISION_ENV_VAR: "fp8"})


def test_unknown_config_value_is_an_error_naming_its_source() -> None:
    with pytest.raises(ValueError, match="model config.*unknown precision 'double'"):
        resolve_precision("double", CPU, env={})


# --------------------------------------------------------------------------------------------
# Device defaults
# --------------------------------------------------------------------------------------------


def test_default_is_bfloat16_on_modern_cuda(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="peaknet_serve.config.precision"):
        assert default_dtype("cuda", cuda_bf16_supported=True) is torch.bfloat16
    assert not caplog.records


def test_default_is_float16_with_warning_on_older_cuda(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="peaknet_serve.config.precision"):
        assert default_dtype("cuda", cuda_bf16_supported=False) is torch.float16
    assert any("float16" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("device_type", ["cpu", "mps"])
def test_default_elsewhere_is_float32(device_type: str) -> None:
    assert default_dtype(device_type, cuda_bf16_supported=True) is torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_default_on_this_gpu() -> None:
    major, _ = torch.cuda.get_device_capability()
    expected = torch.bfloat16 if major >= 8 else torch.float16
    assert resolve_precision(None, torch.device("cuda"), env={}) is expected
