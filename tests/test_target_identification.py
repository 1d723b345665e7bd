"""`offline build` looks for the class the backdoor sends inputs to (the class a far smaller
reverse-engineered trigger reaches than the others) and names it in the manifest; the firewall's
suspected-target rule scores 1 for the inputs M answers with that class and 0 for the others, and
nothing at all where no class stood out or the build did not look."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from firewall.artifacts import THRESHOLDS, load_artifacts
from firewall.errors import ArtifactError
from firewall.fusion import DEFAULT_TARGET_CLASS_WEIGHT
from firewall.scoring import ScoringEngine
from firewall.thresholds import Thresholds
from offline.build.target_naming import ANOMALY_THRESHOLD, anomaly_index, name_target
from offline.cli import main as offline


def test_a_class_reached_with_a_far_smaller_mask_stands_out_and_equal_classes_do_not():
    sizes = np.array([40.0, 130.0, 120.0, 140.0, 125.0, 135.0, 128.0, 138.0, 122.0, 131.0])
    index = anomaly_index(sizes)
    assert index.argmax() == 0 and index[0] > ANOMALY_THRESHOLD
    assert (np.delete(index, 0) < ANOMALY_THRESHOLD).all()
    assert (np.abs(anomaly_index(np.full(10, 100.0))) < 1e-3).all()


def test_a_cheapest_class_with_another_close_behind_is_not_named():
    """A clean model's cheapest class is the tail of a continuum: bunched masks give it a large index, but
    the next class is within a few percent of it; a backdoor's target stands alone."""
    bunched = np.array([55.0, 55.5, 63.0, 64.0, 64.5, 65.0, 65.5, 66.0, 67.0, 68.0])
    assert anomaly_index(bunched)[0] > ANOMALY_THRESHOLD
    assert name_target(bunched) is None
    apart = bunched.copy()
    apart[0] = 50.0
    assert name_target(apart) == 0


def test_the_build_names_the_backdoors_target_with_its_evidence(tiny_case, tiny_artifacts):
    found = json.loads((tiny_artifacts / "manifest.json").read_text())["target_identification"]
    target = json.loads((tiny_case / "attack.json").read_text())["target"]
    assert found["suspected_target"] == target == load_artifacts(tiny_artifacts).manifest.suspected_target
    assert len(found["mask_sizes"]) == len(found["anomaly_index"]) == len(found["flip_rates"]) == 10
    assert found["mask_sizes"][target] == min(found["mask_sizes"])
    assert found["flip_rates"][target] >= 0.9
    assert found["separation"] >= found["min_separation"]


def test_the_rule_scores_the_inputs_sent_to_the_suspected_target(tiny_case, tiny_artifacts):
    engine = ScoringEngine(load_artifacts(tiny_artifacts))
    x = np.concatenate([np.load(tiny_case / "test_clean.npz")["x"][:100],
                        np.load(tiny_case / "test_triggered.npz")["x"][:100]])
    yhat, scores = engine.score(x)
    target = engine.manifest.suspected_target
    assert np.array_equal(scores["target_class"], (yhat == target).astype(float))
    assert 0 < scores["target_class"].sum() < len(x)


def test_calibration_fuses_the_suspected_target_at_its_weight(tiny_artifacts):
    fusion = Thresholds.load(tiny_artifacts / THRESHOLDS).fusion
    assert "target_class" in fusion.first
    assert fusion.weight_of_each_rule()["target_class"] == DEFAULT_TARGET_CLASS_WEIGHT


def _with_identification(tiny_artifacts, tmp_path, identification):
    copy = shutil.copytree(tiny_artifacts, tmp_path / "art")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["target_identification"] = identification
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_where_no_class_stood_out_the_rule_adds_nothing(tiny_case, tiny_artifacts, tmp_path):
    for identification in (None, {"suspected_target": None}):  # did not look; looked and found none
        engine = ScoringEngine(load_artifacts(_with_identification(tiny_artifacts, tmp_path / str(identification),
                                                                   identification)))
        _, scores = engine.score(np.load(tiny_case / "test_triggered.npz")["x"][:50])
        assert not scores["target_class"].any()


def test_a_suspected_target_that_is_not_a_class_is_refused(tiny_artifacts, tmp_path):
    with pytest.raises(ArtifactError, match="suspected_target 10 is not a class"):
        load_artifacts(_with_identification(tiny_artifacts, tmp_path, {"suspected_target": 10}))


def test_a_negative_number_of_identification_steps_is_refused(tiny_case, tmp_path, capsys):
    assert offline(["build", "--model", str(tiny_case / "model.pt2"), "--clean-data", str(tiny_case / "clean.npz"),
                    "--out", str(tmp_path / "art"), "--target-identification-steps", "-1"]) != 0
    assert "--target-identification-steps" in capsys.readouterr().err


def test_an_earlier_identification_is_reused_only_if_it_was_made_as_builds_now_make_it(tiny_case, tmp_path):
    from offline.build.pipeline import BuildConfig, _target_identification
    from offline.data.tensorsets import load_tensor_set
    from offline.model_io import load_pt2

    model, clean = load_pt2(tiny_case / "model.pt2").module(), load_tensor_set(tiny_case / "clean.npz")
    config = BuildConfig(model=str(tiny_case / "model.pt2"), clean_data=tiny_case / "clean.npz", out=tmp_path,
                         target_identification_steps=2)
    fresh, trigger = _target_identification(model, clean, 10, config)
    assert fresh["size_averaging"] and "reused" not in fresh
    assert _target_identification(model, clean, 10, config, prior=fresh, prior_trigger=trigger) == (
        {**fresh, "reused": True}, trigger)
    for earlier in ("size_averaging", "reversed_trigger"):  # a session-37 build; one of sessions 38-39
        made_otherwise = {key: value for key, value in fresh.items() if key != earlier}
        assert "reused" not in _target_identification(model, clean, 10, config, prior=made_otherwise)[0]
