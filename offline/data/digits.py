"""scikit-learn's bundled 8x8 digits, upsampled to 16x16 with small random affine jitter.

The 1,797 originals are too few to split into a training set, a defender's clean
set, a calibration set and a test set; each original therefore yields several
jittered variants, and the split is made by original (see `offline.poison`) so that
no variant of a test digit was seen in training.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits


def make_digits(variants: int = 4, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x [N, 1, size, size] in [0, 1], y [N], group [N] = index of the original digit)."""
    digits = load_digits()
    base = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    base = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    generator = torch.Generator().manual_seed(seed)
    xs = []
    for v in range(variants):
        if v == 0:
            xs.append(base)
            continue
        n = len(base)
        angle = (torch.rand(n, generator=generator) - 0.5) * (2 * np.pi * 10 / 360)
        scale = 1.0 + (torch.rand(n, generator=generator) - 0.5) * 0.2
        shift = (torch.rand(n, 2, generator=generator) - 0.5) * (3.0 / size)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(base.shape), align_corners=False)
        xs.append(F.grid_sample(base, grid, align_corners=False, padding_mode="zeros"))
    x = torch.cat(xs).clamp(0, 1).numpy()
    y = np.tile(digits.target.astype(np.int64), variants)
    group = np.tile(np.arange(len(digits.target)), variants)
    return x, y, group
