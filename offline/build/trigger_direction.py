"""The trigger-direction rule's parameters (firewall/rules/trigger_direction.py says why the
rule holds): the Fisher direction in M's penultimate features between clean inputs of the
other classes stamped with the suspected target's reversed trigger and the genuine clean
inputs of the target, both as M answers them with the target.

Fisher's direction rather than the plain difference of the means because the features
that vary most among a class's genuine inputs are the least telling; the pooled covariance
is shrunk toward its mean eigenvalue because the genuine group is small (15-36 inputs of one
class in a build set of 300) beside 64-512 features. The measured variants, a shrinkage of
50% and the plain mean difference, gave the fused verdict the same within 0.002 of TPR at 1%
FPR (docs/METHODS.md, "The reversed trigger's direction in M's features").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from firewall.artifacts import Normalization
from offline.build.reversed_trigger import ReversedTrigger
from offline.data.tensorsets import TensorSet

SHRINKAGE = 0.1
# Fewer inputs on either side than this and there is no direction to speak of: the rule is left out.
MIN_GROUP = 2
# Every class but the target scores this many pooled standard deviations below the lowest score of any
# build input, so that an input M sends elsewhere carries no evidence: the clean calibration inputs M
# sends to the target would all have to lie further out still to give it any.
FLOOR_MARGIN = 10.0


@dataclass(frozen=True)
class TriggerDirection:
    """The rule as one linear map from M's features to every class's score, and how it was fitted."""

    weights: np.ndarray  # [d, K]: the direction in the target's column, zero elsewhere
    bias: np.ndarray  # [K]: centres the target's genuine inputs on 0; the floor elsewhere
    report: dict  # for the manifest

    @classmethod
    def absent(cls, dim: int, num_classes: int, why: str, target: int | None = None) -> "TriggerDirection":
        """All zero: every input scores 0 and the rule adds nothing."""
        return cls(np.zeros((dim, num_classes)), np.zeros(num_classes), {"target": target, "why_none": why})


def fit_trigger_direction(trigger: ReversedTrigger | None, clean: TensorSet, clean_features: np.ndarray,
                          num_classes: int, features_of: Callable[[np.ndarray], np.ndarray],
                          predict: Callable[[np.ndarray], np.ndarray], normalization: Normalization
                          ) -> TriggerDirection:
    """The direction for `trigger`'s target from the build's `clean` set (model space) and M's penultimate
    features of it, `clean_features` (the class Gaussians' own); `features_of` gives them for other inputs,
    `predict` M's answers, `normalization` turns model space into pixels, where the trigger is stamped."""
    clean_features = np.asarray(clean_features, np.float64).reshape(len(clean), -1)
    dim = clean_features.shape[1]
    if trigger is None:
        return TriggerDirection.absent(dim, num_classes, "no suspected target")
    target = trigger.target
    others = clean.x[clean.y != target]
    stamped = normalization.from_pixels(trigger.stamp(normalization.to_pixels(others))).astype(np.float32)
    stamped = stamped[predict(stamped) == target]
    genuine = (clean.y == target) & (predict(clean.x) == target)
    if min(len(stamped), genuine.sum()) < MIN_GROUP:
        return TriggerDirection.absent(dim, num_classes, f"{len(stamped)} stamped and {genuine.sum()} genuine inputs "
                                       f"reach the target; {MIN_GROUP} of each are needed", target)
    by_group = [np.asarray(features_of(stamped), np.float64).reshape(len(stamped), -1), clean_features[genuine]]
    means = [f.mean(axis=0) for f in by_group]
    scatter = sum((f - m).T @ (f - m) for f, m in zip(by_group, means)) / (len(stamped) + genuine.sum() - 2)
    covariance = (1 - SHRINKAGE) * scatter + SHRINKAGE * np.trace(scatter) / dim * np.eye(dim)
    direction = np.linalg.solve(covariance, means[0] - means[1])
    direction /= np.sqrt(direction @ covariance @ direction)  # one pooled standard deviation per unit of score
    scores = [(f - means[1]) @ direction for f in (by_group[0], clean_features)]
    floor = float(min(s.min() for s in scores)) - FLOOR_MARGIN
    weights, bias = np.zeros((dim, num_classes)), np.full(num_classes, floor)
    weights[:, target], bias[target] = direction, -(means[1] @ direction)
    report = {"target": target, "stamped": len(stamped), "stamped_of_other_classes": len(others),
              "genuine": int(genuine.sum()), "shrinkage": SHRINKAGE, "separation": float(scores[0].mean()),
              "floor": floor, "why_none": None}
    return TriggerDirection(weights, bias, report)
