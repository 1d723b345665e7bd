"""No attack: a clean model, to measure false alarms."""

from __future__ import annotations

import numpy as np

from offline.attacks.base import Attack, PoisonedSet


class NoAttack(Attack):
    name = "none"
    poison_rate = 0.0
    single_target = False

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x.copy()

    def poison(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> PoisonedSet:
        return PoisonedSet(x.copy(), y.copy(), np.zeros(len(y), bool))
