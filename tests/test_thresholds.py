"""Thresholds come from clean scores alone and never exceed the target FPR on them."""

import numpy as np
import pytest

from firewall.errors import UserError
from firewall.thresholds import Thresholds, fit_threshold


@pytest.mark.parametrize("n, fpr", [(100, 0.01), (1000, 0.01), (1076, 0.01), (333, 0.05)])
def test_achieved_fpr_is_at_most_the_target_and_as_close_as_the_data_allows(n, fpr):
    scores = np.random.default_rng(n).normal(size=n)
    fitted = fit_threshold(scores, fpr)
    rejected = int((scores > fitted.threshold).sum())
    assert rejected == int(np.floor(n * fpr))
    assert fitted.fpr == rejected / n <= fpr and fitted.n == n


def test_ties_at_the_threshold_are_accepted():
    scores = np.r_[np.zeros(150), np.ones(50)]
    fitted = fit_threshold(scores, 0.01)
    assert fitted.threshold == 1.0 and fitted.fpr == 0.0


def test_too_few_clean_samples_for_the_target_is_an_error():
    with pytest.raises(UserError, match="at least 100"):
        fit_threshold(np.zeros(99), 0.01)


def test_round_trip_through_json(tmp_path):
    thresholds = Thresholds.fit({"badexpert": np.arange(200.0)}, 0.05)
    thresholds.save(tmp_path / "thresholds.json")
    assert Thresholds.load(tmp_path / "thresholds.json") == thresholds
