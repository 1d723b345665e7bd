"""The BaDExpert triangle rule scores the backdoor corner of the (b, a) plane highest; the exposed
rule scores how far E still backs M's prediction; the Mahalanobis rule how far M's features lie
from the clean inputs of the predicted class; the auxiliary posterior how unlikely the predicted
class is under the clean class Gaussians of M''s features; the layer-Mahalanobis rule sums
the same distance over M's tapped layers; the fused graph computes them as published."""

import numpy as np
import pytest

from firewall.probabilities import entropy, softmax
from firewall.rules.auxiliary_posterior import posterior_by_class
from firewall.rules.badexpert import triangle_statistic
from firewall.rules.exposed import margin_by_class
from firewall.rules.layer_mahalanobis import layer_mahalanobis_by_class
from firewall.rules.spectrum_mahalanobis import spectrum_mahalanobis_by_class
from firewall.rules.mahalanobis import mahalanobis_by_class


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


def test_the_exposed_margin_is_the_class_logit_minus_the_largest_other():
    logits = np.array([[3.0, 1.0, -2.0], [0.0, 0.0, 5.0]])
    assert np.array_equal(margin_by_class(logits), [[2.0, -2.0, -5.0], [-5.0, -5.0, 5.0]])


def test_the_mahalanobis_distance_is_zero_at_a_class_mean_and_follows_the_precision():
    means = np.array([[0.0, 0.0], [4.0, 0.0]])
    precision = np.diag([1.0, 0.25])  # the second feature varies twice as much on clean data
    features = np.array([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    assert np.allclose(mahalanobis_by_class(features, means, precision), [[0.0, 16.0], [1.0, 17.0], [4.0, 4.0]])


def test_the_auxiliary_posterior_is_low_for_the_nearest_class_and_a_coin_toss_halfway():
    distances = np.array([[0.0, 16.0], [4.0, 4.0], [2000.0, 0.0]])
    posterior = np.exp(-posterior_by_class(distances))
    assert np.allclose(posterior.sum(axis=1), 1.0)
    assert posterior[0, 0] > 0.99 and np.allclose(posterior[1], 0.5)
    assert np.isfinite(posterior_by_class(distances)).all()  # far from every class: no overflow
    assert posterior_by_class(distances)[2, 0] > 900  # a class the features are far from is very suspicious


def test_the_fused_graph_scores_like_the_rules_on_the_separate_models(tiny_case, tiny_artifacts):
    """The sidecar serves BaDExpert, the exposed rule, the Mahalanobis rule, the auxiliary
    and expert posteriors and the layer-Mahalanobis rule from one fused graph; it must be
    the published rule, the margin of E's logits, the distance of M's penultimate features
    to the stored clean class Gaussians, the posterior of M's class under M''s and under
    B's, and the scaled distances of M's pooled layers summed."""
    from firewall.artifacts import load_artifacts
    from firewall.probabilities import prob_of
    from firewall.scoring import ScoringEngine

    artifacts = load_artifacts(tiny_artifacts)
    engine = ScoringEngine(artifacts, rules=("badexpert", "exposed", "mahalanobis", "auxiliary_posterior",
                                             "expert_posterior", "layer_mahalanobis", "spectrum_mahalanobis"))
    x = np.concatenate([np.load(tiny_case / "test_clean.npz")["x"][:100],
                        np.load(tiny_case / "test_triggered.npz")["x"][:100]])
    yhat, scores = engine.score(x)
    models = engine.models
    assert np.array_equal(yhat, models.logits("original", x).argmax(axis=1))
    b, a = prob_of(models.probs("expert", x), yhat), prob_of(models.probs("auxiliary", x), yhat)
    expected = -triangle_statistic(b, a)
    assert np.allclose(scores["badexpert"], expected, rtol=1e-4, atol=1e-5)
    margins = prob_of(margin_by_class(models.logits("exposed", x)), yhat)
    assert np.allclose(scores["exposed"], margins, rtol=1e-4, atol=1e-4)
    distances = mahalanobis_by_class(models.logits("features", x).astype(np.float64), *artifacts.class_gaussians())
    assert np.allclose(scores["mahalanobis"], prob_of(distances, yhat), rtol=1e-3, atol=1e-3)
    aux_distances = mahalanobis_by_class(models.logits("auxiliary_features", x).reshape(len(x), -1).astype(np.float64),
                                         *artifacts.class_gaussians("auxiliary"))
    assert np.allclose(scores["auxiliary_posterior"], prob_of(posterior_by_class(aux_distances), yhat), rtol=1e-3, atol=1e-3)
    expert_distances = mahalanobis_by_class(models.logits("expert_features", x).reshape(len(x), -1).astype(np.float64),
                                            *artifacts.class_gaussians("expert"))
    assert np.allclose(scores["expert_posterior"], prob_of(posterior_by_class(expert_distances), yhat),
                       rtol=1e-3, atol=1e-3)
    by_layer = layer_mahalanobis_by_class(models.logits("layer_features", x), artifacts.layer_gaussians())
    assert np.allclose(scores["layer_mahalanobis"], prob_of(by_layer, yhat), rtol=1e-3, atol=1e-3)
    by_spectrum = spectrum_mahalanobis_by_class(x, *artifacts.class_gaussians("spectrum"))
    assert np.allclose(scores["spectrum_mahalanobis"], prob_of(by_spectrum, yhat), rtol=1e-3, atol=1e-3)
    shifted = (yhat + 1) % 10  # a prediction given from outside runs the graph without M
    given = engine.score(x, yhat=shifted)[1]["badexpert"]
    b, a = prob_of(models.probs("expert", x), shifted), prob_of(models.probs("auxiliary", x), shifted)
    assert np.allclose(given, -triangle_statistic(b, a), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("b, a, rounding", [
    # a just under gamma: t = (1 - b) / (gamma - a) is huge, and one ulp of a moves it by parts in 1e3
    ([[1e-6, 0.3]], [[0.5 - 1e-4, 0.2]], {"a": [[2e-7, 0.0]]}),
    # b a few ulps under 1: t is 1e-6, and one ulp of b moves it by parts in 10
    ([[1 - 9 * 2.0**-24, 0.3]], [[0.3, 0.2]], {"b": [[2.0**-24, 0.0]]}),
], ids=["a-near-gamma", "b-near-one"])
def test_the_build_check_tells_float32_rounding_of_badexpert_from_a_wrong_graph(b, a, rounding):
    """BaDExpert's t is a ratio of float32 probabilities; where a numerator or denominator nearly
    vanishes, one ulp of rounding moves the score itself past any relative tolerance. The export
    check must pass that and still fail a graph whose arithmetic is wrong."""
    from offline.build.fused_export import MAX_RELATIVE_DIFF, _score_difference

    b, a = np.array(b), np.array(a)
    want = -triangle_statistic(b, a)
    rounded = -triangle_statistic(b + np.array(rounding.get("b", 0.0)), a + np.array(rounding.get("a", 0.0)))
    assert (np.abs(rounded - want) / np.abs(want)).max() > MAX_RELATIVE_DIFF  # the score itself moves
    assert _score_difference("badexpert", rounded, want) <= MAX_RELATIVE_DIFF
    assert _score_difference("badexpert", want * 1.5, want) > 0.05
    assert _score_difference("exposed", want * (1 + 2e-3), want) > MAX_RELATIVE_DIFF  # other rules: as before
