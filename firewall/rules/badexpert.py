"""BaDExpert's decision rule on the expert B and the auxiliary M'.

On a backdoor input B still agrees with M (high b) while M' has partly forgotten the
backdoor (low a); on a clean input B has forgotten the task (low b) and M' agrees
(high a). The rule compares the two confidences in M's predicted class.
"""

from __future__ import annotations

import numpy as np

from firewall.probabilities import prob_of
from firewall.rules.base import Batch, FirstStageRule


def triangle_statistic(b: np.ndarray, a: np.ndarray, gamma: float = 0.5) -> np.ndarray:
    """t = min(a / (gamma * b), (1 - b) / (gamma - a)); low t means backdoor."""
    return np.minimum(
        a / (gamma * np.maximum(b, 1e-8)),
        (1.0 - b) / np.maximum(gamma - a, 1e-8),
    )


class BadExpertRule(FirstStageRule):
    """Served from the fused graph as -triangle_statistic for every class."""

    name = "badexpert"
    auxiliary = "auxiliary"  # the artifacts' model that plays M'

    def confidences(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(b, a): the expert's and the auxiliary's probability of M's prediction."""
        return prob_of(batch.probs("expert"), batch.yhat), prob_of(batch.probs(self.auxiliary), batch.yhat)


class BadExpertTsbdRule(BadExpertRule):
    """The same rule with TSBD's M' (builds with `--auxiliary both`). The fine-tuned and the
    TSBD auxiliary forget different backdoors (docs/METHODS.md, "Two auxiliaries"), and
    the fusion weighs the two rules' evidence half each."""

    name = "badexpert_tsbd"
    auxiliary = "auxiliary_tsbd"
