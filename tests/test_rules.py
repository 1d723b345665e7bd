"""The BaDExpert triangle rule scores the backdoor corner of the (b, a) plane highest."""

import numpy as np

from firewall.probabilities import entropy, softmax
from firewall.rules.badexpert import triangle_statistic


def suspicion(b, a):
    return -triangle_statistic(np.asarray([b], float), np.asarray([a], float))[0]


def test_expert_agrees_and_auxiliary_disagrees_is_most_suspicious():
    assert suspicion(0.95, 0.01) > suspicion(0.5, 0.5) > suspicion(0.05, 0.95)


def test_suspicion_rises_with_expert_confidence_and_falls_with_auxiliary_confidence():
    b = np.linspace(0.01, 0.99, 50)
    assert np.all(np.diff(-triangle_statistic(b, np.full(50, 0.3))) >= 0)
    a = np.linspace(0.01, 0.99, 50)
    assert np.all(np.diff(-triangle_statistic(np.full(50, 0.6), a)) <= 0)


def test_rule_is_finite_at_the_corners():
    corners = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    assert np.isfinite(triangle_statistic(corners[:, 0], corners[:, 1])).all()


def test_softmax_is_stable_and_entropy_bounded():
    probs = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]]))
    assert np.allclose(probs.sum(axis=1), 1.0) and np.isfinite(probs).all()
    assert np.isclose(entropy(probs[1:])[0], np.log(3))
