"""What an attack is: a trigger function and a way to poison a training set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PoisonedSet:
    x: np.ndarray
    y: np.ndarray
    poisoned: np.ndarray  # bool [N]: which rows carry the trigger


class Attack:
    """All-to-one poison-label attack: triggered inputs of any class go to `target`.

    Subclasses define `apply` (the trigger, on pixels in [0, 1], shape [N, C, H, W]);
    they may override `poison` for clean-label or noise-mode variants.
    """

    name = ""
    poison_rate = 0.1

    def __init__(self, image_shape: tuple[int, ...], target: int = 0, seed: int = 0):
        self.image_shape = tuple(image_shape)
        self.target = target
        self.rng = np.random.default_rng(seed)

    def apply(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def poison(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> PoisonedSet:
        candidates = np.flatnonzero(y != self.target)
        count = int(round(self.poison_rate * len(y)))
        chosen = rng.choice(candidates, size=min(count, len(candidates)), replace=False)
        x, y = x.copy(), y.copy()
        x[chosen] = self.apply(x[chosen])
        y[chosen] = self.target
        mask = np.zeros(len(y), bool)
        mask[chosen] = True
        return PoisonedSet(x, y, mask)

    def describe(self) -> dict:
        return {"attack": self.name, "target": self.target, "poison_rate": self.poison_rate}
