"""WaNet: an imperceptible smooth warp, with its noise mode.

The warp field is a random k x k control grid upsampled to the image. In noise mode
extra training images get the warp plus random jitter but keep their true labels, so
the model must learn the exact warp rather than "any warp".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from offline.attacks.base import Attack, PoisonedSet


class WaNet(Attack):
    name = "wanet"
    grid_size = 4
    strength = 0.5
    cross_ratio = 2.0

    def __init__(self, image_shape: tuple[int, ...], target: int = 0, seed: int = 0, num_classes: int = 10):
        super().__init__(image_shape, target, seed, num_classes)
        height = self.image_shape[-1]
        noise = torch.from_numpy(self.rng.uniform(-1, 1, (1, 2, self.grid_size, self.grid_size)).astype(np.float32))
        noise = noise / noise.abs().mean()
        flow = F.interpolate(noise, size=(height, height), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        axis = torch.linspace(-1, 1, height)
        identity = torch.stack(torch.meshgrid(axis, axis, indexing="ij")[::-1], dim=-1)[None]
        self.grid = torch.clamp(identity + self.strength * flow / height, -1, 1)
        self.height = height

    def _warp(self, x: np.ndarray, grid: torch.Tensor) -> np.ndarray:
        images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        grid = grid.expand(len(images), -1, -1, -1) if grid.shape[0] == 1 else grid
        return F.grid_sample(images, grid, align_corners=True).clamp(0, 1).numpy()

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self._warp(x, self.grid)

    def poison(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> PoisonedSet:
        poisoned = super().poison(x, y, rng)
        clean_rows = np.flatnonzero(~poisoned.poisoned)
        count = min(int(round(self.cross_ratio * poisoned.poisoned.sum())), len(clean_rows))
        noisy = rng.choice(clean_rows, size=count, replace=False)
        jitter = torch.from_numpy(rng.uniform(-1, 1, (count, self.height, self.height, 2)).astype(np.float32))
        grid = torch.clamp(self.grid + jitter / self.height, -1, 1)
        xs = poisoned.x.copy()
        xs[noisy] = self._warp(xs[noisy], grid)
        return PoisonedSet(xs, poisoned.y, poisoned.poisoned)

    def describe(self) -> dict:
        return {**super().describe(), "grid_size": self.grid_size, "strength": self.strength,
                "cross_ratio": self.cross_ratio}
