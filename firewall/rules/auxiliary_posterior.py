"""Where the repaired model's features put the input: how unlikely M's predicted class is
under clean class Gaussians in an auxiliary M''s penultimate feature space.

M' was fine-tuned (or TSBD-repaired) on clean data, so it keeps the task and loses part
of the backdoor. On a triggered input M answers the target, but M''s features still sit
with the input's source class; on a clean input of the target class they sit with the
target. Reading that in M''s softmax is BaDExpert's `a`, and a discriminatively trained
head is overconfident either way. A Gaussian classifier fitted to M''s clean features
(class means, one shared Ledoit-Wolf covariance: linear discriminant analysis, as the
Mahalanobis rule fits in M's space) asks the same question with a calibrated answer,
-log P(M's class | M''s features), and it separates *inside* the target class, where the
other first-stage rules are weakest (docs/METHODS.md, "The auxiliary posterior").
"""

from __future__ import annotations

import numpy as np

from firewall.probabilities import log_softmax
from firewall.rules.base import FirstStageRule


def posterior_by_class(distances: np.ndarray) -> np.ndarray:
    """[N, K]: -log of each class's posterior under equal priors, from the squared
    Mahalanobis distances [N, K] to the class means: d_k / 2 + log sum_j exp(-d_j / 2)."""
    return -log_softmax(-0.5 * np.asarray(distances, np.float64))


class AuxiliaryPosteriorRule(FirstStageRule):
    """Served from the fused graph as `posterior_by_class` of the auxiliary's features."""

    name = "auxiliary_posterior"
    auxiliary = "auxiliary"  # the artifacts' model whose features are read


class AuxiliaryTsbdPosteriorRule(AuxiliaryPosteriorRule):
    """The same rule in TSBD's M' (builds with `--auxiliary both`)."""

    name = "auxiliary_tsbd_posterior"
    auxiliary = "auxiliary_tsbd"
