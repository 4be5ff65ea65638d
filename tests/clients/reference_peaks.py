"""A real (if simple) peak finder answering in the server's JSON schema, for client tests without a server."""

import random
import time

import numpy as np
from scipy import ndimage


def threshold_peaks(frames: np.ndarray, threshold: float = 40.0) -> dict:
    """Peaks of ``(N, P, H, W)`` frames in the server's answer schema (SciPy, 8-connected)."""
    time.sleep(random.uniform(0, 0.01))
    answer_frames = []
    for frame in frames.astype(np.float64):
        peaks = {"panel": [], "ss": [], "fs": [], "npix": [], "intensity": [], "intensity_raw": []}
        for p, panel in enumerate(frame):
            labels, n = ndimage.label(panel > threshold, structure=np.ones((3, 3)))
            index = np.arange(1, n + 1)
            level = float(np.median(panel))
            for (ss, fs), npix, total in zip(
                ndimage.center_of_mass(panel, labels, index),
                ndimage.sum_labels(np.ones_like(panel), labels, index),
                ndimage.sum_labels(panel, labels, index),
            ):
                for key, value in zip(peaks, (p, ss, fs, int(npix), total - npix * level, total)):
                    peaks[key].append(value)
        answer_frames.append({"num_peaks": len(peaks["ss"]), **peaks})
    n, p, h, w = frames.shape
    return {
        "model": "threshold",
        "precision": "float64",
        "device": "cpu",
        "shape": [n, p, h, w],
        "dtype": str(frames.dtype),
        "frames": answer_frames,
    }
