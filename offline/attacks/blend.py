"""Blend: a fixed random pattern mixed over the whole image at alpha 0.2."""

from __future__ import annotations

import numpy as np

from offline.attacks.base import Attack


class Blend(Attack):
    name = "blend"
    alpha = 0.2

    def __init__(self, image_shape: tuple[int, ...], target: int = 0, seed: int = 0):
        super().__init__(image_shape, target, seed)
        self.pattern = self.rng.random(self.image_shape).astype(np.float32)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((1 - self.alpha) * x + self.alpha * self.pattern).astype(np.float32)
