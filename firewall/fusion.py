"""The firewall's verdict: the rules fused into one score, calibrated jointly on clean data.

Each rule is put on a common scale learnt from clean scores alone: 0 at the clean
median and 1 at the clean (1 - target FPR) quantile, so "1" means "as suspicious as
the rule's own threshold". The fused score is the largest standardised score, and its
threshold is fitted on the fused clean scores, so the combined false-positive rate
meets the target instead of the rules' rates adding up.

The first rule is the cheap one (BaDExpert: three small forward passes). The others
(exposed STRIP: dozens of superimposed copies) are consulted only for inputs the first
rule puts in an uncertain band, at or above `band_low`; below it the fused score is
the first rule's alone. That is the cascade: its cost is the band's share of clean
traffic, and `offline evaluate` measures its detection with exactly this arithmetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from firewall.errors import UserError

# By default exposed STRIP does not run. Over 13 measured cases (docs/CASCADE.md) a 5%
# band raised the mean TPR at the calibrated threshold from 0.593 to 0.615, helping
# shapes (SIG 0.62 -> 0.81) and hurting digits (SIG's TPR at 1% 0.87 -> 0.70): a mixed,
# single-seed gain that does not yet pay for 64 forward passes on 4% of clean traffic
# (docs/PERFORMANCE.md). `offline calibrate --cascade-band` opens the band.
DEFAULT_CASCADE_BAND = 0.0


def _standardizer(clean: np.ndarray, target_fpr: float) -> tuple[float, float]:
    center = float(np.median(clean))
    spread = float(np.quantile(clean, 1.0 - target_fpr)) - center
    # A rule whose clean scores are all equal has no spread: any larger score is
    # then maximally unusual, which a tiny scale expresses without dividing by zero.
    return center, max(spread, 1e-6 * max(1.0, abs(center)))


@dataclass(frozen=True)
class Fusion:
    rules: tuple[str, ...]
    center: dict[str, float]
    scale: dict[str, float]
    band_low: float
    band_fraction: float

    @classmethod
    def fit(cls, clean_scores: dict[str, np.ndarray], rules: tuple[str, ...], target_fpr: float,
            band_fraction: float) -> "Fusion":
        """Learn the scales and the cascade band from clean scores of every rule in `rules`.

        `band_fraction` is the share of clean inputs for which the later rules run:
        1 runs them always (plain max fusion), 0 never (the first rule alone).
        """
        if not rules:
            raise UserError("fusion needs at least one rule")
        if not 0.0 <= band_fraction <= 1.0:
            raise UserError(f"the cascade band must be a fraction in [0, 1], got {band_fraction}")
        missing = [r for r in rules if r not in clean_scores]
        if missing:
            raise UserError(f"no clean scores for rule(s) {missing}")
        center, scale = {}, {}
        for rule in rules:
            center[rule], scale[rule] = _standardizer(np.asarray(clean_scores[rule], np.float64), target_fpr)
        first = (np.asarray(clean_scores[rules[0]], np.float64) - center[rules[0]]) / scale[rules[0]]
        if band_fraction == 0.0:
            band_low = np.inf
        elif band_fraction == 1.0:
            band_low = -np.inf
        else:
            band_low = float(np.quantile(first, 1.0 - band_fraction))
        return cls(tuple(rules), center, scale, band_low, band_fraction)

    @property
    def first(self) -> str:
        return self.rules[0]

    @property
    def later(self) -> tuple[str, ...]:
        return self.rules[1:]

    def standardize(self, rule: str, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, np.float64) - self.center[rule]) / self.scale[rule]

    def needs_later(self, first_scores: np.ndarray) -> np.ndarray:
        """Which inputs the later (costly) rules must score: those in the uncertain band."""
        if not self.later:
            return np.zeros(len(first_scores), bool)
        return self.standardize(self.first, first_scores) >= self.band_low

    def fuse(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The fused score. Later rules are read only where `needs_later` holds, so they
        may hold anything (NaN, say) for the inputs the cascade skipped."""
        fused = self.standardize(self.first, scores[self.first])
        band = fused >= self.band_low
        for rule in self.later:
            later = self.standardize(rule, np.where(band, scores[rule], -np.inf))
            fused = np.where(band, np.maximum(fused, later), fused)
        return fused

    def to_json(self) -> dict:
        data = asdict(self)
        data["rules"] = list(self.rules)
        data["band_low"] = _finite_or_text(self.band_low)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Fusion":
        return cls(tuple(data["rules"]), {k: float(v) for k, v in data["center"].items()},
                   {k: float(v) for k, v in data["scale"].items()}, float(data["band_low"]),
                   float(data["band_fraction"]))


def _finite_or_text(value: float) -> float | str:
    """JSON has no infinities; Python's float() reads these spellings back."""
    return value if np.isfinite(value) else ("inf" if value > 0 else "-inf")
