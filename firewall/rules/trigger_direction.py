"""Where M's features put an input it sends to the suspected target: along the route the
reversed trigger takes into that class, or where the class's genuine inputs sit.

The suspected-target rule (target_class.py) gives the same evidence to every input M
answers with the target T, so on a backdoor that moved few of its inputs what is left is
telling a triggered input of T from a genuine one. The build holds a proxy of the trigger:
the mask and pattern it reverse-engineered for T (offline/build/target_identification.py).
That is not the attacker's trigger (a small patch where the attack warps or blends), but it
reaches T by the shortcut the backdoor built, so it moves M's penultimate features along the
backdoor's route into T, while a genuine input of T sits there by the task's. The build
stamps it on clean inputs of the other classes and fits the Fisher direction w between
their features and those of the genuine class-T inputs
(offline/build/trigger_direction.py); the score of an input M sends to T is w . f(x),
and every other class's score is a floor below the build's clean scores, so that only
inputs M answers with T carry evidence. Neural Cleanse's own input filter (the features
the reversed trigger raises most) points the wrong way on the width-8 VGG cells; the
whole direction does not (in-class AUROC 0.84 against 0.60 over 50 matrix cells:
docs/METHODS.md, "The reversed trigger's direction in M's features").

Written as one linear map from the features to every class's score, [d, K] weights and a
[K] bias, which the fused graph holds as constants: all zero where the build named no
class, and the rule then adds nothing.
"""

from __future__ import annotations

import numpy as np

from firewall.rules.base import FirstStageRule


def trigger_direction_by_class(features: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[N, K]: the rule's score for every class from M's penultimate `features` [N, d]."""
    return features.reshape(len(features), -1) @ weights + bias


class TriggerDirectionRule(FirstStageRule):
    """Served from the fused graph as `trigger_direction_by_class` of M's penultimate features."""

    name = "trigger_direction"
