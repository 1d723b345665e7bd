"""The firewall's verdict fuses the rules and is calibrated as one score on clean data."""

import json

import numpy as np
import pytest

from firewall.errors import UserError
from firewall.fusion import DEFAULT_AUXILIARY_POSTERIOR_WEIGHT, DEFAULT_WEIGHTS, Fusion, default_weights
from firewall.thresholds import Thresholds

RNG = np.random.default_rng(0)


def clean_scores(n=2000):
    """Two independent rules on different scales, as BaDExpert and exposed STRIP are."""
    return {"badexpert": RNG.normal(-3.0, 0.5, n), "strip": RNG.uniform(0.0, 0.2, n)}


def fused_fpr(band, target=0.01):
    calibration, test = clean_scores(), clean_scores(20000)
    fusion = Fusion.fit(calibration, ("badexpert", "strip"), band)
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


def test_evidence_is_the_negative_log_of_the_clean_tail_share():
    fusion = Fusion.fit({"badexpert": np.arange(99.0)}, ("badexpert",), 0.0)
    # 0 at or below every clean score, log(2) at the median, log(50) at the largest clean score
    assert np.allclose(fusion.evidence("badexpert", np.array([-5.0, 0.0, 49.0, 98.0])),
                       [0.0, 0.0, np.log(100 / 51), np.log(50)])


def test_evidence_keeps_growing_past_the_largest_clean_score_along_the_fitted_tail():
    fusion = Fusion.fit({"badexpert": np.arange(99.0)}, ("badexpert",), 0.0)
    # the top 10 clean scores (89..98) exceed the next one (88) by 5.5 on average: one unit of
    # evidence per 5.5 past the largest clean score, from log(n + 1) on
    beyond = fusion.evidence("badexpert", np.array([98.5, 109.0, 1e9]))
    assert np.allclose(beyond[:2], np.log(100) + np.array([0.5, 11.0]) / 5.5)
    assert beyond[2] > 1e8
    assert fusion.evidence("badexpert", np.float64(109.0)) == pytest.approx(np.log(100) + 2.0)  # one score alone


def test_tied_top_clean_scores_give_no_tail_to_extrapolate():
    fusion = Fusion.fit({"badexpert": np.zeros(50)}, ("badexpert",), 0.0)
    assert np.allclose(fusion.evidence("badexpert", np.array([0.0, 1.0, 1e9, np.inf])), [0.0] + [np.log(51)] * 3)


def test_an_input_far_beyond_one_rules_clean_range_is_rejected_though_the_others_find_it_ordinary():
    """Capped at log(n + 1), one rule's evidence (7.6 here) would fall short of the threshold
    the sum of three rules' clean evidence sets (about 10 at 1% FPR)."""
    rules = ("badexpert", "exposed", "mahalanobis")
    own = np.random.default_rng(1)  # not the module's RNG: the other tests' draws stay as they were
    calibration = {rule: own.normal(0.0, 1.0, 2000) for rule in rules}
    fusion = Fusion.fit(calibration, rules, 0.0, first_stage=3)
    thresholds = Thresholds.fit(calibration, 0.01, fusion)
    far_on_one = {"badexpert": np.array([50.0]), "exposed": np.array([0.0]), "mahalanobis": np.array([0.0])}
    assert fusion.evidence("badexpert", far_on_one["badexpert"])[0] > np.log(2001) + 10
    assert thresholds.rejects("firewall", fusion.fuse(far_on_one)).all()


def test_a_zero_band_is_the_first_rule_alone_and_a_full_band_the_sum_of_evidence():
    scores = clean_scores()
    alone = Fusion.fit(scores, ("badexpert", "strip"), 0.0)
    order = np.argsort(scores["badexpert"])
    assert np.all(np.diff(alone.fuse(scores)[order]) >= 0)  # ranks like the rule itself
    assert not alone.needs_later(scores).any()
    both = Fusion.fit(scores, ("badexpert", "strip"), 1.0)
    expected = both.evidence("badexpert", scores["badexpert"]) + both.evidence("strip", scores["strip"])
    assert np.allclose(both.fuse(scores), expected)


def test_one_rule_that_separates_is_not_drowned_by_one_that_does_not():
    """A rule blind to the attack (its triggered scores look clean) must not raise the
    verdict's threshold past inputs the other rule puts beyond its clean scores."""
    calibration, test = clean_scores(), clean_scores(5000)
    fusion = Fusion.fit(calibration, ("badexpert", "strip"), 1.0)
    thresholds = Thresholds.fit(calibration, 0.01, fusion)
    triggered = {"badexpert": RNG.normal(-0.5, 0.3, 5000), "strip": clean_scores(5000)["strip"]}
    caught_by_rule = thresholds.rejects("badexpert", triggered["badexpert"]).mean()
    caught_fused = thresholds.rejects("firewall", fusion.fuse(triggered)).mean()
    assert caught_fused >= 0.95 * caught_by_rule
    assert thresholds.rejects("firewall", fusion.fuse(test)).mean() <= 0.015


def test_the_cascade_reads_later_rules_only_inside_its_band():
    scores = clean_scores()
    fusion = Fusion.fit(scores, ("badexpert", "strip"), 0.1)
    band = fusion.needs_later(scores)
    assert 0.08 <= band.mean() <= 0.12
    skipped = dict(scores, strip=np.where(band, scores["strip"], np.nan))
    assert np.array_equal(fusion.fuse(skipped), fusion.fuse(scores))


def test_with_the_band_shut_the_later_rules_need_not_have_run_at_all():
    scores = clean_scores()
    fusion = Fusion.fit(scores, ("badexpert", "strip"), 0.0)
    first_only = {"badexpert": scores["badexpert"]}
    first = fusion.first_stage_evidence(first_only)
    assert not fusion.in_band(first).any()
    assert np.array_equal(fusion.complete(first, first_only), fusion.fuse(scores))


def test_a_trigger_caught_only_by_the_later_rule_is_caught_inside_the_band():
    scores = clean_scores()
    fusion = Fusion.fit(scores, ("badexpert", "strip"), 0.1)
    thresholds = Thresholds.fit(scores, 0.01, fusion)
    in_band = np.quantile(scores["badexpert"], 0.95)
    suspicious = {"badexpert": np.array([in_band]), "strip": np.array([10.0])}
    assert thresholds.rejects("firewall", fusion.fuse(suspicious))[0]


def three_rules(n=2000):
    """BaDExpert and the exposed margin in the first stage, exposed STRIP in the band."""
    return {**clean_scores(n), "exposed": RNG.normal(-8.0, 2.0, n)}


@pytest.mark.parametrize("band", [0.05, 0.1, 0.3])
def test_the_band_holds_its_share_of_the_calibration_inputs_when_several_rules_open_it(band):
    """The band is a quantile of each input's summed first-stage evidence, not of the sum of
    each rule's sorted scores: that pairs the most suspicious score of one rule with the
    most suspicious of the other, and opened the band for about half the share asked."""
    scores = three_rules()
    fusion = Fusion.fit(scores, ("badexpert", "exposed", "strip"), band, first_stage=2)
    assert fusion.needs_later(scores).mean() == pytest.approx(band, abs=0.002)
    assert fusion.band_share == fusion.needs_later(scores).mean()


def test_the_clean_scores_must_come_from_the_same_inputs_for_every_rule():
    scores = dict(three_rules(), exposed=RNG.normal(-8.0, 2.0, 1999))
    with pytest.raises(UserError, match="same clean inputs"):
        Fusion.fit(scores, ("badexpert", "exposed", "strip"), 0.1, first_stage=2)


def test_the_first_stage_rules_are_always_fused_and_open_the_band_together():
    scores = three_rules()
    fusion = Fusion.fit(scores, ("badexpert", "exposed", "strip"), 0.1, first_stage=2)
    assert fusion.first == ("badexpert", "exposed") and fusion.later == ("strip",)
    first = fusion.evidence("badexpert", scores["badexpert"]) + fusion.evidence("exposed", scores["exposed"])
    assert np.array_equal(fusion.needs_later(scores), first >= fusion.band_low)
    skipped = dict(scores, strip=np.full(len(first), np.nan))
    alone = Fusion.fit(scores, ("badexpert", "exposed", "strip"), 0.0, first_stage=2)
    assert np.allclose(alone.fuse(skipped), first)


@pytest.mark.parametrize("band, rules, opens", [(0.0, ("badexpert", "exposed", "strip"), False),
                                               (0.1, ("badexpert", "exposed", "strip"), True),
                                               (1.0, ("badexpert", "exposed"), False)])
def test_the_later_rules_run_only_when_the_band_is_open_and_there_are_any(band, rules, opens):
    scores = three_rules()
    fusion = Fusion.fit(scores, rules, band, first_stage=2)
    assert fusion.band_open is opens
    assert bool(fusion.needs_later(scores).any()) == opens


def test_a_trigger_only_the_second_first_stage_rule_sees_is_rejected_at_the_joint_rate():
    calibration, test = three_rules(), three_rules(20000)
    fusion = Fusion.fit(calibration, ("badexpert", "exposed", "strip"), 0.0, first_stage=2)
    thresholds = Thresholds.fit(calibration, 0.01, fusion)
    assert thresholds.rejects("firewall", fusion.fuse(test)).mean() <= 0.015
    suspicious = {"badexpert": np.array([-3.0]), "exposed": np.array([5.0]), "strip": np.array([np.nan])}
    assert thresholds.rejects("firewall", fusion.fuse(suspicious))[0]


@pytest.mark.parametrize("first_stage", [0, 4])
def test_a_first_stage_of_no_rules_or_more_rules_than_given_is_refused(first_stage):
    with pytest.raises(UserError, match="first stage"):
        Fusion.fit(three_rules(), ("badexpert", "exposed", "strip"), 0.0, first_stage=first_stage)


def test_a_rule_weight_scales_its_evidence_and_the_joint_rate_still_holds():
    calibration, test = three_rules(), three_rules(20000)
    plain = Fusion.fit(calibration, ("badexpert", "exposed"), 0.0, first_stage=2)
    halved = Fusion.fit(calibration, ("badexpert", "exposed"), 0.0, first_stage=2, weights={"exposed": 0.5})
    assert np.allclose(halved.evidence("exposed", test["exposed"]), 0.5 * plain.evidence("exposed", test["exposed"]))
    assert np.allclose(halved.evidence("badexpert", test["badexpert"]), plain.evidence("badexpert", test["badexpert"]))
    thresholds = Thresholds.fit(calibration, 0.01, halved)
    assert thresholds.rejects("firewall", halved.fuse(test)).mean() <= 0.015
    # an input only the down-weighted rule finds odd needs more than one at weight 1 would
    only_exposed = {"badexpert": np.array([-3.0]), "exposed": np.array([calibration["exposed"].max() + 1])}
    assert halved.fuse(only_exposed)[0] < plain.fuse(only_exposed)[0]


def test_badexperts_weight_of_one_is_shared_among_its_rules_and_the_others_keep_theirs():
    alone = default_weights(("badexpert", "exposed", "mahalanobis", "auxiliary_posterior", "strip"))
    both = default_weights(("badexpert", "badexpert_tsbd", "exposed", "mahalanobis", "auxiliary_posterior",
                            "auxiliary_tsbd_posterior", "strip"))
    assert alone["badexpert"] == 1.0 and "badexpert_tsbd" not in alone
    assert both["badexpert"] == both["badexpert_tsbd"] == 0.5
    assert alone["auxiliary_posterior"] == DEFAULT_AUXILIARY_POSTERIOR_WEIGHT
    assert both["auxiliary_posterior"] == both["auxiliary_tsbd_posterior"] == DEFAULT_AUXILIARY_POSTERIOR_WEIGHT / 2
    assert alone["exposed"] == both["exposed"] == DEFAULT_WEIGHTS["exposed"]


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan")])
def test_a_rule_weight_must_be_positive(weight):
    with pytest.raises(UserError, match="weights"):
        Fusion.fit(three_rules(), ("badexpert", "exposed"), 0.0, first_stage=2, weights={"exposed": weight})


def test_thresholds_written_before_weights_existed_load_with_weight_one(tmp_path):
    scores = three_rules()
    fusion = Fusion.fit(scores, ("badexpert", "exposed", "strip"), 0.0, first_stage=2)
    data = fusion.to_json()
    del data["weights"]
    assert Fusion.from_json(data) == fusion


def test_fusion_survives_a_round_trip_through_thresholds_json(tmp_path):
    scores = three_rules()
    for band, first_stage in ((0.0, 1), (0.3, 2), (1.0, 2)):
        fusion = Fusion.fit(scores, ("badexpert", "exposed", "strip"), band, first_stage, weights={"exposed": 0.5})
        thresholds = Thresholds.fit(scores, 0.01, fusion)
        thresholds.save(tmp_path / "thresholds.json")
        loaded = Thresholds.load(tmp_path / "thresholds.json")
        assert loaded.fusion == thresholds.fusion
        assert np.array_equal(loaded.fused(scores), thresholds.fused(scores))


def test_a_rule_with_constant_clean_scores_does_not_divide_by_zero():
    scores = {"badexpert": RNG.normal(size=500), "strip": np.ones(500)}
    fused = Fusion.fit(scores, ("badexpert", "strip"), 1.0).fuse(scores)
    assert np.isfinite(fused).all()


@pytest.mark.parametrize("band", [-0.1, 1.5])
def test_a_band_outside_zero_to_one_is_refused(band):
    with pytest.raises(UserError, match="fraction"):
        Fusion.fit(clean_scores(), ("badexpert", "strip"), band)


def test_a_band_calibrated_before_it_was_fitted_per_input_is_reported_when_loaded(tmp_path, capsys):
    """Files from before session 23 carry no `band_share`: their band opens for about half
    the share they name, so loading one says to calibrate again."""
    scores = three_rules()
    for band, stale in ((0.1, True), (0.0, False), (1.0, False)):
        thresholds = Thresholds.fit(scores, 0.01, Fusion.fit(scores, ("badexpert", "exposed", "strip"), band, 2))
        thresholds.save(tmp_path / "thresholds.json")
        assert Thresholds.load(tmp_path / "thresholds.json").fusion == thresholds.fusion
        assert "calibrate" not in capsys.readouterr().err
        data = json.loads((tmp_path / "thresholds.json").read_text())
        del data["fusion"]["band_share"]
        (tmp_path / "thresholds.json").write_text(json.dumps(data))
        assert Thresholds.load(tmp_path / "thresholds.json").fusion.band_predates_per_input_fit is stale
        assert ("run `offline calibrate` again" in capsys.readouterr().err) is stale


def test_the_band_is_described_with_its_rules_weights_and_share_of_clean_traffic():
    scores = three_rules()
    shut = Fusion.fit(scores, ("badexpert", "exposed", "strip"), 0.0, first_stage=2)
    assert shut.describe_band() == "first stage only (no cascade band)"
    band = Fusion.fit(scores, ("badexpert", "exposed", "strip"), 0.05, first_stage=2, weights={"strip": 0.5})
    assert band.describe_band() == ("strip (weight 0.5) for inputs in the top 5% of the clean calibration inputs' "
                                    f"first-stage evidence ({band.band_share:.1%} of them)")
    old = Fusion.from_json({**band.to_json(), "band_share": None})
    assert "calibrate again" in old.describe_band()
