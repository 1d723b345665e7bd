"""The engine benchmark compares like with like: its eager-PyTorch rules compute the scores
the sidecar's fused graph serves, rule for rule."""

import numpy as np
import torch

from firewall.artifacts import load_artifacts
from firewall.rules import auxiliary_roles
from firewall.scoring import ScoringEngine
from offline.bench_engine import EagerRules, StoredGaussians


def test_the_eager_rules_score_as_the_fused_graph(tiny_case, tiny_artifacts):
    artifacts = load_artifacts(tiny_artifacts)
    engine = ScoringEngine(artifacts)
    rules = engine.first_stage_rules
    auxiliaries = auxiliary_roles(rules)
    eager = EagerRules.of(artifacts, engine.bank, StoredGaussians.of(artifacts, auxiliaries), auxiliaries)
    x = np.concatenate([np.load(tiny_case / "test_clean.npz")["x"][:50], np.load(tiny_case / "test_triggered.npz")["x"][:50]])
    yhat, *scores = eager.first_stage(torch.from_numpy(x))
    served_yhat, served = engine.score(x, rules=rules)
    assert np.array_equal(yhat.numpy(), served_yhat)
    assert len(scores) == len(rules)
    for rule, score in zip(rules, scores):
        np.testing.assert_allclose(score.numpy(), served[rule], rtol=1e-3, atol=1e-3, err_msg=rule)
