"""Shared fixtures of the handler tests."""

import shutil
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parents[1] / "fixtures" / "upstream"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An unpacked archive's model directory: peaknet.yaml + the fixture checkpoint."""
    directory = tmp_path_factory.mktemp("model_dir")
    shutil.copy(FIXTURE / "peaknet_tiny.pt", directory / "peaknet_tiny.pt")
    shutil.copy(FIXTURE / "peaknet_tiny.yaml", directory / "peaknet.yaml")
    return directory
