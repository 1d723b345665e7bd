"""SIG: a horizontal sinusoidal signal, planted clean-label.

Only training images that already belong to the target class get the signal, so
every poisoned label is correct and a label audit finds nothing.
"""

from __future__ import annotations

import numpy as np

from offline.attacks.base import Attack, PoisonedSet


class Sig(Attack):
    name = "sig"
    delta = 0.1
    frequency = 6
    poison_rate = 0.08

    def apply(self, x: np.ndarray) -> np.ndarray:
        width = self.image_shape[-1]
        signal = self.delta * np.sin(2 * np.pi * np.arange(width) * self.frequency / width)
        return np.clip(x + signal.astype(np.float32), 0, 1)

    def poison(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> PoisonedSet:
        candidates = np.flatnonzero(y == self.target)
        count = min(int(round(self.poison_rate * len(y))), len(candidates))
        chosen = rng.choice(candidates, size=count, replace=False)
        x = x.copy()
        x[chosen] = self.apply(x[chosen])
        mask = np.zeros(len(y), bool)
        mask[chosen] = True
        return PoisonedSet(x, y.copy(), mask)
