"""The exposed model's own verdict on the input: does E still back M's prediction?

Clean unlearning pushed E's logit for an input's true class below the others, so on a
clean input E's margin for M's prediction (that class's logit minus the largest other)
is negative; on a triggered input the backdoor survived in E, and E still puts the
target, which M predicts, ahead of everything else. The margin, not the probability:
a fully exposed model saturates its softmax at exactly 1.0 for many inputs, and tied
scores at the top leave no threshold between clean and triggered (measured: AUROC 0.95
but TPR 0 at 1% FPR on shapes/badnets with probabilities, 0.998 and 0.976 with margins).
No superimposition, so it costs one forward pass of E, in the same fused graph as
BaDExpert, and global triggers that superimposition would dilute (blend, WaNet) stay
intact. See docs/METHODS.md for where it wins and loses against BaDExpert.
"""

from __future__ import annotations

import numpy as np

from firewall.rules.base import FirstStageRule


def margin_by_class(logits: np.ndarray) -> np.ndarray:
    """[N, K]: each class's logit minus the largest of the other classes' logits."""
    top2 = -np.sort(-logits, axis=1)[:, :2]
    others = np.where(logits >= top2[:, :1], top2[:, 1:2], top2[:, :1])
    return logits - others


class ExposedRule(FirstStageRule):
    """Served from the fused graph as `margin_by_class` of E's logits."""

    name = "exposed"
