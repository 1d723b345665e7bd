"""Thresholds learnt from clean data only: the (1 - target FPR) quantile of clean scores."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from firewall.artifacts import PRECISIONS, write_json_atomically
from firewall.errors import ArtifactError, UserError
from firewall.fusion import Fusion


@dataclass(frozen=True)
class RuleThreshold:
    threshold: float
    fpr: float
    n: int


def fit_threshold(clean_scores: np.ndarray, target_fpr: float) -> RuleThreshold:
    """The smallest threshold that rejects at most floor(n * target_fpr) clean inputs.

    A rule rejects when score > threshold, so ties at the threshold are accepted and the
    achieved FPR on the calibration set never exceeds the target.
    """
    if not 0.0 < target_fpr < 1.0:
        raise UserError(f"target FPR must lie in (0, 1), got {target_fpr}")
    scores = np.sort(np.asarray(clean_scores, dtype=np.float64))
    n = len(scores)
    needed = math.ceil(1.0 / target_fpr)
    if n < needed:
        raise UserError(
            f"{n} clean samples cannot calibrate a {target_fpr:g} false-positive rate: "
            f"give at least {needed} clean samples or raise --target-fpr"
        )
    allowed = math.floor(n * target_fpr)
    threshold = float(scores[n - 1 - allowed])
    achieved = float((scores > threshold).mean())
    return RuleThreshold(threshold=threshold, fpr=achieved, n=n)


@dataclass(frozen=True)
class Thresholds:
    """Per-rule thresholds, and the fusion whose fused score the `firewall` threshold is for."""

    target_fpr: float
    rules: dict[str, RuleThreshold]
    fusion: Fusion | None = None
    # The fused first-stage graph the scores were taken with, which is the one to serve:
    # thresholds fitted on the float graph do not hold for its int8 copy, nor the reverse.
    precision: str = "fp32"

    @classmethod
    def fit(cls, clean_scores: dict[str, np.ndarray], target_fpr: float, fusion: Fusion | None = None,
            fused_name: str = "firewall", precision: str = "fp32") -> "Thresholds":
        """Each rule at the target on its own; with a fusion, also the fused score at the
        target, so the verdict's combined false-positive rate is the one calibrated."""
        rules = {name: fit_threshold(s, target_fpr) for name, s in clean_scores.items()}
        if fusion is not None:
            rules[fused_name] = fit_threshold(fusion.fuse(clean_scores), target_fpr)
        return cls(target_fpr, rules, fusion, precision)

    def require(self, rules: list[str]) -> None:
        """Refuse to score with rules that were never calibrated."""
        missing = [r for r in rules if r not in self.rules]
        if missing:
            raise ArtifactError(f"thresholds.json has no threshold for {missing}: run `offline calibrate` again")

    def fused(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The firewall's verdict score from the per-rule scores."""
        if self.fusion is None:
            raise ArtifactError("thresholds.json holds no fusion for the firewall's verdict: "
                                "run `offline calibrate` again")
        return self.fusion.fuse(scores)

    def rejects(self, rule: str, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.rules[rule].threshold

    def to_json(self) -> dict:
        data = {"target_fpr": self.target_fpr, "precision": self.precision,
                "rules": {k: asdict(v) for k, v in self.rules.items()}}
        if self.fusion is not None:
            data["fusion"] = self.fusion.to_json()
        return data

    def save(self, path: Path) -> None:
        write_json_atomically(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> "Thresholds":
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path} not found: run `offline calibrate` first")
        try:
            data = json.loads(path.read_text())
            rules = {k: RuleThreshold(float(v["threshold"]), float(v["fpr"]), int(v["n"]))
                     for k, v in data["rules"].items()}
            fusion = Fusion.from_json(data["fusion"]) if "fusion" in data else None
            precision = str(data.get("precision", "fp32"))  # files older than int8 serving were all fp32
            if precision not in PRECISIONS:
                raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path} is malformed ({exc!r}): run `offline calibrate` again") from exc
        if fusion is not None and fusion.band_predates_per_input_fit:
            print(f"warning: {path} was calibrated before the cascade band was fitted on each input's own "
                  f"evidence: its band opens for about half of the {fusion.band_fraction:.0%} of clean traffic "
                  "it names (the verdict still meets its target FPR); run `offline calibrate` again",
                  file=sys.stderr)
        return cls(float(data["target_fpr"]), rules, fusion, precision)
