#!/usr/bin/env python3
"""Copy a TorchServe archive with some top-level keys of its model-config.yaml replaced.

TorchServe lets the archive's model-config.yaml win over config.properties for ``minWorkers``,
``maxWorkers``, ``batchSize`` and ``maxBatchDelay``, so the container entrypoint sets those by
writing a configured copy of the image's archive. Every other member (handler, weights, the
``handler:`` section of the YAML) is copied unchanged.

    configure_mar.py SOURCE.mar DEST.mar --set minWorkers=2 --set batchSize=8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

MANIFEST = "MAR-INF/MANIFEST.json"
DEFAULT_CONFIG_NAME = "model-config.yaml"
SETTABLE = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout")


def parse_settings(pairs: Sequence[str]) -> dict[str, int]:
    """``["batchSize=8"]`` -> ``{"batchSize": 8}``; only known keys, non-negative integers."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in SETTABLE:
            raise ValueError(f"--set {pair!r}: expected KEY=INT with KEY one of {', '.join(SETTABLE)}")
        if not value.isdigit():
            raise ValueError(f"--set {pair!r}: {value!r} is not a non-negative integer")
        settings[key] = int(value)
    return settings


def configure_archive(source: Path, dest: Path, settings: Mapping[str, int]) -> dict:
    """Write ``dest``: ``source`` with ``settings`` merged into its model config; returns that config."""
    with zipfile.ZipFile(source) as archive:
        manifest = json.loads(archive.read(MANIFEST))
        config_name = manifest.setdefault("model", {}).get("configFile") or DEFAULT_CONFIG_NAME
        manifest["model"]["configFile"] = config_name
        names = archive.namelist()
        config = yaml.safe_load(archive.read(config_name)) if config_name in names else {}
        config = {**(config or {}), **settings}
        partial = dest.with_name(f".{dest.name}.partial")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as out:
            for info in archive.infolist():
                if info.filename == MANIFEST:
                    out.writestr(info, json.dumps(manifest, indent=2))
                elif info.filename == config_name:
                    out.writestr(info, yaml.safe_dump(config, sort_keys=False))
                else:
                    with archive.open(info) as member, out.open(info, "w") as copy:
                        while block := member.read(1 << 24):
                            copy.write(block)
            if config_name not in names:
                out.writestr(config_name, yaml.safe_dump(config, sort_keys=False))
    os.replace(partial, dest)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=INT")
    args = parser.parse_args(argv)
    try:
        settings = parse_settings(args.settings)
        config = configure_archive(args.source, args.dest, settings)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        print(f"configure_mar: {args.source}: {err}", file=sys.stderr)
        return 1
    shown = ", ".join(f"{k}={config.get(k)}" for k in SETTABLE if k in config)
    print(f"configure_mar: {args.dest} ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
