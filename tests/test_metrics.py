"""The detection metrics the reports are made of."""

import numpy as np
import pytest

from offline.metrics import auroc, rates_above_by_class, same_class_auroc

rng = np.random.default_rng(0)


def test_a_rule_that_only_notices_the_target_class_separates_pooled_but_not_within_the_class():
    clean_classes = np.repeat(np.arange(10), 100)
    clean = rng.normal(size=1000) + 4.0 * (clean_classes == 0)  # the target class's clean inputs score high
    backdoor = rng.normal(size=300) + 4.0
    backdoor_classes = np.zeros(300, int)
    assert auroc(clean, backdoor) > 0.9
    assert same_class_auroc(clean, clean_classes, backdoor, backdoor_classes) == pytest.approx(0.5, abs=0.06)


def test_in_class_auroc_forms_pairs_within_each_target_class_of_an_all_to_all_attack():
    clean_classes = np.array([0, 0, 1, 1])
    clean = np.array([0.0, 1.0, 10.0, 11.0])
    backdoor_classes = np.array([0, 1])
    backdoor = np.array([2.0, 5.0])  # above its class-0 pair, below its class-1 pair
    assert same_class_auroc(clean, clean_classes, backdoor, backdoor_classes) == 0.5
    assert auroc(clean, backdoor) == 0.5


def test_in_class_auroc_is_absent_when_no_class_holds_both_kinds():
    assert same_class_auroc(np.zeros(3), np.array([1, 1, 2]), np.ones(2), np.array([0, 0])) is None


def test_false_positives_are_counted_within_each_class_and_an_empty_class_has_none():
    scores = np.array([0.0, 2.0, 2.0, 0.0, 0.0])
    classes = np.array([0, 0, 1, 1, 1])
    assert rates_above_by_class(scores, classes, 1.0, 3) == [0.5, pytest.approx(1 / 3), None]
