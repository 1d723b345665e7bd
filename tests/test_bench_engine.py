"""The engine benchmark compares like with like: its eager-PyTorch rules and its separate
onnxruntime sessions compute the scores the sidecar's fused graph serves, rule for rule."""

import numpy as np
import pytest
import torch

from firewall.artifacts import load_artifacts
from firewall.errors import UserError
from firewall.rules import auxiliary_roles
from firewall.scoring import ScoringEngine
from offline.bench_engine import EagerRules, SeparateSessionRules, StoredGaussians, _stacked_engine
from offline.cli import main as offline


def _served_and_timed(tiny_case, tiny_artifacts):
    """The artifacts, the sidecar's engine, the stored Gaussians, the auxiliaries and a batch of
    clean and triggered inputs."""
    artifacts = load_artifacts(tiny_artifacts)
    engine = ScoringEngine(artifacts)
    x = np.concatenate([np.load(tiny_case / "test_clean.npz")["x"][:50], np.load(tiny_case / "test_triggered.npz")["x"][:50]])
    auxiliaries = auxiliary_roles(engine.first_stage_rules)
    return artifacts, engine, StoredGaussians.of(artifacts, auxiliaries), auxiliaries, x


def _assert_scores_as_served(engine: ScoringEngine, x: np.ndarray, yhat: np.ndarray, scores: list[np.ndarray]) -> None:
    rules = engine.first_stage_rules
    served_yhat, served = engine.score(x, rules=rules)
    assert np.array_equal(yhat, served_yhat)
    assert len(scores) == len(rules)
    for rule, score in zip(rules, scores):
        np.testing.assert_allclose(score, served[rule], rtol=1e-3, atol=1e-3, err_msg=rule)


def test_the_eager_rules_score_as_the_fused_graph(tiny_case, tiny_artifacts):
    artifacts, engine, gaussians, auxiliaries, x = _served_and_timed(tiny_case, tiny_artifacts)
    yhat, *scores = EagerRules.of(artifacts, engine.bank, gaussians, auxiliaries).first_stage(torch.from_numpy(x))
    _assert_scores_as_served(engine, x, yhat.numpy(), [score.numpy() for score in scores])


def test_the_separate_sessions_score_as_the_fused_graph(tiny_case, tiny_artifacts):
    _, engine, gaussians, auxiliaries, x = _served_and_timed(tiny_case, tiny_artifacts)
    yhat, *scores = SeparateSessionRules(engine, gaussians, auxiliaries).first_stage(x)
    _assert_scores_as_served(engine, x, yhat, scores)


def test_only_a_stacked_build_of_the_same_models_is_timed_as_the_stacked_graph(tiny_case, tiny_artifacts, tmp_path):
    artifacts = load_artifacts(tiny_artifacts)
    x = np.load(tiny_case / "test_clean.npz")["x"][:32]
    with pytest.raises(UserError, match="does not stack its networks"):
        _stacked_engine(tiny_artifacts, artifacts, x, threads=1)
    # a stacked build of other models: M's own, fine-tuned afresh on fewer clean rows
    clean = np.load(tiny_case / "clean.npz")
    np.savez(tmp_path / "clean.npz", x=clean["x"][:150], y=clean["y"][:150])
    assert offline(["build", "--model", str(tiny_case / "model.pt2"), "--clean-data", str(tmp_path / "clean.npz"),
                    "--out", str(tmp_path / "other"), "--auxiliary", "finetune", "--stack-networks", "--target-identification-steps", "0"]) == 0
    with pytest.raises(UserError, match="not a build of the same models"):
        _stacked_engine(tmp_path / "other", artifacts, x, threads=1)
