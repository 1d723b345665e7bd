"""`offline calibrate`'s weight flags: one per weighted first-stage rule, each reaching the
config calibration reads, so that a new rule's weight cannot be left without a flag."""

from pathlib import Path

import pytest

from firewall.fusion import DEFAULT_WEIGHTS
from firewall.rules import LATER_RULES
from offline.cli import build_parser, calibrate_config

BASE = ["calibrate", "--artifacts", "art", "--clean-data", "calib.npz"]


def test_every_weighted_first_stage_rule_has_a_flag_defaulting_to_its_fusion_weight():
    config = calibrate_config(build_parser().parse_args(BASE))
    assert config.weights == DEFAULT_WEIGHTS
    assert config.artifacts == Path("art") and config.clean_data == Path("calib.npz")


@pytest.mark.parametrize("rule", [rule for rule in DEFAULT_WEIGHTS if rule not in LATER_RULES])
def test_a_rule_weight_flag_sets_that_rule_alone(rule):
    flag = f"--{rule.replace('_', '-')}-weight"
    config = calibrate_config(build_parser().parse_args([*BASE, flag, "0.125"]))
    assert config.weights == {**DEFAULT_WEIGHTS, rule: 0.125}


def test_the_later_rule_weight_flag_sets_every_later_rule():
    config = calibrate_config(build_parser().parse_args([*BASE, "--later-rule-weight", "2"]))
    assert config.weights == {**DEFAULT_WEIGHTS, **{rule: 2.0 for rule in LATER_RULES}}
