"""`offline build --auxiliary both`, the default: BaDExpert's rule and the auxiliary posterior
once with the fine-tuned M' and once with TSBD's, each pair sharing its rule's weight; a build
with one M' has nine first-stage rules."""

import json

import numpy as np

from firewall.artifacts import THRESHOLDS, load_artifacts
from firewall.probabilities import prob_of
from firewall.rules import first_stage_rules
from firewall.rules.badexpert import triangle_statistic
from firewall.scoring import ScoringEngine
from firewall.thresholds import Thresholds
from offline.cli import main as offline

BOTH_FIRST_STAGE = ("badexpert", "badexpert_tsbd", "exposed", "mahalanobis", "auxiliary_posterior",
                    "auxiliary_tsbd_posterior", "expert_posterior", "layer_mahalanobis", "spectrum_mahalanobis",
                    "trigger_direction", "target_class")


def test_a_build_with_the_fine_tuned_auxiliary_alone_has_nine_first_stage_rules(tiny_case, tmp_path):
    out = tmp_path / "artifacts"
    assert offline(["build", "--model", str(tiny_case / "model.pt2"), "--clean-data", str(tiny_case / "clean.npz"),
                    "--out", str(out), "--auxiliary", "finetune", "--target-identification-steps", "0"]) == 0
    artifacts = load_artifacts(out)
    assert first_stage_rules(artifacts.model_roles) == ("badexpert", "exposed", "mahalanobis", "auxiliary_posterior",
                                                        "expert_posterior", "layer_mahalanobis", "spectrum_mahalanobis",
                                                        "trigger_direction", "target_class")
    assert "auxiliary_tsbd" not in artifacts.model_roles
    assert list(artifacts.manifest.raw["auxiliary_posterior"]) == ["auxiliary"]
    # It did not look for the backdoor's target, so it has no trigger direction either: the rule adds nothing.
    assert artifacts.manifest.raw["trigger_direction"] == {"target": None, "why_none": "no suspected target"}
    _, scores = ScoringEngine(artifacts).score(np.load(tiny_case / "test_triggered.npz")["x"][:32])
    assert not scores["trigger_direction"].any()


def test_a_default_build_ships_both_auxiliaries_and_their_reports(tiny_artifacts):
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    assert manifest["build"]["auxiliary_method"] == "both"
    assert {"auxiliary.onnx", "auxiliary_tsbd.onnx", "torch/auxiliary_tsbd.pt2"} <= set(manifest["files"])
    assert manifest["models"]["auxiliary"]["optimizer"] != manifest["models"]["auxiliary_tsbd"]["optimizer"]
    assert "chosen_share" in manifest["models"]["auxiliary_tsbd"]["selection"]
    assert first_stage_rules(load_artifacts(tiny_artifacts).model_roles) == BOTH_FIRST_STAGE


def test_the_fused_graph_scores_the_tsbd_rule_as_the_rule_on_the_separate_models(tiny_artifacts, tiny_case):
    engine = ScoringEngine(load_artifacts(tiny_artifacts), rules=BOTH_FIRST_STAGE)
    x = np.load(tiny_case / "test_triggered.npz")["x"][:64]
    yhat, scores = engine.score(x)
    models = engine.models
    b, a = prob_of(models.probs("expert", x), yhat), prob_of(models.probs("auxiliary_tsbd", x), yhat)
    np.testing.assert_allclose(scores["badexpert_tsbd"], -triangle_statistic(b, a), rtol=1e-3, atol=1e-5)
    assert not np.allclose(scores["badexpert_tsbd"], scores["badexpert"])


def test_calibration_shares_each_rules_weight_between_the_two_auxiliaries(tiny_artifacts):
    fusion = Thresholds.load(tiny_artifacts / THRESHOLDS).fusion
    assert fusion.first == BOTH_FIRST_STAGE
    weights = fusion.weight_of_each_rule()
    assert weights["badexpert"] == weights["badexpert_tsbd"] == 0.5
    assert weights["auxiliary_posterior"] == weights["auxiliary_tsbd_posterior"] == 0.25


def test_the_shared_trunk_does_not_combine_with_tsbd(tiny_case, tmp_path, capsys):
    assert offline(["build", "--model", str(tiny_case / "model.pt2"), "--clean-data", str(tiny_case / "clean.npz"),
                    "--out", str(tmp_path / "art"), "--auxiliary", "both", "--shared-trunk", "0.5"]) != 0
    assert "do not combine" in capsys.readouterr().err
