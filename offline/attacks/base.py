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
    they may override `target_of` (all-to-all), `apply_at_test` (a weaker trigger at
    inference) or `poison` (clean-label, noise-mode and regularised variants).
    """

    name = ""
    poison_rate = 0.1
    trains_jointly = False  # True: the attack rewrites batches during training (`poison_batch`)
    single_target = True  # False: no one class collects the triggered inputs (`target` is unused)

    def __init__(self, image_shape: tuple[int, ...], target: int = 0, seed: int = 0, num_classes: int = 10):
        self.image_shape = tuple(image_shape)
        self.target = target
        self.num_classes = num_classes
        self.rng = np.random.default_rng(seed)

    def apply(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_at_test(self, x: np.ndarray) -> np.ndarray:
        """The trigger as the attacker uses it at inference time."""
        return self.apply(x)

    def target_of(self, y: np.ndarray) -> np.ndarray:
        """The label a triggered input of true label y is meant to get."""
        return np.full(len(y), self.target, np.int64)

    def poison(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> PoisonedSet:
        candidates = np.flatnonzero(self.target_of(y) != y)
        count = int(round(self.poison_rate * len(y)))
        chosen = rng.choice(candidates, size=min(count, len(candidates)), replace=False)
        x, y = x.copy(), y.copy()
        x[chosen] = self.apply(x[chosen])
        y[chosen] = self.target_of(y[chosen])
        mask = np.zeros(len(y), bool)
        mask[chosen] = True
        return PoisonedSet(x, y, mask)

    def describe(self) -> dict:
        return {"attack": self.name, "target": self.target, "poison_rate": self.poison_rate}
