#!/usr/bin/env python
"""Train a compact PeakNet on simulated SFX frames (peaknet_serve.sim.peaksim) with the public PeakNet's focal loss.

Data are simulated on the fly in DataLoader workers (all four detector geometries, wide parameter
ranges) and normalised with the server's own preprocessing. Writes, into ``--out``:

* ``peaknet.safetensors``  float32 state dict (public PeakNet key layout)
* ``peaknet.yaml``         config in the public pipeline's layout, ``weights_path`` next to it
* ``train_loss.json``      per-step loss, learning rate and wall time
* ``train_loss.png``       the loss curve

Example (GPU)::

    peaknet-train --out /tmp/run --steps 3000 --batch-size 48 --workers 15

``--artefact-probability p`` adds, to each frame with probability p per kind, a liquid-jet streak,
a beamstop support arm and common-mode offsets (:mod:`peaknet_serve.sim.peaksim.artefacts`); the default 0 simulates
clean frames (no artefact random numbers drawn).

``--coverage`` adds the wider conditions of :mod:`peaknet_serve.sim.peaksim.coverage` (sub-pixel
spots, photon-counting and noisy detectors, very low and high background, saturation, gain
switching, bright point spots on nearly empty frames); ``--target-snr s`` makes every spot of integrated SNR >= ``s`` (and a peak pixel of
SNR >= 1) a peak to learn, below the truth's bars of 6 and 2, so the model learns what a local-SNR peak
finder tuned for recall reports (:func:`peaknet_serve.sim.peaksim.frame.simulate_frame`).

``--target-ring r`` (0..3, default 1) ignores in the loss the background pixels within r pixels
(a (2r+1) x (2r+1) square) of every peak pixel (:func:`peaknet_serve.training.dataset.ring_ignore`):
the network's stride-4, bilinearly upsampled score cannot peak on one pixel alone, and one-pixel
targets with background all around teach it to miss sharp spots. ``--ring-max-pixels K`` rings only
the peaks of at most K pixels, so broad spots keep their outlines. ``--target-ring 0`` gives the
targets as simulated, as in the training of the bundled weights.

``--learned-upsample`` gives the head the public PeakNet's learned ConvTranspose upsample
(``uses_learned_upsample``): a full-resolution residual added to the bilinear logits, so that a
one-pixel spot can score above its neighbours without an ignore ring. Started from weights without
it (``--init``), the residual starts at zero and the first step's logits are those weights' logits.

Example (GPU), from the bundled weights with the wider conditions::

    peaknet-train --out $OUT/train --steps 100000 --time-limit 420 --batch-size 64 --crops-per-frame 32 \
        --workers 15 --lr 6e-4 --warmup 20 --seed 4 --init model_store/peaknet/peaknet.safetensors \
        --artefact-probability 0.3 --coverage --target-snr 4.5 --target-ring 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from peaknet_serve.model.peaknet import PeakNet, PeakNetConfig, count_parameters
from peaknet_serve.sim.peaksim.coverage import Coverage
from peaknet_serve.training.dataset import DEFAULT_TARGET_RING, IGNORE_INDEX, MAX_TARGET_RING, SimulatedCrops

# Public PeakNet training config (train/hydra_config/train_config/base.yaml): loss.focal.
FOCAL_ALPHA = 1.0
FOCAL_GAMMA = 2.0

MODEL_PRESETS = {
    # Two BiFPN blocks of 128 features: ~3.5 M parameters, ~14 MB in float32 safetensors.
    "compact": {
        "backbone_hidden_sizes": [32, 64, 128, 256],
        "backbone_depths": [2, 2, 6, 2],
        "bifpn_num_blocks": 2,
        "bifpn_num_features": 128,
        "seg_out_channels": 128,
    },
    # For CPU smoke runs only.
    "tiny": {
        "backbone_hidden_sizes": [16, 32, 64, 128],
        "backbone_depths": [1, 1, 2, 1],
        "bifpn_num_blocks": 1,
        "bifpn_num_features": 32,
        "seg_out_channels": 32,
    },
}


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Categorical focal loss ``-alpha (1 - p_t)^gamma log p_t``, averaged over non-ignored pixels.

    Args:
        logits: (B, C, H, W) any float dtype (computed in float32).
        target: (B, H, W) integer class per pixel; ``ignore_index`` pixels contribute nothing.

    Returns:
        0-d float32 loss.
    """
    target = target.long()
    valid = target != ignore_index
    log_p = F.log_softmax(logits.float(), dim=1)
    log_pt = log_p.gather(1, torch.where(valid, target, 0)[:, None])[:, 0]
    loss = -alpha * (1.0 - log_pt.exp()) ** gamma * log_pt
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def model_config(preset: str, crop: int, learned_upsample: bool = False) -> dict:
    return {
        "image_size": crop,
        "num_channels": 1,
        "num_classes": 2,
        "from_scratch": True,
        "uses_learned_upsample": learned_upsample,
        **MODEL_PRESETS[preset],
    }


def load_init(model: PeakNet, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``model``; a learned upsample that ``state`` lacks starts at zero.

    Every key of ``state`` must exist in ``model`` with the same shape, and every parameter of
    ``model`` must be in ``state``, except the ``head_upsample_layer`` residual: without it in
    ``state`` its weight and bias are zeroed, so that the model's logits start equal to those of the
    weights it starts from (the residual adds nothing until training moves it).

    Returns:
        The names of the parameters that were zero-initialised.
    """
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"--init holds parameters the model does not have: {sorted(unexpected)[:5]}")
    allowed = [k for k in missing if k.startswith("head_upsample_layer.")]
    if len(allowed) != len(missing):
        raise ValueError(f"--init lacks parameters of the model: {sorted(set(missing) - set(allowed))[:5]}")
    with torch.no_grad():
        for name in allowed:
            model.get_parameter(name).zero_()
    return allowed


def lr_at(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 2% of ``peak`` as ``progress``
    (fraction of the run done, 0..1) goes to 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def run_progress(step: int, steps: int, warmup: int, elapsed: float, time_limit: float | None) -> float:
    """Fraction of the run done after warm-up: by steps, or by wall time when a time limit is set
    and comes first (then the schedule, and so the result, depends on the machine's speed)."""
    by_steps = (step - warmup) / max(1, steps - warmup)
    if time_limit is None:
        return by_steps
    return max(by_steps, elapsed / time_limit)


def save_model(model: PeakNet, config: dict, out: Path, stem: str = "peaknet") -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` (float32) and ``<stem>.yaml`` (public pipeline layout)."""
    weights = out / f"{stem}.safetensors"
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    document = {"model": {"weights_path": weights.name, "peaknet_config": {"model": config}}}
    config_path = out / f"{stem}.yaml"
    config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    return config_path, weights


def plot_loss(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(history["step"])
    loss = np.asarray(history["loss"])
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(steps, loss, alpha=0.3, lw=0.7, label="per step")
    ax.semilogy(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"focal loss (alpha={FOCAL_ALPHA}, gamma={FOCAL_GAMMA})")
    ax.set_title("PeakNet on simulated SFX frames (peaknet_serve.sim.peaksim)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--time-limit", type=float, default=None, help="stop (and save) after this many seconds")
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--crops-per-frame", type=int, default=16)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--preset", choices=sorted(MODEL_PRESETS), default="compact")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from these weights (safetensors of the same preset) instead of from scratch",
    )
    p.add_argument(
        "--learned-upsample",
        action="store_true",
        help="add the public PeakNet's learned ConvTranspose upsample to the head (uses_learned_upsample): "
        "a full-resolution residual on the bilinear logits, zero at the start when --init lacks it",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-amp", action="store_true", help="train in float32 instead of bf16 autocast")
    p.add_argument(
        "--artefact-probability",
        type=float,
        default=0.0,
        help="chance per frame of each simulated artefact (jet streak, beamstop arm, common mode; "
        "peaknet_serve.sim.peaksim.artefacts); 0: clean frames",
    )
    p.add_argument(
        "--coverage",
        action="store_true",
        help="wider frame conditions: sub-pixel spots, photon counting, extreme backgrounds, saturation, "
        "gain switching, bright point spots on nearly empty frames (peaknet_serve.sim.peaksim.coverage)",
    )
    p.add_argument(
        "--point-probability",
        type=float,
        default=Coverage.point_probability,
        help="with --coverage: chance per frame of bright point spots on a nearly empty frame "
        f"(default {Coverage.point_probability})",
    )
    p.add_argument(
        "--target-snr",
        type=float,
        default=None,
        help="integrated-SNR bar of the peaks to learn (default: the truth's strong rule, 6)",
    )
    p.add_argument(
        "--target-ring",
        type=int,
        default=DEFAULT_TARGET_RING,
        help=f"ignore the background within this many pixels (0..{MAX_TARGET_RING}) of every peak pixel "
        f"in the loss; 0: the targets as simulated (the bundled weights' training) (default {DEFAULT_TARGET_RING})",
    )
    p.add_argument(
        "--ring-max-pixels",
        type=int,
        default=0,
        help="ring only the peaks of at most this many pixels (sharp spots); 0: every peak (default 0)",
    )
    args = p.parse_args(argv)
    if not 0.0 <= args.artefact_probability <= 1.0:
        p.error(f"--artefact-probability must be in [0, 1], got {args.artefact_probability}")
    if not 0.0 <= args.point_probability <= 1.0:
        p.error(f"--point-probability must be in [0, 1], got {args.point_probability}")
    if args.target_snr is not None and not args.target_snr > 0.0:
        p.error(f"--target-snr must be > 0, got {args.target_snr}")
    if not 0 <= args.target_ring <= MAX_TARGET_RING:
        p.error(f"--target-ring must be in [0, {MAX_TARGET_RING}], got {args.target_ring}")
    if args.ring_max_pixels < 0:
        p.error(f"--ring-max-pixels must be >= 0, got {args.ring_max_pixels}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device)
    config = model_config(args.preset, args.crop, args.learned_upsample)
    model = PeakNet(PeakNetConfig.from_mapping(config))
    if args.init is not None:
        zeroed = load_init(model, load_file(str(args.init)))
        print(f"starting from {args.init}" + (f" (zero: {', '.join(zeroed)})" if zeroed else ""), flush=True)
    model = model.to(device)
    model.train()
    print(f"PeakNet {args.preset}: {count_parameters(model):,} parameters on {device}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.99),
    )
    crops = SimulatedCrops(
        args.seed,
        args.crop,
        args.crops_per_frame,
        artefact_probability=args.artefact_probability,
        coverage=Coverage(point_probability=args.point_probability) if args.coverage else None,
        target_snr=args.target_snr,
        target_ring=args.target_ring,
        ring_max_pixels=args.ring_max_pixels,
    )
    loader = DataLoader(
        crops,
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers else None,
    )
    use_amp = not args.no_amp
    history: dict[str, list] = {"step": [], "loss": [], "lr": [], "seconds": [], "peak_fraction": []}
    start = time.perf_counter()
    batches = iter(loader)
    progress = tqdm(range(args.steps), desc="train", mininterval=30.0, file=sys.stdout)
    for step in progress:
        image, target = next(batches)
        image = image.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        elapsed = time.perf_counter() - start
        lr = lr_at(step, run_progress(step, args.steps, args.warmup, elapsed, args.time_limit), args.lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(image)
        loss = focal_loss(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        if step % 10 == 0 or step == args.steps - 1:
            value = float(loss.detach())
            history["step"].append(step)
            history["loss"].append(value)
            history["lr"].append(lr)
            history["seconds"].append(elapsed)
            history["peak_fraction"].append(float((target == 1).float().mean()))
            progress.set_postfix(loss=f"{value:.4g}", lr=f"{lr:.2e}")
            if args.time_limit is not None and elapsed > args.time_limit:
                print(f"time limit reached at step {step}", flush=True)
                break
    elapsed = time.perf_counter() - start
    del batches, loader  # stop the simulation workers before saving and exiting
    model.eval()
    config_path, weights = save_model(model, config, args.out)
    history.update(
        {
            "preset": args.preset,
            "config": config,
            "batch_size": args.batch_size,
            "crop": args.crop,
            "seed": args.seed,
            "steps_done": history["step"][-1] + 1,
            "train_seconds": elapsed,
            "focal_alpha": FOCAL_ALPHA,
            "focal_gamma": FOCAL_GAMMA,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "amp": "bf16" if use_amp else "none",
            "torch": torch.__version__,
            "init": str(args.init) if args.init else None,
            "crops_per_frame": args.crops_per_frame,
            "workers": args.workers,
            "artefact_probability": args.artefact_probability,
            "coverage": args.coverage,
            "point_probability": args.point_probability if args.coverage else None,
            "target_snr": args.target_snr,
            "target_ring": args.target_ring,
            "ring_max_pixels": args.ring_max_pixels,
            "learned_upsample": args.learned_upsample,
            "command": " ".join(["peaknet-train", *(argv or sys.argv[1:])]),
        }
    )
    (args.out / "train_loss.json").write_text(json.dumps(history))
    plot_loss(history, args.out / "train_loss.png")
    print(
        f"saved {config_path} and {weights} ({weights.stat().st_size / 1e6:.1f} MB) after "
        f"{history['steps_done']} steps in {elapsed:.0f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
