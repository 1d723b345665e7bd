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
