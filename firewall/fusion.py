"""The firewall's verdict: the rules fused into one score, calibrated jointly on clean data.

Each rule's score is turned into evidence against "this input is clean": the negative
log of its upper-tail probability among the rule's own clean calibration scores,
-log((#clean scores >= s + 1) / (n + 1)); beyond the largest clean score, where that
share runs out at log(n + 1), an exponential tail fitted to the top clean scores carries
it on (`TAIL_SHARE`). The fused score is the sum over the rules of
their evidence times their weights (Fisher's method, weighted), and its threshold is
fitted on the fused clean scores, so the combined false-positive rate meets the target
instead of the rules' rates adding up.
The sum, not the maximum: when one rule separates and the other does not, the maximum
inherits the useless rule's clean tail and raises the threshold (shapes/VGG WaNet, TPR
at 1% FPR: BaDExpert 0.76, maximum of standardised scores 0.36, sum of evidence 0.91;
docs/METHODS.md has the table). The clean scores are kept sorted in thresholds.json,
which is what the tail probabilities are read from.

The first `first_stage` rules are the cheap ones (BaDExpert, the exposed model's
margin, the Mahalanobis distance of M's features: one fused graph of small forward
passes). The others (STRIP on M and exposed STRIP: 64 superimposed copies each) are
consulted only for inputs the cheap rules put in an uncertain band, at or above
`band_low`; below it the fused score is the cheap rules' alone. That is the cascade:
its cost is the band's share of clean traffic, and `offline evaluate` measures its
detection with exactly this arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from firewall.errors import UserError
from firewall.rules import LATER_RULES, badexpert_rules, posterior_rules

# By default inputs whose first-stage evidence is among the top 5% of the clean
# calibration inputs' also run STRIP on M and exposed STRIP. The two catch different
# triggers: STRIP on M the ViT's patch and blend cells (digits/ViT blend, TPR at 1% FPR
# 0.53 -> 0.91), exposed STRIP the warping ones (shapes/VGG width-16 WaNet 0.94 -> 0.98).
# Until session 23 the band was "0.1" but fitted on the sum of each rule's separately
# sorted clean scores, which opened it for about 5% of clean traffic; 0.05 fitted on each
# input's own evidence opens it for the same share, which is what the serving cost was
# measured at. A true 10% band adds little more (over the 25 attack cells of
# docs/RESULTS.md, seeds averaged, at the later weight below: mean TPR at 1% FPR 0.822 ->
# 0.829, nearly all on the ViT) at twice the STRIP cost (docs/CASCADE.md). Band 0 serves
# the first stage alone.
DEFAULT_CASCADE_BAND = 0.05
# What an open band runs (`offline calibrate --later-rules`): both STRIPs.
DEFAULT_LATER_RULES = LATER_RULES

# The later rules' evidence counts half. A STRIP blind to a trigger (it scores triggered
# inputs as cleaner than clean ones) adds nothing to them in the band and spreads the
# clean inputs there, so the fused threshold rises for all: at weight 1 the cascade cost
# shapes/VGG width-8 all2all 0.70 -> 0.56 and width-16 SIG 0.95 -> 0.84 in TPR at 1% FPR.
# Over the 25 attack cells, band 0.05: first stage alone 0.9854 / 0.770 (mean AUROC / TPR
# at 1% FPR), weight 1 0.9868 / 0.811, weight 0.5 0.9870 / 0.822, achieved FPR 0.0089 ->
# 0.0085 (docs/METHODS.md, "The cascade's band, measured right"). `offline calibrate
# --later-rule-weight`.
DEFAULT_LATER_RULE_WEIGHT = 0.5

# The exposed margin's evidence counts half of BaDExpert's. E is blind where clean
# unlearning takes the backdoor with the task (all-to-all, where the target depends on
# the class; WaNet on digits), and a blind rule's evidence is noise the sum must
# overcome. At weight 1 the fused verdict was no better than BaDExpert alone over the
# 13 attack cells of docs/RESULTS.md (mean AUROC 0.977 against 0.978); at 0.5 it is
# 0.983 and TPR at 1% FPR 0.686 -> 0.719, worst cell 0.870 -> 0.914. The weight was
# read off that matrix (0.33 to 0.5 are equally good) and then checked on cells it had
# not seen (docs/METHODS.md, "Fusion weights"). `offline calibrate --exposed-weight`.
DEFAULT_EXPOSED_WEIGHT = 0.5

# The Mahalanobis rule's evidence counts half too. Read off the same 13 development
# cells with both other rules as above (mean AUROC 0.9839 at weight 1, 0.9861 at 0.5;
# worst cell 0.916 and 0.922) and checked on the 16 cells they do not include
# (0.9943 and 0.9940; worst 0.966 and 0.972): docs/METHODS.md, "The Mahalanobis
# rule". `offline calibrate --mahalanobis-weight`.
DEFAULT_MAHALANOBIS_WEIGHT = 0.5

# And the layer-Mahalanobis rule's. Read off the 44 attack cases of docs/CASCADE.md in a
# study on their cached scores (session 25): mean AUROC / TPR at 1% FPR 0.9878 / 0.816
# without it, 0.9900 / 0.833 at weight 0.25, 0.9904 / 0.839 at 0.5, 0.9899 / 0.834 at
# 0.75; the weight trades the ViT's gain against adaptive_blend's loss, which 0.25
# halves at 80% of the gain (docs/METHODS.md, "M's intermediate layers"). Built and
# measured on the rebuilt matrix: 0.9903 / 0.839 ("The layer-Mahalanobis rule").
# `offline calibrate --layer-mahalanobis-weight`.
DEFAULT_LAYER_MAHALANOBIS_WEIGHT = 0.5

# And the spectrum rule's. Read off the 44 attack cases of docs/CASCADE.md in a study on
# their cached scores (session 27): mean AUROC / TPR at 1% FPR 0.9903 / 0.839 without it,
# 0.9938 / 0.877 at weight 0.25, 0.9936 / 0.880 at 0.5, 0.9922 / 0.869 at 1; like the
# layer rule's it trades a large gain where the networks see little (digits/ViT SIG)
# against adaptive_blend and width-8 dynamic, which the spectrum barely sees
# (docs/METHODS.md, "The spectrum rule"). Built and measured on the rebuilt matrix:
# 0.9936 / 0.880 over the 44 cases, 0.9935 / 0.880 over the 25 cells of docs/RESULTS.md
# (session 26: 0.9902 / 0.839).
# `offline calibrate --spectrum-mahalanobis-weight`.
DEFAULT_SPECTRUM_MAHALANOBIS_WEIGHT = 0.5

# And the expert posterior's. Read off the 67 attack cases of docs/CASCADE.md in a study on
# their cached scores and B's dumped features (session 30): over the 25 attack cells of
# docs/RESULTS.md, seeds averaged, mean AUROC / TPR at 1% FPR 0.9867 / 0.838 without it,
# 0.9881 / 0.843 at weight 0.5, 0.9881 / 0.838 at 1; worst cell (shapes/VGG width-8
# adaptive_blend) 0.897 -> 0.922 at 0.5, 0.933 at 1 (docs/METHODS.md, "The expert's and
# the exposed model's own features"). Built and measured on 20 cells rebuilt in session 31:
# width-8 adaptive_blend 0.897 -> 0.922, dynamic 0.949 -> 0.956, WaNet 0.911 -> 0.911 over
# three seeds, as predicted ("The expert posterior"). `offline calibrate --expert-posterior-weight`.
DEFAULT_EXPERT_POSTERIOR_WEIGHT = 0.5

# The suspected target's evidence counts as BaDExpert's (firewall/rules/target_class.py).
# Read off the matrix's attack cases in a study on their cached scores with each case's
# target identified by the build's own method (session 37; docs/METHODS.md, "The suspected
# target"): weight 0.5 / 1 / 1.5 / 2 raise the mean AUROC and TPR at 1% FPR with the
# weight, most on the weak width-8 cells, but on the clean models where a class was named
# wrongly the clean inputs M sends there are rejected more the more it weighs (at most 5% at
# weight 1, 6.7% at 2, against 1.7% without the rule), and the test FPR drifts up.
# `offline calibrate --target-class-weight`.
DEFAULT_TARGET_CLASS_WEIGHT = 1.0

# The trigger direction's evidence counts as the suspected target's, beside which it tells the
# target's triggered inputs from its genuine ones (firewall/rules/trigger_direction.py). Read off
# the 50 rebuilt matrix cells with a named class in a study on their cached scores (session 39):
# mean AUROC / TPR at 1% FPR 0.9907 / 0.822 without it, 0.9926 / 0.834 at weight 0.5, 0.9932 /
# 0.838 at 1, 0.9932 / 0.837 at 1.5, 0.9931 / 0.833 at 2; weight 1.5 gains nothing on the mean and
# loses on digits (docs/METHODS.md, "The reversed trigger's direction in M's features").
# `offline calibrate --trigger-direction-weight`.
DEFAULT_TRIGGER_DIRECTION_WEIGHT = 1.0
DEFAULT_WEIGHTS = {"exposed": DEFAULT_EXPOSED_WEIGHT, "mahalanobis": DEFAULT_MAHALANOBIS_WEIGHT,
                   "layer_mahalanobis": DEFAULT_LAYER_MAHALANOBIS_WEIGHT,
                   "spectrum_mahalanobis": DEFAULT_SPECTRUM_MAHALANOBIS_WEIGHT,
                   "expert_posterior": DEFAULT_EXPERT_POSTERIOR_WEIGHT,
                   "target_class": DEFAULT_TARGET_CLASS_WEIGHT,
                   "trigger_direction": DEFAULT_TRIGGER_DIRECTION_WEIGHT,
                   **{rule: DEFAULT_LATER_RULE_WEIGHT for rule in LATER_RULES}}

# The auxiliary posterior's evidence counts half as well, shared between the auxiliaries
# like BaDExpert's. Read off the 32 attack cells built before session 16 (fused mean
# AUROC 0.9880 -> 0.9891 at weight 0.25, 0.9894 at 0.5, 0.9893 at 1; worst cell 0.940 ->
# 0.952, 0.956, 0.957; TPR at 1% FPR 0.790, 0.790, 0.781), with the same gain on the 12
# cells earlier weights were read off and on the 20 others (docs/METHODS.md, "The
# auxiliary posterior"). `offline calibrate --auxiliary-posterior-weight`.
DEFAULT_AUXILIARY_POSTERIOR_WEIGHT = 0.5


# Beyond the largest clean score the empirical share is 0 and the evidence would stop at
# log(n + 1), so an input far outside one rule's clean range would earn no more than the
# cleanest input's top score, and each rule added to the sum would dilute it further.
# Past that score the evidence grows linearly, at the rate of an exponential tail fitted
# to the top TAIL_SHARE of the clean scores (peaks over a threshold: the scale is their
# mean excess). Inside the clean range nothing changes, so neither the calibrated
# threshold nor the band moves. Over the 32 attack cells of session 16's development
# study: mean AUROC 0.9894 -> 0.9897, TPR at 1% FPR 0.790 -> 0.797, achieved FPR 0.0075
# both ways; nearly all of it on shapes/VGG w16 SIG (0.987 / 0.69 -> 0.995 / 0.89), where
# the auxiliary posterior had diluted BaDExpert's and the Mahalanobis rule's capped
# evidence; a share from 1% to 10% gives the same (docs/METHODS.md, "The evidence's tail").
TAIL_SHARE = 0.05
_MIN_TAIL = 10  # clean scores the tail's scale is read from, at least


def default_weights(rules: tuple[str, ...],
                    auxiliary_posterior_weight: float = DEFAULT_AUXILIARY_POSTERIOR_WEIGHT) -> dict[str, float]:
    """DEFAULT_WEIGHTS, BaDExpert's weight of 1 shared among its rules in `rules` (a build
    with both auxiliaries scores BaDExpert's rule once with each M', and together they
    count what one does: docs/METHODS.md, "Two auxiliaries"), and the auxiliary
    posterior's weight shared the same way."""
    experts, posteriors = badexpert_rules(rules), posterior_rules(rules)
    return {**DEFAULT_WEIGHTS, **{rule: 1.0 / len(experts) for rule in experts},
            **{rule: auxiliary_posterior_weight / len(posteriors) for rule in posteriors}}


@dataclass(frozen=True)
class Fusion:
    rules: tuple[str, ...]
    clean: dict[str, np.ndarray]  # each rule's clean calibration scores, sorted
    band_low: float
    band_fraction: float
    first_stage: int = 1
    weights: dict[str, float] = field(default_factory=dict)  # a rule's evidence multiplier; 1 if absent
    # The share of the calibration inputs the band opened for, as fitted; None in files
    # calibrated before session 23, whose band opened for about half its `band_fraction`.
    band_share: float | None = None
    # Each rule's tail scale, read once from its clean scores rather than on every batch
    # (most of the evidence's cost on the scoring thread: about 215 -> 145 us a one-input batch, six rules).
    tail_scales: dict[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tail_scales", _tail_scales(self.clean))

    @classmethod
    def fit(cls, clean_scores: dict[str, np.ndarray], rules: tuple[str, ...], band_fraction: float,
            first_stage: int = 1, weights: dict[str, float] | None = None) -> "Fusion":
        """Keep the clean scores of every rule in `rules` and learn the cascade band.

        The first `first_stage` rules always run. `band_fraction` is the share of clean
        inputs for which the later rules run: 1 runs them always, 0 never (the
        first-stage rules alone). `weights` scales rules' evidence (default 1 each).
        """
        if not rules:
            raise UserError("fusion needs at least one rule")
        if not 1 <= first_stage <= len(rules):
            raise UserError(f"the first stage must hold 1 to {len(rules)} rules, got {first_stage}")
        if not 0.0 <= band_fraction <= 1.0:
            raise UserError(f"the cascade band must be a fraction in [0, 1], got {band_fraction}")
        missing = [r for r in rules if r not in clean_scores]
        if missing:
            raise UserError(f"no clean scores for rule(s) {missing}")
        weights = {rule: float(w) for rule, w in (weights or {}).items() if rule in rules}
        if any(not (np.isfinite(w) and w > 0) for w in weights.values()):
            raise UserError(f"rule weights must be positive numbers, got {weights}")
        aligned = {rule: np.asarray(clean_scores[rule], np.float64) for rule in rules}
        if len({len(scores) for scores in aligned.values()}) > 1:
            raise UserError("the rules' clean scores must come from the same clean inputs, got lengths "
                            f"{ {rule: len(scores) for rule, scores in aligned.items()} }")
        clean = {rule: np.sort(scores) for rule, scores in aligned.items()}
        # Each input's own first-stage evidence: the rules' scores paired input by input.
        first = _weighted_sum(clean, _tail_scales(clean), weights, rules[:first_stage], aligned)
        if band_fraction == 0.0:
            band_low = np.inf
        elif band_fraction == 1.0:
            band_low = -np.inf
        else:
            band_low = float(np.quantile(first, 1.0 - band_fraction))
        band_share = float((first >= band_low).mean())
        return cls(tuple(rules), clean, band_low, band_fraction, first_stage, weights, band_share)

    @property
    def first(self) -> tuple[str, ...]:
        """The rules every input is scored with."""
        return self.rules[: self.first_stage]

    @property
    def later(self) -> tuple[str, ...]:
        return self.rules[self.first_stage :]

    @property
    def reachable_later(self) -> tuple[str, ...]:
        """The later rules some input can reach: none when a band of 0 calibrated them away."""
        return self.later if self.band_low < np.inf else ()

    @property
    def band_open(self) -> bool:
        return bool(self.reachable_later)

    @property
    def band_predates_per_input_fit(self) -> bool:
        """Whether an open, partial band was fitted before session 23, when its edge was a
        quantile of the sum of each rule's separately sorted clean scores: such a band
        opens for about half the share `band_fraction` says (verdicts still meet the
        target FPR; the cascade just consults its later rules less often than asked)."""
        return self.band_open and 0.0 < self.band_fraction < 1.0 and self.band_share is None

    def describe_band(self) -> str:
        """One line for the sidecar's start-up log: what the cascade runs, and for how much
        clean traffic, so that an operator sees the STRIP cost they calibrated for."""
        if not self.band_open:
            return "first stage only (no cascade band)"
        weights = self.weight_of_each_rule()
        later = " and ".join(f"{rule} (weight {weights[rule]:g})" for rule in self.later)
        share = ("not recorded: calibrated before session 23, about half that; calibrate again"
                 if self.band_share is None else f"{self.band_share:.1%} of them")
        return (f"{later} for inputs in the top {self.band_fraction:.0%} of the clean calibration inputs' "
                f"first-stage evidence ({share})")

    def evidence(self, rule: str, scores: np.ndarray) -> np.ndarray:
        """The rule's weight times -log of the smoothed share of clean calibration scores
        at or above each score: 0 for the least suspicious, weight x log(n + 1) just
        beyond every clean score, and growing along the fitted tail past it."""
        return _weighted_sum(self.clean, self.tail_scales, self.weights, (rule,), {rule: scores})

    def first_stage_evidence(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The first-stage rules' fused evidence: the whole verdict outside the band."""
        return _weighted_sum(self.clean, self.tail_scales, self.weights, self.first, scores)

    def in_band(self, first_evidence: np.ndarray) -> np.ndarray:
        """Which inputs the later (costly) rules must score: those whose first-stage
        evidence lies in the uncertain band."""
        if not self.band_open:
            return np.zeros(len(first_evidence), bool)
        return first_evidence >= self.band_low

    def needs_later(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """`in_band` from the first-stage rules' scores, for callers that hold only those."""
        return self.in_band(self.first_stage_evidence(scores))

    def complete(self, first_evidence: np.ndarray, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The fused score from the first stage's evidence and the later rules' scores.
        Later rules are read only inside the band, so they may hold anything (NaN, say)
        for the inputs the cascade skipped; with the band shut (the default) they need
        not be present at all."""
        band = self.in_band(first_evidence)
        fused = first_evidence
        for rule in self.reachable_later:
            later = self.evidence(rule, np.where(band, scores[rule], -np.inf))
            fused = np.where(band, fused + later, fused)
        return fused

    def fuse(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The fused score of inputs every rule has scored (or every rule the band reaches)."""
        return self.complete(self.first_stage_evidence(scores), scores)

    def weight_of_each_rule(self) -> dict[str, float]:
        return {rule: self.weights.get(rule, 1.0) for rule in self.rules}

    def to_json(self) -> dict:
        return {"method": "fisher", "rules": list(self.rules), "first_stage": self.first_stage,
                "weights": self.weight_of_each_rule(),
                "band_low": _finite_or_text(self.band_low), "band_fraction": self.band_fraction,
                "band_share": self.band_share, "clean": {rule: scores.tolist() for rule, scores in self.clean.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "Fusion":
        if data.get("method") != "fisher":
            raise KeyError("fusion.method (this firewall fuses by Fisher's method)")
        clean = {rule: np.sort(np.asarray(values, np.float64)) for rule, values in data["clean"].items()}
        weights = {rule: float(w) for rule, w in data.get("weights", {}).items()}  # absent before weights existed
        band_share = data.get("band_share")  # absent before session 23
        return cls(tuple(data["rules"]), clean, float(data["band_low"]), float(data["band_fraction"]),
                   int(data["first_stage"]), weights, None if band_share is None else float(band_share))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Fusion) and self.rules == other.rules and self.first_stage == other.first_stage
                and self.weight_of_each_rule() == other.weight_of_each_rule()
                and self.band_low == other.band_low and self.band_fraction == other.band_fraction
                and self.band_share == other.band_share
                and all(np.array_equal(self.clean[r], other.clean[r]) for r in self.rules))

    __hash__ = None


def _weighted_sum(clean: dict[str, np.ndarray], scales: dict[str, float], weights: dict[str, float],
                  rules: tuple[str, ...], scores: dict[str, np.ndarray]) -> np.ndarray:
    """Sum over `rules` of each rule's weight (1 if absent) times its evidence."""
    return np.sum([weights.get(rule, 1.0) * _evidence(clean[rule], scales[rule], scores[rule]) for rule in rules],
                  axis=0)


def _evidence(clean_sorted: np.ndarray, tail_scale: float, scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    n = len(clean_sorted)
    evidence = np.log(n + 1.0) - np.log(n - np.searchsorted(clean_sorted, scores, side="left") + 1.0)
    beyond = scores > clean_sorted[-1]
    if np.isfinite(tail_scale) and np.any(beyond):
        evidence = np.where(beyond, np.log(n + 1.0) + (scores - clean_sorted[-1]) / tail_scale, evidence)
    return evidence


def _tail_scales(clean: dict[str, np.ndarray]) -> dict[str, float]:
    return {rule: _tail_scale(scores) for rule, scores in clean.items()}


def _tail_scale(clean_sorted: np.ndarray) -> float:
    """The mean excess of the top clean scores over the next one: the scale of an exponential
    tail, i.e. how far past the largest clean score one more unit of evidence lies. Infinite
    (no growth) where the top scores are tied or too few to fit."""
    n = len(clean_sorted)
    top = min(n - 1, max(_MIN_TAIL, int(TAIL_SHARE * n)))
    if top < 1:
        return np.inf
    scale = float(np.mean(clean_sorted[n - top:] - clean_sorted[n - top - 1]))
    return scale if scale > 0 else np.inf


def _finite_or_text(value: float) -> float | str:
    """JSON has no infinities; Python's float() reads these spellings back."""
    return value if np.isfinite(value) else ("inf" if value > 0 else "-inf")
