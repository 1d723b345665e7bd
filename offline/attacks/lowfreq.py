"""Low-frequency trigger: a smooth, image-wide perturbation with no sharp edges.

Made of a few random 2-D cosines of the lowest spatial frequencies (at most two
periods across the image) with random phases, scaled to an amplitude of 0.1. Such a
trigger survives the low-pass filtering and the superimposition that defeat patch
detectors, and leaves no high-frequency artefact for a spectral detector to find.
"""

from __future__ import annotations

import numpy as np

from offline.attacks.base import Attack


class LowFrequency(Attack):
    name = "lowfreq"
    amplitude = 0.1
    max_frequency = 2

    def __init__(self, image_shape: tuple[int, ...], target: int = 0, seed: int = 0, num_classes: int = 10):
        super().__init__(image_shape, target, seed, num_classes)
        channels, h, w = self.image_shape
        i, j = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
        pattern = np.zeros(self.image_shape, np.float64)
        for c in range(channels):
            for fy in range(self.max_frequency + 1):
                for fx in range(self.max_frequency + 1):
                    if fx == fy == 0:
                        continue
                    weight, phase = self.rng.normal(), self.rng.uniform(0, 2 * np.pi)
                    pattern[c] += weight * np.cos(2 * np.pi * (fy * i + fx * j) + phase)
        self.pattern = (self.amplitude * pattern / np.abs(pattern).max()).astype(np.float32)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x + self.pattern, 0.0, 1.0).astype(np.float32)

    def describe(self) -> dict:
        return {**super().describe(), "amplitude": self.amplitude, "max_frequency": self.max_frequency}
