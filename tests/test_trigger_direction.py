"""The trigger-direction rule: where the build named a suspected target, it keeps the reversed
trigger that reached it, fits the direction in M's features from clean inputs stamped with it to
the target's genuine inputs, and the firewall scores an input M sends to the target along that
direction; every input M sends elsewhere scores one floor, below every build input's score."""

from __future__ import annotations

import json

import numpy as np

from firewall.artifacts import REVERSED_TRIGGER, THRESHOLDS, Normalization, load_artifacts
from firewall.fusion import DEFAULT_TRIGGER_DIRECTION_WEIGHT
from firewall.probabilities import prob_of
from firewall.rules.trigger_direction import trigger_direction_by_class
from firewall.scoring import ScoringEngine
from firewall.thresholds import Thresholds
from offline.build.reversed_trigger import ReversedTrigger
from offline.build.trigger_direction import fit_trigger_direction
from offline.data.tensorsets import TensorSet
from offline.metrics import auroc

TARGET = 2


def _toy_task(rows_per_class: int = 40, seed: int = 0) -> TensorSet:
    """Images whose class is written in the top-left pixel; the rest is noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), rows_per_class)
    x = rng.uniform(0.0, 0.5, size=(len(y), 1, 4, 4)).astype(np.float32)
    x[:, 0, 0, 0] = y / 10
    return TensorSet(x, y)


def _toy_model(x: np.ndarray) -> np.ndarray:
    """Answers the class in the top-left pixel, or the target where the bottom-right pixel is lit."""
    return np.where(x[:, 0, 3, 3] > 0.9, TARGET, np.rint(x[:, 0, 0, 0] * 10).astype(int))


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float64)


def test_the_direction_points_from_the_targets_genuine_inputs_to_the_stamped_ones():
    clean = _toy_task()
    mask = np.zeros((4, 4), np.float32)
    mask[3, 3] = 1.0
    trigger = ReversedTrigger(TARGET, mask, np.ones((1, 4, 4), np.float32))
    direction = fit_trigger_direction(trigger, clean, _flat(clean.x), 4, _flat, _toy_model, Normalization())
    assert direction.report["stamped"] == direction.report["stamped_of_other_classes"] == 120
    assert direction.report["genuine"] == 40 and direction.report["separation"] > 3
    others = clean.x[clean.y != TARGET]
    stamped = trigger.stamp(others)
    scores = trigger_direction_by_class(_flat(np.concatenate([clean.x, stamped])), direction.weights, direction.bias)
    genuine_scores, stamped_scores = scores[: len(clean)][clean.y == TARGET, TARGET], scores[len(clean):, TARGET]
    assert stamped_scores.min() > genuine_scores.max()
    assert abs(genuine_scores.mean()) < 1e-6  # centred on the target's genuine inputs
    # Every other class's score is the floor, below anything a build input scored for the target.
    assert np.all(np.delete(scores, TARGET, axis=1) == direction.report["floor"])
    assert direction.report["floor"] < scores[:, TARGET].min()
    assert not np.delete(direction.weights, TARGET, axis=1).any()


def test_without_a_suspected_target_or_with_too_few_inputs_reaching_it_the_rule_adds_nothing():
    clean = _toy_task()
    absent = fit_trigger_direction(None, clean, _flat(clean.x), 4, _flat, _toy_model, Normalization())
    assert not absent.weights.any() and not absent.bias.any() and absent.report["why_none"] == "no suspected target"
    useless = ReversedTrigger(TARGET, np.zeros((4, 4), np.float32), np.ones((1, 4, 4), np.float32))  # sends nothing
    fitted = fit_trigger_direction(useless, clean, _flat(clean.x), 4, _flat, _toy_model, Normalization())
    assert not fitted.weights.any()


def test_the_build_keeps_the_reversed_trigger_of_the_target_it_named(tiny_case, tiny_artifacts):
    artifacts = load_artifacts(tiny_artifacts)
    identification = artifacts.manifest.raw["target_identification"]
    assert identification["reversed_trigger"] == REVERSED_TRIGGER and REVERSED_TRIGGER in artifacts.manifest.files
    trigger = ReversedTrigger.load(tiny_artifacts / REVERSED_TRIGGER)
    assert trigger.target == artifacts.manifest.suspected_target
    clean = np.load(tiny_case / "test_clean.npz")
    others = clean["x"][clean["y"] != trigger.target][:200]  # digits: the model reads pixels in [0, 1] as they are
    yhat, _ = ScoringEngine(artifacts).score(trigger.stamp(others))
    assert (yhat == trigger.target).mean() >= 0.9
    report = artifacts.manifest.raw["trigger_direction"]
    assert report["target"] == trigger.target and report["why_none"] is None and report["genuine"] >= 2


def test_the_sidecar_scores_the_direction_for_inputs_sent_to_the_target_and_the_floor_for_the_others(
        tiny_case, tiny_artifacts):
    artifacts = load_artifacts(tiny_artifacts)
    engine = ScoringEngine(artifacts)
    clean = np.load(tiny_case / "test_clean.npz")["x"][:300]
    triggered = np.load(tiny_case / "test_triggered.npz")["x"][:300]
    x = np.concatenate([clean, triggered])
    yhat, scores = engine.score(x)
    features = engine.models.logits("features", x).reshape(len(x), -1).astype(np.float64)
    expected = prob_of(trigger_direction_by_class(features, *artifacts.trigger_direction()), yhat)
    assert np.allclose(scores["trigger_direction"], expected, rtol=1e-3, atol=1e-3)
    target = artifacts.manifest.suspected_target
    floor = artifacts.manifest.raw["trigger_direction"]["floor"]
    assert np.allclose(scores["trigger_direction"][yhat != target], floor, atol=1e-4)
    # Among the inputs M answers with the target, BadNets' triggered ones lie further along it than clean ones.
    sent = yhat == target
    is_triggered = np.arange(len(x)) >= len(clean)
    assert sent[~is_triggered].sum() >= 5 and sent[is_triggered].sum() >= 100
    direction = scores["trigger_direction"]
    assert auroc(direction[sent & ~is_triggered], direction[sent & is_triggered]) > 0.9


def test_calibration_fuses_the_trigger_direction_at_its_weight(tiny_artifacts):
    fusion = Thresholds.load(tiny_artifacts / THRESHOLDS).fusion
    assert "trigger_direction" in fusion.first
    assert fusion.weight_of_each_rule()["trigger_direction"] == DEFAULT_TRIGGER_DIRECTION_WEIGHT
    assert json.loads((tiny_artifacts / THRESHOLDS).read_text())["fusion"]["weights"]["trigger_direction"] == 1.0
