"""The firewall's verdict fuses the rules and is calibrated as one score on clean data."""

import numpy as np
import pytest

from firewall.errors import UserError
from firewall.fusion import Fusion
from firewall.thresholds import Thresholds

RNG = np.random.default_rng(0)


def clean_scores(n=2000):
    """Two independent rules on different scales, as BaDExpert and exposed STRIP are."""
    return {"badexpert": RNG.normal(-3.0, 0.5, n), "strip": RNG.uniform(0.0, 0.2, n)}


def fused_fpr(band, target=0.01):
    calibration, test = clean_scores(), clean_scores(20000)
    fusion = Fusion.fit(calibration, ("badexpert", "strip"), target, band)
    thresholds = Thresholds.fit(calibration, target, fusion)
    return thresholds.rejects("firewall", fusion.fuse(test)).mean(), thresholds


@pytest.mark.parametrize("band", [0.0, 0.1, 1.0])
def test_the_fused_false_positive_rate_meets_the_target_not_the_sum_of_the_rules(band):
    fpr, thresholds = fused_fpr(band)
    assert fpr <= 0.015
    if band == 1.0:  # each rule at 1% alone would reject about 2% of clean inputs together
        test = clean_scores(20000)
        either = thresholds.rejects("badexpert", test["badexpert"]) | thresholds.rejects("strip", test["strip"])
        assert either.mean() > 0.015


def test_a_zero_band_is_the_first_rule_alone_and_a_full_band_the_maximum():
    scores = clean_scores()
    alone = Fusion.fit(scores, ("badexpert", "strip"), 0.01, 0.0)
    assert np.array_equal(np.argsort(alone.fuse(scores)), np.argsort(scores["badexpert"]))
    assert not alone.needs_later(scores["badexpert"]).any()
    both = Fusion.fit(scores, ("badexpert", "strip"), 0.01, 1.0)
    expected = np.maximum(both.standardize("badexpert", scores["badexpert"]), both.standardize("strip", scores["strip"]))
    assert np.allclose(both.fuse(scores), expected)


def test_the_cascade_reads_later_rules_only_inside_its_band():
    scores = clean_scores()
    fusion = Fusion.fit(scores, ("badexpert", "strip"), 0.01, 0.1)
    band = fusion.needs_later(scores["badexpert"])
    assert 0.08 <= band.mean() <= 0.12
    skipped = dict(scores, strip=np.where(band, scores["strip"], np.nan))
    assert np.array_equal(fusion.fuse(skipped), fusion.fuse(scores))


def test_a_trigger_caught_only_by_the_later_rule_is_caught_inside_the_band():
    scores = clean_scores()
    fusion = Fusion.fit(scores, ("badexpert", "strip"), 0.01, 0.1)
    thresholds = Thresholds.fit(scores, 0.01, fusion)
    in_band = np.quantile(scores["badexpert"], 0.95)
    suspicious = {"badexpert": np.array([in_band]), "strip": np.array([10.0])}
    assert thresholds.rejects("firewall", fusion.fuse(suspicious))[0]


def test_fusion_survives_a_round_trip_through_thresholds_json(tmp_path):
    scores = clean_scores()
    for band in (0.0, 0.3, 1.0):
        thresholds = Thresholds.fit(scores, 0.01, Fusion.fit(scores, ("badexpert", "strip"), 0.01, band))
        thresholds.save(tmp_path / "thresholds.json")
        loaded = Thresholds.load(tmp_path / "thresholds.json")
        assert loaded.fusion == thresholds.fusion
        assert np.array_equal(loaded.fused(scores), thresholds.fused(scores))


def test_a_rule_with_constant_clean_scores_does_not_divide_by_zero():
    scores = {"badexpert": RNG.normal(size=500), "strip": np.ones(500)}
    fused = Fusion.fit(scores, ("badexpert", "strip"), 0.01, 1.0).fuse(scores)
    assert np.isfinite(fused).all()


@pytest.mark.parametrize("band", [-0.1, 1.5])
def test_a_band_outside_zero_to_one_is_refused(band):
    with pytest.raises(UserError, match="fraction"):
        Fusion.fit(clean_scores(), ("badexpert", "strip"), 0.01, band)
