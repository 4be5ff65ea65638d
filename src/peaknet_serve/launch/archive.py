#!/usr/bin/env python3
"""Build the TorchServe archive ``peaknet.mar``: the server package plus one PeakNet model.

    peaknet-archive                                  # bundled model -> model_store/
    peaknet-archive --peaknet-config my.yaml --weights my.safetensors --export-path /tmp/store

The archive holds ``handler.py`` (the entry point, :mod:`peaknet_serve.serve.handler`), the server's part
of the ``peaknet_serve`` package, the model's
YAML as ``peaknet.yaml`` (with ``weights_path`` pointing at the packed weights file) and the
weights. ``model-config.yaml`` (TorchServe batch/worker settings + the ``handler:`` section) goes in
as the archive's config file.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from peaknet_serve.resources import BUNDLED_MODEL_CONFIG, MODEL_CONFIG, MODEL_STORE

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Sub-packages the worker never imports: the torch-free clients and bridge, simulators, evaluation, geometry
# files and tooling.
NOT_SERVED = {"clients", "bridge", "sim", "eval", "training", "launch", "geometry"}


def _server_files_only(directory: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
    if Path(directory) == PACKAGE_DIR:
        skipped |= NOT_SERVED & set(names)
    return skipped


def model_weights_path(peaknet_config: Path, weights: Path | None) -> Path:
    """The checkpoint to pack: ``weights`` if given, else the YAML's ``model.weights_path``."""
    if weights is not None:
        return weights
    document = yaml.safe_load(peaknet_config.read_text())
    relative = (document.get("model") or {}).get("weights_path")
    if not relative:
        raise SystemExit(f"{peaknet_config} names no model.weights_path; pass --weights")
    path = Path(relative)
    return path if path.is_absolute() else peaknet_config.parent / path


def stage_archive_files(stage: Path, peaknet_config: Path, weights: Path) -> None:
    """Lay out the archive's extra files in ``stage``: peaknet_serve/, peaknet.yaml, the weights."""
    shutil.copytree(PACKAGE_DIR, stage / "peaknet_serve", ignore=_server_files_only)
    document = yaml.safe_load(peaknet_config.read_text())
    document.setdefault("model", {})["weights_path"] = weights.name
    (stage / "peaknet.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    shutil.copy2(weights, stage / weights.name)


def build(
    peaknet_config: Path,
    weights: Path | None,
    model_config: Path,
    export_path: Path,
    model_name: str = "peaknet",
    version: str = "1.0",
) -> Path:
    weights = model_weights_path(peaknet_config, weights)
    if not weights.is_file():
        raise SystemExit(f"weights file not found: {weights}")
    export_path.mkdir(parents=True, exist_ok=True)
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    with tempfile.TemporaryDirectory(prefix="peaknet-mar-") as tmp:
        stage = Path(tmp) / "extra"
        stage.mkdir()
        stage_archive_files(stage, peaknet_config, weights)
        subprocess.run(
            [
                str(archiver) if archiver.exists() else "torch-model-archiver",
                "--model-name",
                model_name,
                "--version",
                version,
                "--handler",
                str(PACKAGE_DIR / "serve" / "handler.py"),
                "--extra-files",
                str(stage),
                "--config-file",
                str(model_config),
                "--export-path",
                str(export_path),
                "--force",
            ],
            check=True,
        )
    return export_path / f"{model_name}.mar"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--peaknet-config",
        type=Path,
        default=BUNDLED_MODEL_CONFIG,
        help="PeakNet YAML in the public pipeline layout (default: the bundled model)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="checkpoint (.pt/.bin/.safetensors); default: the YAML's weights_path",
    )
    parser.add_argument("--model-config", type=Path, default=MODEL_CONFIG)
    parser.add_argument("--export-path", type=Path, default=MODEL_STORE)
    parser.add_argument("--model-name", default="peaknet")
    args = parser.parse_args()
    mar = build(args.peaknet_config, args.weights, args.model_config, args.export_path, args.model_name)
    print(f"wrote {mar} ({mar.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
