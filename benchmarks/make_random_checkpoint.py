#!/usr/bin/env python3
"""Write a random-weight checkpoint for a PeakNet config (benchmarks of big configs without weights).

    python -m benchmarks.make_random_checkpoint configs/peaknet-33m.yaml /tmp/p33

Writes OUT/peaknet.yaml (weights_path: peaknet.safetensors) and OUT/peaknet.safetensors. Random
weights find no real peaks: use such a model for speed measurements only.
"""

import argparse
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from peaknet_serve.checkpoint import load_peaknet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = load_peaknet(args.config, random_init=True)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out / "peaknet.safetensors"))
    document = yaml.safe_load(args.config.read_text())
    document["model"]["weights_path"] = "peaknet.safetensors"
    (args.out / "peaknet.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    print(f"wrote {args.out}/peaknet.yaml + peaknet.safetensors (random weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
