"""HandlerSettings: YAML section + env overrides, strict about typos."""

from pathlib import Path

import pytest

from peaknet_serve.config.settings import HandlerSettings, parse_bool, parse_fraction, parse_threshold


def test_defaults_and_yaml_values():
    s = HandlerSettings.from_mapping(
        {"max_batch_panels": 32, "threshold": 0.7, "max_frames": 4, "panel_buckets": [32, 16, 64]}, env={}
    )
    assert s.max_batch_panels == 32 and s.threshold == 0.7 and s.limits.max_frames == 4
    assert s.buckets() == (16, 32)  # buckets above max_batch_panels are dropped
    assert HandlerSettings.from_mapping(None, env={}).config == "peaknet.yaml"


def test_env_overrides_yaml():
    env = {
        "PEAKNET_CONFIG": "/models/cfg.yaml",
        "PEAKNET_WEIGHTS": "w.safetensors",
        "PEAKNET_MAX_BATCH_PANELS": "8",
        "PEAKNET_THRESHOLD": "0.9",
        "PEAKNET_COMPILE": "true",
    }
    s = HandlerSettings.from_mapping({"max_batch_panels": 64, "threshold": 0.5}, env=env)
    assert (s.config, s.weights, s.max_batch_panels, s.threshold, s.compile) == (
        "/models/cfg.yaml",
        "w.safetensors",
        8,
        0.9,
        True,
    )
    assert HandlerSettings.from_mapping({"threshold": 0.5}, env={"PEAKNET_THRESHOLD": ""}).threshold is None


def test_paths_resolve_against_model_dir():
    s = HandlerSettings.from_mapping({"weights": "w.pt"}, env={"PEAKNET_CONFIG": "/abs/c.yaml"})
    assert s.resolve_path(s.weights, Path("/m")) == Path("/m/w.pt")
    assert s.resolve_path(s.config, Path("/m")) == Path("/abs/c.yaml")
    assert s.resolve_path(None, Path("/m")) is None


@pytest.mark.parametrize(
    "section",
    [
        {"max_batch_panel": 4},
        {"max_batch_panels": 0},
        {"threshold": 1.5},
        {"compile": "maybe"},
        {"gpu_memory_fraction": 0},
        {"gpu_memory_fraction": 1.5},
        {"gpu_wait": "yield"},
    ],
)
def test_bad_values_are_errors(section):
    with pytest.raises(ValueError):
        HandlerSettings.from_mapping(section, env={})


def test_parsers():
    assert parse_bool("Yes") and not parse_bool("off") and parse_bool(True)
    assert parse_threshold(None) is None and parse_threshold("null") is None and parse_threshold("0.25") == 0.25


def test_gpu_memory_fraction_from_yaml_and_env():
    assert HandlerSettings.from_mapping(None, env={}).gpu_memory_fraction is None
    assert HandlerSettings.from_mapping({"gpu_memory_fraction": 0.25}, env={}).gpu_memory_fraction == 0.25
    env = {"PEAKNET_GPU_MEMORY_FRACTION": "0.5"}
    assert HandlerSettings.from_mapping({"gpu_memory_fraction": 0.25}, env=env).gpu_memory_fraction == 0.5
    assert parse_fraction("none") is None and parse_fraction("1") == 1.0


def test_torch_threads_auto_or_positive():
    assert HandlerSettings.from_mapping(None, env={}).torch_threads is None
    assert HandlerSettings.from_mapping({"torch_threads": "auto"}, env={}).torch_threads is None
    assert HandlerSettings.from_mapping({"torch_threads": 4}, env={"PEAKNET_TORCH_THREADS": "2"}).torch_threads == 2
    with pytest.raises(ValueError):
        HandlerSettings.from_mapping({"torch_threads": 0}, env={})


def test_autocast_on_by_default_and_switchable_by_env():
    assert HandlerSettings.from_mapping(None, env={}).autocast is True
    assert HandlerSettings.from_mapping({"autocast": False}, env={}).autocast is False
    assert HandlerSettings.from_mapping({"autocast": True}, env={"PEAKNET_AUTOCAST": "false"}).autocast is False
    with pytest.raises(ValueError):
        HandlerSettings.from_mapping({"autocast": "sometimes"}, env={})


def test_depthwise_padding_on_by_default_and_switchable_by_env():
    assert HandlerSettings.from_mapping(None, env={}).depthwise_padding is True
    assert HandlerSettings.from_mapping({"depthwise_padding": False}, env={}).depthwise_padding is False
    env = {"PEAKNET_DEPTHWISE_PADDING": "false"}
    assert HandlerSettings.from_mapping({"depthwise_padding": True}, env=env).depthwise_padding is False


def test_hit_threshold_and_json_limit_from_yaml_and_env():
    assert HandlerSettings.from_mapping(None, env={}).hit_min_peaks == 10
    assert HandlerSettings.from_mapping({"hit_min_peaks": 25}, env={}).hit_min_peaks == 25
    assert HandlerSettings.from_mapping({"hit_min_peaks": 25}, env={"PEAKNET_HIT_MIN_PEAKS": "4"}).hit_min_peaks == 4
    for bad in (0, -3, "many"):
        with pytest.raises(ValueError):
            HandlerSettings.from_mapping({"hit_min_peaks": bad}, env={})
    assert HandlerSettings.from_mapping({"max_json_bytes": 1024}, env={}).limits.max_json_bytes == 1024


def test_model_label_from_env():
    assert (
        HandlerSettings.from_mapping({"model_label": "peaknet-sim"}, env={"PEAKNET_MODEL_LABEL": "mine"}).model_label
        == "mine"
    )
    assert HandlerSettings.from_mapping({"model_label": "peaknet-sim"}, env={}).model_label == "peaknet-sim"


def test_peak_labelling_cap_from_yaml_and_env():
    assert HandlerSettings().max_mask_fraction == 0.25 and HandlerSettings().max_label_iterations == 64
    assert HandlerSettings.from_mapping({"max_mask_fraction": 0.5}, env={}).max_mask_fraction == 0.5
    assert HandlerSettings.from_mapping({"max_mask_fraction": None}, env={}).max_mask_fraction is None
    assert HandlerSettings.from_mapping({}, env={"PEAKNET_MAX_MASK_FRACTION": "0.1"}).max_mask_fraction == 0.1
    assert HandlerSettings.from_mapping({}, env={"PEAKNET_MAX_MASK_FRACTION": ""}).max_mask_fraction is None
    assert HandlerSettings.from_mapping({"max_label_iterations": None}, env={}).max_label_iterations is None
    for bad in ({"max_mask_fraction": 0}, {"max_mask_fraction": 1.5}, {"max_label_iterations": 0}):
        with pytest.raises(ValueError):
            HandlerSettings.from_mapping(bad, env={})
    with pytest.raises(ValueError, match="max_mask_fraction"):
        HandlerSettings.from_mapping({}, env={"PEAKNET_MAX_MASK_FRACTION": "2"})


def test_compile_cache_on_by_default_with_env_directory():
    assert HandlerSettings().compile_cache is True and HandlerSettings().compile_cache_dir is None
    env = {"PEAKNET_COMPILE_CACHE": "false", "PEAKNET_CACHE_DIR": "/var/cache/peaknet"}
    settings = HandlerSettings.from_mapping({"compile_cache_dir": "/elsewhere"}, env=env)
    assert settings.compile_cache is False and settings.compile_cache_dir == "/var/cache/peaknet"


def test_compile_backend_auto_by_default_inductor_or_aoti_by_yaml_or_env():
    assert HandlerSettings().compile_backend == "auto"
    assert HandlerSettings.from_mapping(None, env={}).compile_backend == "auto"
    assert HandlerSettings.from_mapping({"compile_backend": "AOTI"}, env={}).compile_backend == "aoti"
    env = {"PEAKNET_COMPILE_BACKEND": "inductor"}
    assert HandlerSettings.from_mapping({"compile_backend": "aoti"}, env=env).compile_backend == "inductor"
    env = {"PEAKNET_COMPILE_BACKEND": " Auto "}
    assert HandlerSettings.from_mapping({"compile_backend": "inductor"}, env=env).compile_backend == "auto"
    assert HandlerSettings.from_mapping({"compile_backend": "auto"}, env={}).compile_backend == "auto"
    env = {"PEAKNET_COMPILE_BACKEND": ""}  # empty: the YAML's value stays
    assert HandlerSettings.from_mapping({"compile_backend": "aoti"}, env=env).compile_backend == "aoti"
    with pytest.raises(ValueError, match="compile_backend"):
        HandlerSettings.from_mapping({"compile_backend": "tensorrt"}, env={})


def test_gpu_wait_spins_by_default_and_blocks_by_yaml_or_env():
    assert HandlerSettings().gpu_wait == "spin"
    assert HandlerSettings.from_mapping({"gpu_wait": "Block"}, env={}).gpu_wait == "block"
    assert HandlerSettings.from_mapping({"gpu_wait": "spin"}, env={"PEAKNET_GPU_WAIT": "block"}).gpu_wait == "block"
    assert HandlerSettings.from_mapping({"gpu_wait": "block"}, env={"PEAKNET_GPU_WAIT": ""}).gpu_wait == "block"
    with pytest.raises(ValueError, match="gpu_wait"):
        HandlerSettings.from_mapping(None, env={"PEAKNET_GPU_WAIT": "poll"})


def test_bad_pixel_mask_from_yaml_and_env():
    assert HandlerSettings.from_mapping({}, env={}).bad_pixel_mask is None
    yaml_only = HandlerSettings.from_mapping({"bad_pixel_mask": "epix_mask.npy"}, env={})
    assert yaml_only.bad_pixel_mask == "epix_mask.npy"
    env = {"PEAKNET_BAD_PIXEL_MASK": "/masks/run12.h5::/mask"}
    assert (
        HandlerSettings.from_mapping({"bad_pixel_mask": "epix_mask.npy"}, env=env).bad_pixel_mask
        == env["PEAKNET_BAD_PIXEL_MASK"]
    )
    cleared = HandlerSettings.from_mapping({"bad_pixel_mask": "epix_mask.npy"}, env={"PEAKNET_BAD_PIXEL_MASK": ""})
    assert cleared.bad_pixel_mask is None
