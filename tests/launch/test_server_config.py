"""The loopback config peaknet-serve writes, checked with Java itself: ``java.util.Properties`` reads the
file and ``allowed_urls`` is matched exactly as TorchServe 0.12 matches it
(``Pattern.compile(regex, CASE_INSENSITIVE).matcher(url).matches()`` for each comma-separated regex)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from peaknet_serve.launch.java import find_java_home
from peaknet_serve.launch.server import (
    allowed_urls_pattern,
    effective_config,
    read_properties,
    write_loopback_config,
)

ROOT = Path(__file__).resolve().parents[2]

MATCHER = """
import java.io.FileReader;
import java.util.Properties;
import java.util.regex.Pattern;

public class Matcher {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (FileReader reader = new FileReader(args[0])) { props.load(reader); }
        String allowed = props.getProperty("allowed_urls", "file://.*|http(s)?://.*");
        for (int i = 1; i < args.length; i++) {
            boolean match = false;
            for (String regex : allowed.split(",")) {
                match |= Pattern.compile(regex, Pattern.CASE_INSENSITIVE).matcher(args[i]).matches();
            }
            System.out.println(match ? "allowed" : "refused");
        }
    }
}
"""


def java_verdicts(config: Path, urls: list[str], tmp_path: Path) -> list[str]:
    java_home = find_java_home()
    if java_home is None:
        pytest.fail("needs Java 17+")
    source = tmp_path / "Matcher.java"
    source.write_text(MATCHER)
    result = subprocess.run(
        [str(Path(java_home) / "bin" / "java"), str(source), str(config), *urls],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_allowed_urls_admit_only_archives_directly_in_the_model_store(tmp_path):
    store = tmp_path / "odd dir, with.dots+[x]" / "model_store"
    store.mkdir(parents=True)
    config = tmp_path / "config.properties"
    write_loopback_config(config, store, ["peaknet"])
    urls = {
        f"file://{store}/peaknet.mar": "allowed",
        f"file://{store}/other_model-2.mar": "allowed",
        f"file://{store}/sub/peaknet.mar": "refused",  # not directly in the store
        f"file://{store}/peaknet.war": "refused",  # workflow archives: never
        f"file://{store}/peaknet.mar.py": "refused",
        f"file://{str(store).upper()}/peaknet.mar": "refused",  # no case folding
        f"file://{store}x/peaknet.mar": "refused",
        "file:///elsewhere/model_store/peaknet.mar": "refused",  # any other folder of that name
        f"file://{tmp_path}/odd dirX with.dots+[x]/model_store/peaknet.mar": "refused",  # ',' is literal
        f"http://example.org{store}/peaknet.mar": "refused",
        f"https://example.org/{store.name}/peaknet.mar": "refused",
    }
    assert java_verdicts(config, list(urls), tmp_path) == list(urls.values())


def test_loopback_config_keeps_tokens_on_unless_told(tmp_path):
    config = tmp_path / "config.properties"
    urls = write_loopback_config(config, tmp_path, ["peaknet"])
    props = read_properties(config)
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert all(url.startswith("http://127.0.0.1:") for url in urls.values())
    write_loopback_config(config, tmp_path, ["peaknet"], token_auth=False)
    assert read_properties(config)["disable_token_authorization"] == "true"


def test_effective_config_anchors_the_shipped_config(tmp_path):
    running = effective_config(ROOT / "config.properties", tmp_path / "run")
    props = read_properties(running)
    store = (ROOT / "model_store").resolve()
    assert props["model_store"] == str(store)
    assert props["allowed_urls"] == allowed_urls_pattern(store).replace("\\", "\\\\")  # escaped for the file
    assert props["disable_token_authorization"] == "false"
    verdicts = java_verdicts(running, [f"file://{store}/peaknet.mar", "file:///tmp/model_store/peaknet.mar"], tmp_path)
    assert verdicts == ["allowed", "refused"]
    # the shipped file alone admits no URL at all
    assert java_verdicts(ROOT / "config.properties", [f"file://{store}/peaknet.mar"], tmp_path) == ["refused"]


def test_every_port_of_a_loopback_config_is_distinct(tmp_path):
    """The seven ports TorchServe binds (HTTP, gRPC, worker and distribution bases) are chosen
    together, so no two of them coincide and no one of them can clash with another at start-up."""
    for attempt in range(20):
        config = tmp_path / f"config{attempt}.properties"
        write_loopback_config(config, tmp_path, ["peaknet"])
        props = read_properties(config)
        ports = [props[f"{name}_address"].rsplit(":", 1)[1] for name in ("inference", "management", "metrics")]
        ports += [props[key] for key in ("grpc_inference_port", "grpc_management_port")]
        ports += [props[key] for key in ("initial_worker_port", "initial_distribution_port")]
        assert len(set(ports)) == 7, props
