"""SCALE-UP baseline: amplify pixel values and check that the prediction holds.

Backdoor inputs keep their predicted class when all pixels are multiplied (the
trigger saturates but stays), clean inputs drift: the scaled prediction consistency
(SPC) is the score.
"""

from __future__ import annotations

import numpy as np

from firewall.rules.base import Batch, Rule


class ScaleUpRule(Rule):
    name = "scaleup"
    models = ("original",)

    def __init__(self, factors: tuple[int, ...] = (3, 5, 7, 9, 11)):
        self.factors = factors

    def score(self, batch: Batch) -> np.ndarray:
        norm = batch.normalization
        pixels = norm.to_pixels(batch.x)
        scaled = np.concatenate([np.clip(pixels * f, 0.0, 1.0) for f in self.factors])
        preds = batch.models.logits("original", norm.from_pixels(scaled).astype(np.float32)).argmax(axis=1)
        same = preds.reshape(len(self.factors), len(batch.x)) == batch.yhat[None]
        return same.mean(axis=0)
