"""`offline calibrate`: thresholds from clean data only, written to thresholds.json.

Every rule gets its own threshold (for the reports), and the firewall's verdict, the
fusion of the serving rules, gets one fitted on the fused clean scores.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firewall.artifacts import THRESHOLDS, Artifacts, load_artifacts
from firewall.errors import UserError
from firewall.fusion import (DEFAULT_AUXILIARY_POSTERIOR_WEIGHT, DEFAULT_CASCADE_BAND, DEFAULT_LATER_RULES,
                             DEFAULT_WEIGHTS, Fusion, default_weights)
from firewall.rules import LATER_RULES
from firewall.scoring import BASELINE_RULES, ScoringEngine, serving_rules
from firewall.thresholds import Thresholds
from offline.data.tensorsets import load_tensor_set


def every_rule(artifacts: Artifacts) -> tuple[str, ...]:
    """The serving rules and the baselines: what calibrate and evaluate score."""
    return (*serving_rules(artifacts), *BASELINE_RULES)


@dataclass(frozen=True)
class CalibrateConfig:
    artifacts: Path
    clean_data: Path
    target_fpr: float = 0.01
    cascade_band: float = DEFAULT_CASCADE_BAND
    # rule -> evidence weight, over default_weights (which also splits BaDExpert's between its auxiliaries)
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    # the auxiliary posterior's evidence weight, shared between its rules (one per auxiliary)
    auxiliary_posterior_weight: float = DEFAULT_AUXILIARY_POSTERIOR_WEIGHT
    # the costly rules the verdict consults inside the cascade's band
    later_rules: tuple[str, ...] = DEFAULT_LATER_RULES
    # the fused first-stage graph scored here, and therefore served: fp32, or int8 (`offline quantize`)
    precision: str = "fp32"


def fit_fusion(clean_scores: dict[str, np.ndarray], first_stage_rules: tuple[str, ...],
               later_rules: tuple[str, ...], band: float, weights: Mapping[str, float] = DEFAULT_WEIGHTS,
               auxiliary_posterior_weight: float = DEFAULT_AUXILIARY_POSTERIOR_WEIGHT) -> Fusion:
    """The verdict's fusion as calibrate fits it, in one place so that the cascade study,
    which measures settings calibrate could be asked for, measures what it would serve."""
    rules = (*first_stage_rules, *later_rules)
    return Fusion.fit(clean_scores, rules, band, len(first_stage_rules),
                      weights={**default_weights(rules, auxiliary_posterior_weight), **weights})


def run_calibrate(config: CalibrateConfig) -> Thresholds:
    unknown = sorted(set(config.later_rules) - set(LATER_RULES))
    if unknown or len(set(config.later_rules)) < len(config.later_rules):
        raise UserError(f"--later-rules takes distinct names among {list(LATER_RULES)}, got {list(config.later_rules)}")
    artifacts = load_artifacts(config.artifacts)
    manifest = artifacts.manifest
    clean = load_tensor_set(config.clean_data, num_classes=manifest.num_classes, input_shape=manifest.input_shape)
    seen = set(manifest.raw["build"].get("clean_row_digests", ()))
    reused = sum(digest in seen for digest in clean.row_digests())
    if reused:
        print(f"warning: {reused} of the {len(clean)} inputs in {config.clean_data} are in the clean set the "
              "artifacts were built from; the models and class Gaussians were fitted to them, so thresholds taken "
              "on them reject more than the target FPR on new inputs. Calibrate on clean data the build did not "
              "see.", file=sys.stderr)
    engine = ScoringEngine(artifacts, rules=every_rule(artifacts), precision=config.precision)
    _, scores = engine.score(clean.x)
    fusion = fit_fusion(scores, engine.first_stage_rules, config.later_rules, config.cascade_band,
                        config.weights, config.auxiliary_posterior_weight)
    thresholds = Thresholds.fit(scores, config.target_fpr, fusion, precision=config.precision)
    thresholds.save(artifacts.path(THRESHOLDS))
    return thresholds
