"""Detection metrics: AUROC, TPR at a fixed FPR, rates at a threshold."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def auroc(clean: np.ndarray, backdoor: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(clean)), np.ones(len(backdoor))]
    return float(roc_auc_score(labels, np.r_[clean, backdoor]))


def tpr_at_fpr(clean: np.ndarray, backdoor: np.ndarray, fpr: float) -> float:
    """The best TPR among thresholds whose FPR on these clean scores is at most `fpr`."""
    labels = np.r_[np.zeros(len(clean)), np.ones(len(backdoor))]
    fprs, tprs, _ = roc_curve(labels, np.r_[clean, backdoor])
    return float(tprs[fprs <= fpr].max())


def rate_above(scores: np.ndarray, threshold: float) -> float:
    return float((np.asarray(scores) > threshold).mean()) if len(scores) else float("nan")


def same_class_auroc(clean: np.ndarray, clean_classes: np.ndarray, backdoor: np.ndarray,
                     backdoor_classes: np.ndarray) -> float | None:
    """The chance that a backdoor input scores above a clean input M assigns to the same
    class (ties count half): AUROC with the class M predicts taken out of the comparison.

    A backdoor input lands in the attack's target class, and the models the rules read
    lean toward that class on clean inputs too, so a pooled AUROC also rewards a rule for
    noticing which class an input went to. This one asks only whether the rule tells the
    backdoor input from clean inputs of its own class (for all-to-all attacks, pairs are
    formed within each target class). None when no class holds both kinds.
    """
    pairs, above = 0, 0.0
    for k in np.unique(backdoor_classes):
        c, b = clean[clean_classes == k], backdoor[backdoor_classes == k]
        if len(c) and len(b):
            pairs += len(c) * len(b)
            above += auroc(c, b) * len(c) * len(b)
    return above / pairs if pairs else None


def rates_above_by_class(scores: np.ndarray, classes: np.ndarray, threshold: float,
                         num_classes: int) -> list[float | None]:
    """rate_above among the inputs of each class (None for a class with no input)."""
    counts = np.bincount(classes, minlength=num_classes)
    return [rate_above(scores[classes == k], threshold) if n else None for k, n in enumerate(counts)]
