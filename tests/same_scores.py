"""A check two test modules share: two artifacts sets whose first stages should score alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from firewall.artifacts import load_artifacts
from firewall.rules import first_stage_rules
from firewall.scoring import ScoringEngine


def assert_first_stages_agree(before: Path, after: Path, x: np.ndarray) -> None:
    """The same predictions, and every first-stage rule's scores within float rounding."""
    first, second = load_artifacts(before), load_artifacts(after)
    rules = first_stage_rules(first.model_roles)
    yhat_before, scores_before = ScoringEngine(first, rules=rules).score(x)
    yhat_after, scores_after = ScoringEngine(second, rules=rules).score(x)
    assert np.array_equal(yhat_before, yhat_after)
    for rule in rules:
        assert np.allclose(scores_after[rule], scores_before[rule], rtol=1e-4, atol=1e-5), rule
