"""The scoring engine: one artifacts directory, the rules asked for, inputs in chunks.

`offline calibrate`, `offline evaluate` and the sidecar all score through this class,
so the numbers measured offline are the numbers served.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from firewall.artifacts import Artifacts
from firewall.errors import UserError
from firewall.models import ModelSet
from firewall.rules import RULES, Batch

FIREWALL = "firewall"
SERVING_RULES = ("badexpert", "strip")
BASELINE_RULES = ("strip_original", "scaleup", "strip_exposed_entropy")
# The verdict the sidecar applies. For now it is the BaDExpert rule alone; the
# calibrated fusion of several rules replaces it once it is measured to do better.
VERDICT_RULE = "badexpert"


class ScoringEngine:
    def __init__(
        self,
        artifacts: Artifacts,
        rules: Sequence[str] = SERVING_RULES,
        providers: list[str] | None = None,
        chunk_size: int = 128,
        threads: int = 0,
    ):
        unknown = [r for r in rules if r not in RULES]
        if unknown:
            raise UserError(f"unknown rule(s) {unknown}; known rules: {sorted(RULES)}")
        if VERDICT_RULE not in rules:
            rules = (VERDICT_RULE, *rules)
        self.manifest = artifacts.manifest
        self.models = ModelSet(artifacts, providers=providers, threads=threads)
        self.bank = artifacts.strip_bank().astype(np.float32)
        self.rules = {name: RULES[name]() for name in rules}
        self.chunk_size = chunk_size

    @property
    def rule_names(self) -> list[str]:
        return [*self.rules, FIREWALL]

    def batches(self, x: np.ndarray) -> Iterator[Batch]:
        for start in range(0, len(x), self.chunk_size):
            chunk = np.ascontiguousarray(x[start : start + self.chunk_size], dtype=np.float32)
            yield Batch(chunk, self.models, self.bank, self.manifest.normalization)

    def score_batch(self, batch: Batch) -> dict[str, np.ndarray]:
        scores = {name: rule.score(batch).astype(np.float64) for name, rule in self.rules.items()}
        scores[FIREWALL] = scores[VERDICT_RULE]
        return scores

    def score(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(M's predictions, {rule: scores}) for every input of x."""
        predictions, per_rule = [], {name: [] for name in self.rule_names}
        for batch in self.batches(x):
            for name, values in self.score_batch(batch).items():
                per_rule[name].append(values)
            predictions.append(batch.yhat)
        if not predictions:
            return np.zeros(0, np.int64), {name: np.zeros(0) for name in self.rule_names}
        return np.concatenate(predictions), {n: np.concatenate(v) for n, v in per_rule.items()}
