#!/usr/bin/env python3
"""Build the TorchServe archive ``peaknet.mar``: the handler package plus one PeakNet model.

    python scripts/build_mar.py                                  # bundled model -> model_store/
    python scripts/build_mar.py --peaknet-config my.yaml --weights my.safetensors --export-path /tmp/store

The archive holds ``peaknet_handler.py`` (the entry point), the ``handler/`` package, the model's
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

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "model_store" / "peaknet" / "peaknet.yaml"


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
    """Lay out the archive's extra files in ``stage``: handler/, peaknet.yaml, the weights."""
    shutil.copytree(ROOT / "handler", stage / "handler",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    document = yaml.safe_load(peaknet_config.read_text())
    document.setdefault("model", {})["weights_path"] = weights.name
    (stage / "peaknet.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    shutil.copy2(weights, stage / weights.name)


def build(peaknet_config: Path, weights: Path | None, model_config: Path, export_path: Path,
          model_name: str = "peaknet", version: str = "1.0") -> Path:
    weights = model_weights_path(peaknet_config, weights)
    if not weights.is_file():
        raise SystemExit(f"weights file not found: {weights}")
    export_path.mkdir(parents=True, exist_ok=True)
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    with tempfile.TemporaryDirectory(prefix="peaknet-mar-") as tmp:
        stage = Path(tmp) / "extra"
        stage.mkdir()
        stage_archive_files(stage, peaknet_config, weights)
        subprocess.run([
            str(archiver) if archiver.exists() else "torch-model-archiver",
            "--model-name", model_name, "--version", version,
            "--handler", str(ROOT / "handler" / "peaknet_handler.py"),
            "--extra-files", str(stage),
            "--config-file", str(model_config),
            "--export-path", str(export_path), "--force",
        ], check=True)
    return export_path / f"{model_name}.mar"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peaknet-config", type=Path, default=DEFAULT_MODEL,
                        help="PeakNet YAML in the public pipeline layout (default: the bundled model)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="checkpoint (.pt/.bin/.safetensors); default: the YAML's weights_path")
    parser.add_argument("--model-config", type=Path, default=ROOT / "model-config.yaml")
    parser.add_argument("--export-path", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model-name", default="peaknet")
    args = parser.parse_args()
    mar = build(args.peaknet_config, args.weights, args.model_config, args.export_path, args.model_name)
    print(f"wrote {mar} ({mar.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
