"""Archive building and Java discovery (real torch-model-archiver, real java)."""

import zipfile
from pathlib import Path

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
        assert {"handler.py", "peaknet_serve/__init__.py", "peaknet_serve/decode/__init__.py",
                "peaknet_serve/model/peaknet.py", "peaknet_serve/serve/handler.py", "peaknet.yaml", "peaknet_tiny.pt",
                "MAR-INF/MANIFEST.json"} <= names
        assert not any("__pycache__" in n for n in names)
        # the worker needs the server modules only: no clients, simulators or tools in the archive
        assert not any(n.startswith(("peaknet_serve/clients/", "peaknet_serve/bridge/", "peaknet_serve/sim/",
                                     "peaknet_serve/launch/"))
                       for n in names)
        packed = yaml.safe_load(archive.read("peaknet.yaml"))
    assert packed["model"]["weights_path"] == "peaknet_tiny.pt"
    assert packed["model"]["peaknet_config"] == yaml.safe_load(TINY.read_text())["model"]["peaknet_config"]


def test_java_17_or_newer_is_found():
    home = find_java_home()
    assert home is not None
    assert java_major_version(str(Path(home) / "bin" / "java")) >= 17


def test_root_config_is_loopback_with_explicit_auth_choice():
    props = read_properties(ROOT / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["disable_token_authorization"] == "true"   # loopback only; Docker keeps it on
    assert props["enable_model_api"] == "false"
    assert int(props["max_request_size"]) >= 16 * 16 * 352 * 384 * 4
    assert props["load_models"] == "peaknet.mar" and props["model_store"] == "model_store"
