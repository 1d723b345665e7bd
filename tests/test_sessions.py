"""The sidecar opens the graphs it serves, and only those, before it takes a request."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from firewall.config import ServeConfig
from firewall.server import Firewall


def _opened_after_warm_up(artifacts: Path, tmp_path: Path, **options) -> set[str]:
    firewall = Firewall(ServeConfig(artifacts=artifacts, upstream="127.0.0.1:1", audit_log=tmp_path / "audit.jsonl",
                                    **options))
    assert firewall.engine.models.sessions == {}
    firewall.warm_up()
    return set(firewall.engine.models.sessions)


def test_the_default_sidecar_opens_only_the_fused_graph(tiny_artifacts, tmp_path):
    assert _opened_after_warm_up(tiny_artifacts, tmp_path) == {"fused"}


def test_with_the_upstreams_prediction_the_graph_without_the_original_model_is_opened(tiny_artifacts, tmp_path):
    opened = _opened_after_warm_up(tiny_artifacts, tmp_path, forwarding="parallel", prediction_from_upstream="logits")
    assert opened == {"fused_without_original"}


def test_an_open_cascade_band_also_opens_the_exposed_model_for_strip(tiny_artifacts, tmp_path):
    art = shutil.copytree(tiny_artifacts, tmp_path / "art")
    thresholds = json.loads((art / "thresholds.json").read_text())
    thresholds["fusion"]["band_low"] = "-inf"
    (art / "thresholds.json").write_text(json.dumps(thresholds))
    assert _opened_after_warm_up(art, tmp_path) == {"fused", "exposed"}


def test_offline_scoring_opens_what_its_rules_ask_for(tiny_artifacts):
    from firewall.artifacts import load_artifacts
    from firewall.scoring import ScoringEngine

    artifacts = load_artifacts(tiny_artifacts)
    engine = ScoringEngine(artifacts, rules=("badexpert", "scaleup"))
    engine.score(np.zeros((2, *artifacts.manifest.input_shape), np.float32))
    assert set(engine.models.sessions) == {"fused", "original"}
