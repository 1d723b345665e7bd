"""The suspected target's reversed trigger as data: numpy only, so that evaluation, plots and the
trigger-direction fit read it without the training stack that found it
(offline/build/target_identification.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ReversedTrigger:
    """The mask and pattern that sent the other classes' clean inputs to the suspected target, in pixel
    space: x' = (1 - mask) x + mask pattern. Not the attacker's trigger, but a way into the target by the
    same shortcut (firewall/rules/trigger_direction.py), and a picture of what the backdoor responds to."""

    target: int
    mask: np.ndarray  # [H, W], in [0, 1]
    pattern: np.ndarray  # [C, H, W], in [0, 1]

    def stamp(self, pixels: np.ndarray) -> np.ndarray:
        """Images [N, C, H, W] in [0, 1] with the trigger stamped on."""
        return ((1.0 - self.mask) * pixels + self.mask * self.pattern).astype(np.float32)

    def save(self, path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, target=np.int64(self.target), mask=self.mask.astype(np.float32),
                     pattern=self.pattern.astype(np.float32))

    @classmethod
    def load(cls, path: Path) -> "ReversedTrigger":
        with np.load(path, allow_pickle=False) as stored:  # data, never code
            return cls(int(stored["target"]), stored["mask"], stored["pattern"])
