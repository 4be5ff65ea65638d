#!/usr/bin/env python3
"""Write a random-weight checkpoint for a PeakNet config (benchmarks of big configs without weights).

    python -m benchmarks.make_random_checkpoint configs/peaknet-33m.yaml /tmp/p33
    python -m benchmarks.make_random_checkpoint configs/peaknet-33m.yaml /tmp/p33-sparse --mask-fraction 0.005

Writes OUT/peaknet.yaml (weights_path: peaknet.safetensors) and OUT/peaknet.safetensors. Random
weights find no real peaks: use such a model for speed measurements only. As drawn, their peak masks
mark a large part of every panel, which no trained model does; ``--mask-fraction F`` lowers the
peak-class bias of the segmentation head so that the mask marks a fraction ``F`` of the pixels of
simulated ePix10k2M frames (the bundled trained model marks 0.5-1% of peaksim's), which makes the
post-processing cost what it costs with a trained model.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.clients.payloads import detector_frames, geometry_from_name
from peaknet_serve.device.preprocess import network_input, sanitize
from peaknet_serve.model.peaknet import PeakNet


@torch.inference_mode()
def peak_scores(model: PeakNet, frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """float32 peak scores (logit1 - logit0) of every pixel of ``frames`` (N, P, H, W), flattened."""
    scores = []
    for frame in frames:
        image, _ = sanitize(torch.from_numpy(frame.astype(np.float32)).to(device))
        scores.append(model.forward_peak_score(network_input(image, torch.float32)).float().flatten())
    return torch.cat(scores)


def calibrate_mask_fraction(model: PeakNet, frames: np.ndarray, fraction: float, device: torch.device) -> float:
    """Shift the head's peak-class bias so that ``score > 0`` on ``fraction`` of the pixels of ``frames``.

    The score is ``conv(fused, w1 - w0) + (b1 - b0)`` before a bilinear upsampling, which keeps a
    constant shift constant, so subtracting the score's ``1 - fraction`` quantile from ``b1`` moves
    that quantile to 0. Returns the fraction measured after the shift.
    """
    scores = peak_scores(model, frames, device)
    sample = scores[torch.randperm(scores.numel(), device=scores.device)[: 1 << 24]]  # quantile's size limit
    shift = torch.quantile(sample, 1.0 - fraction).item()
    with torch.no_grad():
        model.head_segmask.bias[1] -= shift
    return (peak_scores(model, frames, device) > 0).float().mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mask-fraction",
        type=float,
        default=None,
        help="calibrate the head so that the peak mask marks this fraction of ePix10k2M pixels",
    )
    parser.add_argument("--calibration-frames", type=int, default=4, help="simulated frames for --mask-fraction")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_peaknet(args.config, random_init=True, device=device)
    note = "random weights"
    if args.mask_fraction is not None:
        if not 0.0 < args.mask_fraction < 1.0:
            raise SystemExit("--mask-fraction must lie in (0, 1)")
        frames = detector_frames(geometry_from_name("epix10k2m"), args.calibration_frames, "uint16", seed=args.seed)
        measured = calibrate_mask_fraction(model, frames, args.mask_fraction, device)
        note += f", head calibrated: the mask marks {measured:.4%} of {len(frames)} simulated ePix10k2M frames"
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(args.out / "peaknet.safetensors")
    )
    document = yaml.safe_load(args.config.read_text())
    document["model"]["weights_path"] = "peaknet.safetensors"
    (args.out / "peaknet.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    print(f"wrote {args.out}/peaknet.yaml + peaknet.safetensors ({note})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
