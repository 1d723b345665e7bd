"""Blend-family triggers: a pattern mixed over the whole image.

- `blend`: a fixed random pattern at opacity 0.2;
- `adaptive_blend` (Qi et al., "Revisiting the assumption of latent separability for
  backdoor defenses", ICLR 2023): the pattern cut into a 4x4 grid of pieces, each
  poisoned training input carrying a random half of them at opacity 0.15, plus as
  many regularisation inputs that carry the pieces but keep their true label. The
  model learns the trigger only as a whole, and the poisoned inputs' latent
  representations stay mixed with the clean ones, which is what latent-separation
  defences rely on. At test time the whole pattern is used at opacity 0.2.

`--inference-alpha` sets the test-time opacity (a fainter trigger than the one trained).
"""

from __future__ import annotations

import numpy as np

from offline.attacks.base import Attack, PoisonedSet


class Blend(Attack):
    name = "blend"
    alpha = 0.2

    def __init__(self, image_shape: tuple[int, ...], target: int = 0, seed: int = 0, num_classes: int = 10,
                 inference_alpha: float | None = None):
        super().__init__(image_shape, target, seed, num_classes)
        self.pattern = self.rng.random(self.image_shape).astype(np.float32)
        self.test_alpha = self.alpha if inference_alpha is None else inference_alpha

    def blend(self, x: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
        return ((1 - alpha) * x + alpha * self.pattern).astype(np.float32)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.blend(x, self.alpha)

    def apply_at_test(self, x: np.ndarray) -> np.ndarray:
        return self.blend(x, self.test_alpha)

    def describe(self) -> dict:
        return {**super().describe(), "alpha": self.alpha, "inference_alpha": self.test_alpha}


class AdaptiveBlend(Blend):
    name = "adaptive_blend"
    alpha = 0.2
    train_alpha = 0.15
    poison_rate = 0.05
    regularization_rate = 0.05
    grid = 4
    kept_pieces = 0.5

    def _pieces(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """[count, 1, H, W] masks, each covering a random half of the grid's pieces."""
        h, w = self.image_shape[-2:]
        rows = np.minimum(np.arange(h) * self.grid // h, self.grid - 1)
        cols = np.minimum(np.arange(w) * self.grid // w, self.grid - 1)
        piece = rows[:, None] * self.grid + cols[None, :]
        n = self.grid * self.grid
        keep = np.zeros((count, n), bool)
        for row in keep:
            row[rng.choice(n, size=int(n * self.kept_pieces), replace=False)] = True
        return keep[:, piece][:, None].astype(np.float32)

    def poison(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> PoisonedSet:
        candidates = rng.permutation(np.flatnonzero(y != self.target))
        payload_count = min(int(round(self.poison_rate * len(y))), len(candidates) // 2)
        regular_count = min(int(round(self.regularization_rate * len(y))), len(candidates) - payload_count)
        payload, regular = candidates[:payload_count], candidates[payload_count : payload_count + regular_count]
        x, y = x.copy(), y.copy()
        for rows in (payload, regular):
            x[rows] = self.blend(x[rows], self.train_alpha * self._pieces(len(rows), rng))
        y[payload] = self.target  # the regularisation rows keep their true labels
        mask = np.zeros(len(y), bool)
        mask[payload] = True
        return PoisonedSet(x, y, mask)

    def describe(self) -> dict:
        return {**super().describe(), "train_alpha": self.train_alpha,
                "regularization_rate": self.regularization_rate, "grid": self.grid}
