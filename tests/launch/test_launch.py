"""Archive building and Java discovery (real torch-model-archiver, real java)."""

import zipfile
from pathlib import Path

import pytest
import yaml

from peaknet_serve.launch.archive import build
from peaknet_serve.launch.java import find_java_home, java_major_version
from peaknet_serve.launch.server import read_properties

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "upstream" / "peaknet_tiny.yaml"


def test_archive_holds_the_server_package_model_and_config(tmp_path):
    mar = build(TINY, None, ROOT / "model-config.yaml", tmp_path, model_name="peaknet")
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        assert {
            "handler.py",
            "peaknet_serve/__init__.py",
            "peaknet_serve/decode/__init__.py",
            "peaknet_serve/model/peaknet.py",
            "peaknet_serve/serve/handler.py",
            "peaknet.yaml",
            "peaknet_tiny.pt",
            "MAR-INF/MANIFEST.json",
        } <= names
        assert not any("__pycache__" in n for n in names)
        # the worker needs the server modules only: no clients, simulators or tools in the archive
        assert not any(
            n.startswith(
                ("peaknet_serve/clients/", "peaknet_serve/bridge/", "peaknet_serve/sim/", "peaknet_serve/launch/")
            )
            for n in names
        )
        packed = yaml.safe_load(archive.read("peaknet.yaml"))
    assert packed["model"]["weights_path"] == "peaknet_tiny.pt"
    assert packed["model"]["peaknet_config"] == yaml.safe_load(TINY.read_text())["model"]["peaknet_config"]


def _fake_java_home(root: Path, version_line: str) -> Path:
    """A JAVA_HOME whose ``bin/java -version`` prints ``version_line`` on stderr, as java does."""
    (root / "bin").mkdir(parents=True)
    java = root / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return root


@pytest.mark.parametrize(
    "line, major",
    [
        ('openjdk version "17.0.9" 2023-10-17', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("no version here", None),
    ],
)
def test_java_major_version_reads_old_and_new_version_strings(tmp_path, line, major):
    home = _fake_java_home(tmp_path / "jdk", line)
    assert java_major_version(str(home / "bin" / "java")) == major


def test_java_home_skips_a_java_older_than_17(tmp_path, monkeypatch):
    old = _fake_java_home(tmp_path / "jdk8", 'java version "1.8.0_392"')
    new = _fake_java_home(tmp_path / "jdk17", 'openjdk version "17.0.9" 2023-10-17')
    monkeypatch.setenv("PATH", f"{new / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("JAVA_HOME", str(old))
    assert find_java_home() == str(new)  # JAVA_HOME too old: the java on PATH is used
    monkeypatch.setenv("JAVA_HOME", str(new))
    assert find_java_home() == str(new)


def test_root_config_is_loopback_with_explicit_auth_choice():
    props = read_properties(ROOT / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["disable_token_authorization"] == "false"  # no local user may scale or load without a key
    assert props["enable_model_api"] == "false" and props["allowed_urls"] == "^$"
    assert int(props["max_request_size"]) >= 16 * 16 * 352 * 384 * 4
    assert props["load_models"] == "peaknet.mar" and props["model_store"] == "model_store"
