"""STRIP rules: superimpose the input on clean samples and watch the prediction.

A trigger survives superimposition, so a backdoored model stays confident on the
target class. On the original model M that is the classic entropy test. On the
exposed model E the entropy is useless: E has unlearned the clean task and answers
almost every input, clean or not, with one confident class, so its entropy is low
everywhere (`strip_exposed_entropy` keeps that measurement honest). What does separate
is *which* class E is confident in: clean unlearning pushed E's probability of an
input's true class down, so on a clean input E gives M's prediction little mass,
while on a triggered input E kept the backdoor and still puts its mass on the target
that M predicts. The exposed rule therefore scores E's mean probability of M's
prediction over the superimposed copies.
"""

from __future__ import annotations

import numpy as np

from firewall.probabilities import entropy
from firewall.rules.base import Batch, Rule


class ExposedStripRule(Rule):
    name = "strip"
    models = ("exposed",)

    def score(self, batch: Batch) -> np.ndarray:
        probs = batch.superimposed_probs("exposed")
        agreement = np.take_along_axis(probs, batch.yhat[:, None, None], axis=2)[:, :, 0]
        return agreement.mean(axis=1)


class StripOriginalRule(Rule):
    """The STRIP baseline on M: low mean entropy under superimposition is suspicious."""

    name = "strip_original"
    models = ("original",)

    def score(self, batch: Batch) -> np.ndarray:
        return -entropy(batch.superimposed_probs("original")).mean(axis=1)


class ExposedEntropyRule(Rule):
    """Plain STRIP entropy on E, kept as a measured negative result, not a defence."""

    name = "strip_exposed_entropy"
    models = ("exposed",)

    def score(self, batch: Batch) -> np.ndarray:
        return -entropy(batch.superimposed_probs("exposed")).mean(axis=1)
