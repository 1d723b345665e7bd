"""The scoring engine: one artifacts directory, the rules asked for, inputs in chunks.

`offline calibrate`, `offline evaluate` and the sidecar all score through this class,
so the numbers measured offline are the numbers served. The sidecar scores in two
stages (the cheap BaDExpert graph for everyone, the costly rules for the cascade's
band); offline, every rule scores every input and `Fusion.fuse` reads the later rules
only where the sidecar would have computed them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from firewall.artifacts import PRECISIONS, PREDICTION_OUTPUT, Artifacts
from firewall.errors import UserError
from firewall.models import ModelSet, SessionTuning
from firewall.rules import LATER_RULES, RULES, Batch, first_stage_rules

FIREWALL = "firewall"
BASELINE_RULES = ("scaleup", "strip_exposed_entropy")


def serving_rules(artifacts: Artifacts) -> tuple[str, ...]:
    """Every rule a calibration of these artifacts can fuse, cheap first: the first-stage rules
    the artifacts' fused graph computes in one run for every request, then the later rules
    the cascade's band runs."""
    return (*first_stage_rules(artifacts.model_roles), *LATER_RULES)


class ScoringEngine:
    def __init__(
        self,
        artifacts: Artifacts,
        rules: Sequence[str] | None = None,  # default: the artifacts' serving rules
        providers: list[str] | None = None,
        chunk_size: int = 128,
        tuning: SessionTuning = SessionTuning(),
        precision: str = "fp32",  # of the fused first-stage graph: thresholds.json's, where it is served
    ):
        rules = serving_rules(artifacts) if rules is None else rules
        unknown = [r for r in rules if r not in RULES]
        if unknown:
            raise UserError(f"unknown rule(s) {unknown}; known rules: {sorted(RULES)}")
        self.manifest = artifacts.manifest
        self.first_stage_rules = first_stage_rules(artifacts.model_roles)
        if precision not in PRECISIONS:
            raise UserError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
        self.bank = artifacts.strip_bank().astype(np.float32)
        self.models = ModelSet(artifacts, providers=providers, tuning=tuning, precision=precision,
                               strip_copies=len(self.bank))
        self.rules = {name: RULES[name]() for name in rules}
        self.chunk_size = chunk_size

    @property
    def rule_names(self) -> list[str]:
        return list(self.rules)

    def batches(self, x: np.ndarray, yhat: np.ndarray | None = None) -> Iterator[Batch]:
        for start in range(0, len(x), self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            chunk = np.ascontiguousarray(x[rows], dtype=np.float32)
            yield Batch(chunk, self.models, self.bank, self.manifest.normalization,
                        None if yhat is None else yhat[rows])

    def score(self, x: np.ndarray, yhat: np.ndarray | None = None,
              rules: Sequence[str] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(predictions, {rule: scores}) for every input of x, for `rules` (default: all of
        this engine's). With `yhat` given, M is not run for the prediction."""
        names = list(rules or self.rules)
        predictions, per_rule = [], {name: [] for name in names}
        for batch in self.batches(x, yhat):
            for name in names:
                per_rule[name].append(self.rules[name].score(batch).astype(np.float64))
            predictions.append(batch.yhat)
        if not predictions:
            return np.zeros(0, np.int64), {name: np.zeros(0) for name in names}
        return np.concatenate(predictions), {n: np.concatenate(v) for n, v in per_rule.items()}

    def warm_up(self, predict: bool, later_rules: Sequence[str]) -> None:
        """Run the first stage and the models `later_rules` use once, so that no request
        pays for opening a session (or, on CUDA, for cuDNN's set-up of the one batch shape)
        and a graph that cannot run fails here."""
        zeros = np.zeros((1, *self.manifest.input_shape), np.float32)
        self.first_stage(zeros, predict)
        for rule in later_rules:
            for role in RULES[rule].models:
                self.models.logits(role, zeros)

    def first_stage(self, x: np.ndarray, predict: bool = True) -> dict[str, np.ndarray]:
        """The sidecar's cheap stage: {rule: its score for every class} for the first-stage
        rules, and M's prediction under PREDICTION_OUTPUT unless the upstream will supply it.
        One fused-graph run, whatever the batch size."""
        yhat, by_class = self.models.first_stage(x, predict)
        return by_class if yhat is None else {PREDICTION_OUTPUT: yhat, **by_class}
