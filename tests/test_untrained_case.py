"""The serving benchmarks' sets of untrained networks are artifacts sets like any other.

A GPU benchmark needs a ResNet-18-sized set that this machine cannot train; latency
depends on the graphs, not on the weights, so `offline.untrained_case` writes fresh
initialisations through the build's own writer. What it writes must load, score and
carry its thresholds as a built set does, and must say that it detects nothing.
"""

from __future__ import annotations

import json

import numpy as np

from firewall.artifacts import load_artifacts
from firewall.scoring import ScoringEngine
from offline.untrained_case import ROLES, UntrainedCaseConfig, make_untrained_case


def test_an_untrained_case_is_a_calibrated_artifacts_set_of_independent_networks_that_says_so(tmp_path):
    out = tmp_path / "case"
    case = make_untrained_case(UntrainedCaseConfig(out, arch="resnet", width=4, dataset="digits"))
    artifacts = load_artifacts(out / "artifacts")
    manifest = artifacts.manifest.raw
    assert manifest["build"]["untrained"] is True and case["untrained"] is True
    assert json.loads((out / "case.json").read_text()) == case
    assert {*ROLES, "features"} <= set(artifacts.model_roles)
    digests = {manifest["files"][f"{role}.onnx"]["sha256"] for role in ROLES}
    assert len(digests) == len(ROLES)  # one fresh initialisation per role, none shared
    assert (out / "artifacts" / "thresholds.json").is_file()
    x = np.load(out / "test_clean.npz")["x"][:5]
    yhat, scores = ScoringEngine(artifacts).score(x)
    assert yhat.shape == (5,) and scores and all(np.isfinite(s).all() for s in scores.values())
