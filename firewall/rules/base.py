"""What every rule shares: one batch, its model outputs computed at most once."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from firewall.artifacts import Normalization
from firewall.models import ModelSet
from firewall.probabilities import prob_of

SUPERIMPOSED_ROWS = 1024


class Batch:
    """A batch of inputs and the model outputs that rules ask for, each run once.

    Several rules need M's prediction and the same model's probabilities; computing
    them lazily here keeps a rule's cost to what it adds. `yhat` may be given (the
    upstream's own prediction, or one computed earlier in a cascade), and then M is not
    run for it.
    """

    def __init__(self, x: np.ndarray, models: ModelSet, bank: np.ndarray, normalization: Normalization,
                 yhat: np.ndarray | None = None):
        self.x = x
        self._given_yhat = yhat
        self.models = models
        self.bank = bank
        self.normalization = normalization
        self._probs: dict[str, np.ndarray] = {}
        self._superimposed: dict[str, np.ndarray] = {}

    @cached_property
    def _first_stage(self) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        return self.models.first_stage(self.x, predict=self._given_yhat is None)

    @cached_property
    def yhat(self) -> np.ndarray:
        return self._given_yhat if self._given_yhat is not None else self._first_stage[0]

    def by_class(self, rule: str) -> np.ndarray:
        """[N, K]: the first-stage rule's score for every class, from the fused graph."""
        return self._first_stage[1][rule]

    def probs(self, role: str) -> np.ndarray:
        """The `role` model's probabilities on the batch, run once however many rules read them."""
        if role not in self._probs:
            self._probs[role] = self.models.probs(role, self.x)
        return self._probs[role]

    def superimposed(self, rows: slice) -> np.ndarray:
        """Inputs `rows` each added to every bank sample in pixel space, clipped like an image.

        Shape [n * S, ...] with the S copies of an input contiguous.
        """
        norm = self.normalization
        pixels = norm.to_pixels(self.x[rows])[:, None]
        bank = norm.to_pixels(self.bank)[None]
        mixed = np.clip(pixels + bank, 0.0, 1.0).reshape((-1,) + self.x.shape[1:])
        return norm.from_pixels(mixed).astype(np.float32)

    def superimposed_probs(self, role: str) -> np.ndarray:
        """[N, S, K] probabilities of `role` on the superimposed copies, computed once per role.

        Inputs are superimposed a few at a time so that memory stays bounded by
        SUPERIMPOSED_ROWS copies whatever the batch and image size.
        """
        if role not in self._superimposed:
            step = max(1, SUPERIMPOSED_ROWS // len(self.bank))
            parts = [self.models.probs(role, self.superimposed(slice(i, i + step))) for i in range(0, len(self.x), step)]
            self._superimposed[role] = np.concatenate(parts).reshape(len(self.x), len(self.bank), -1)
        return self._superimposed[role]


class Rule:
    """A suspicion score: higher means more likely a backdoor input."""

    name: str = ""
    models: tuple[str, ...] = ()  # the artifacts' models it runs besides the fused first stage

    def score(self, batch: Batch) -> np.ndarray:
        raise NotImplementedError


class FirstStageRule(Rule):
    """A rule the fused graph computes for every class in one session run with the
    classifiers (offline/build/fused_export.py, checked against the rule's numpy
    arithmetic at build); scoring picks M's predicted class."""

    def score(self, batch: Batch) -> np.ndarray:
        return prob_of(batch.by_class(self.name), batch.yhat)
