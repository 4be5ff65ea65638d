"""ServingMode.from_settings: float8 pointwise layers only where they can run, refused elsewhere."""

import pytest
import torch

from peaknet_serve.config.mode import ServingMode
from peaknet_serve.config.settings import HandlerSettings

CUDA = torch.device("cuda", 0)


@pytest.fixture
def gpu(monkeypatch):
    """Pretend the CUDA device has the compute capability the test sets (no GPU needed)."""

    def set_capability(major: int, minor: int) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU sm_{major}{minor}")

    return set_capability


def settings(**values) -> HandlerSettings:
    return HandlerSettings.from_mapping(values, env={})


def test_float8_is_off_by_default_and_keys_stay_as_they_were(gpu):
    gpu(9, 0)
    mode = ServingMode.from_settings(settings(precision="bf16", compile=True), CUDA, env={})
    assert mode.float8_pointwise is False
    assert mode.optional_key_parts() == {}
    assert "float8" not in mode.describe()


@pytest.mark.parametrize("capability", [(8, 9), (9, 0), (10, 0)])
def test_float8_on_a_float8_gpu_in_reduced_precision(gpu, capability):
    gpu(*capability)
    for precision in ("bf16", "fp16"):
        mode = ServingMode.from_settings(settings(precision=precision, float8_pointwise=True), CUDA, env={})
        assert mode.float8_pointwise is True
        assert mode.optional_key_parts() == {"float8_pointwise": True}
        assert mode.describe().endswith("float8 pointwise")


def test_float8_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match=r"float8_pointwise: .*CUDA GPU.*PEAKNET_FLOAT8=false"):
        ServingMode.from_settings(settings(float8_pointwise=True), torch.device("cpu"), env={})


def test_float8_is_refused_below_compute_capability_8_9(gpu):
    gpu(8, 6)
    with pytest.raises(ValueError, match=r"compute capability >= 8\.9.*sm_86 has 8\.6"):
        ServingMode.from_settings(settings(precision="bf16", float8_pointwise=True), CUDA, env={})


def test_float8_is_refused_with_float32_precision(gpu):
    gpu(9, 0)
    with pytest.raises(ValueError, match="bfloat16 or float16 precision, not float32"):
        ServingMode.from_settings(
            settings(precision="bf16", float8_pointwise=True), CUDA, {"PEAKNET_PRECISION": "fp32"}
        )
