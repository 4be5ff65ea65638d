"""Small synthetic detector frames shared by the handler tests (unit and end to end)."""

import numpy as np


def spot_frames(
    n: int = 1,
    p: int = 2,
    h: int = 64,
    w: int = 96,
    seed: int = 0,
    spots: int = 6,
    amplitude: float = 3000.0,
    sigma: float = 1.2,
) -> np.ndarray:
    """(n, p, h, w) uint16 frames: Poisson background (mean 20) plus bright Gaussian spots."""
    rng = np.random.default_rng(seed)
    frames = rng.poisson(20, size=(n, p, h, w)).astype(np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    for idx in np.ndindex(n, p):
        for _ in range(spots):
            cy, cx = rng.uniform(4, h - 4), rng.uniform(4, w - 4)
            frames[idx] += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return frames.astype(np.uint16)
