"""`offline calibrate`: thresholds from clean data only, written to thresholds.json.

Every rule gets its own threshold (for the reports), and the firewall's verdict, the
fusion of the serving rules, gets one fitted on the fused clean scores.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from firewall.artifacts import THRESHOLDS, load_artifacts
from firewall.fusion import DEFAULT_CASCADE_BAND, DEFAULT_WEIGHTS, Fusion
from firewall.scoring import BASELINE_RULES, FIRST_STAGE_RULES, SERVING_RULES, ScoringEngine
from firewall.thresholds import Thresholds
from offline.data.tensorsets import load_tensor_set

ALL_RULES = SERVING_RULES + BASELINE_RULES


@dataclass(frozen=True)
class CalibrateConfig:
    artifacts: Path
    clean_data: Path
    target_fpr: float = 0.01
    cascade_band: float = DEFAULT_CASCADE_BAND
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))  # rule -> evidence weight


def run_calibrate(config: CalibrateConfig) -> Thresholds:
    artifacts = load_artifacts(config.artifacts)
    manifest = artifacts.manifest
    if Path(manifest.raw["build"]["clean_data"]).resolve() == Path(config.clean_data).resolve():
        print(f"warning: {config.clean_data} is the clean set the artifacts were built from; the models and class "
              "Gaussians were fitted to it, so thresholds taken on it reject more than the target FPR on new "
              "inputs. Calibrate on clean data the build did not see.", file=sys.stderr)
    clean = load_tensor_set(config.clean_data, num_classes=manifest.num_classes, input_shape=manifest.input_shape)
    engine = ScoringEngine(artifacts, rules=ALL_RULES)
    _, scores = engine.score(clean.x)
    fusion = Fusion.fit(scores, SERVING_RULES, config.cascade_band, len(FIRST_STAGE_RULES),
                        weights=config.weights)
    thresholds = Thresholds.fit(scores, config.target_fpr, fusion)
    thresholds.save(artifacts.path(THRESHOLDS))
    return thresholds
