"""Suspicion rules. Each maps a batch of inputs to one score per input, higher = more
suspicious; a rule rejects when its score exceeds the threshold learnt on clean data."""

from collections.abc import Iterable

from firewall.artifacts import BY_CLASS_OUTPUTS
from firewall.rules.auxiliary_posterior import AuxiliaryPosteriorRule, AuxiliaryTsbdPosteriorRule
from firewall.rules.badexpert import BadExpertRule, BadExpertTsbdRule
from firewall.rules.base import Batch, Rule
from firewall.rules.expert_posterior import ExpertPosteriorRule
from firewall.rules.exposed import ExposedRule
from firewall.rules.layer_mahalanobis import LayerMahalanobisRule
from firewall.rules.mahalanobis import MahalanobisRule
from firewall.rules.scaleup import ScaleUpRule
from firewall.rules.spectrum_mahalanobis import SpectrumMahalanobisRule
from firewall.rules.strip import ExposedEntropyRule, ExposedStripRule, StripOriginalRule
from firewall.rules.target_class import TargetClassRule
from firewall.rules.trigger_direction import TriggerDirectionRule

RULES: dict[str, type[Rule]] = {
    rule.name: rule
    for rule in (BadExpertRule, BadExpertTsbdRule, ExposedRule, MahalanobisRule, AuxiliaryPosteriorRule,
                 AuxiliaryTsbdPosteriorRule, ExpertPosteriorRule, LayerMahalanobisRule, SpectrumMahalanobisRule,
                 TriggerDirectionRule, TargetClassRule, ExposedStripRule, StripOriginalRule, ScaleUpRule,
                 ExposedEntropyRule)
}

# The costly rules (64 superimposed copies through M or E each) that run only in the
# cascade's band, those of them the calibration chose (`offline calibrate --later-rules`).
LATER_RULES = (StripOriginalRule.name, ExposedStripRule.name)


def badexpert_rules(rules: Iterable[str]) -> list[str]:
    """The BaDExpert rules among `rules` (one per M'), in their order."""
    return [rule for rule in rules if issubclass(RULES[rule], BadExpertRule)]


def auxiliary_roles(rules: Iterable[str]) -> list[str]:
    """The M' that each BaDExpert rule among `rules` reads, in the rules' order."""
    return [RULES[rule].auxiliary for rule in badexpert_rules(rules)]


def posterior_rules(rules: Iterable[str]) -> list[str]:
    """The auxiliary-posterior rules among `rules` (one per M'), in their order."""
    return [rule for rule in rules if issubclass(RULES[rule], AuxiliaryPosteriorRule)]


def graph_rules(model_roles: Iterable[str]) -> tuple[str, ...]:
    """The first-stage rules that the fused graph of a build with these models computes, in
    BY_CLASS_OUTPUTS' order: a rule that reads an M' (BaDExpert's, the auxiliary posterior)
    exists where its M' does."""
    roles = set(model_roles)
    return tuple(rule for rule in BY_CLASS_OUTPUTS if getattr(RULES[rule], "auxiliary", None) in (None, *roles))


def first_stage_rules(model_roles: Iterable[str]) -> tuple[str, ...]:
    """Every rule scored for every request: the fused graph's, then the suspected target's
    (read from the manifest, no network)."""
    return (*graph_rules(model_roles), TargetClassRule.name)


__all__ = ["RULES", "LATER_RULES", "auxiliary_roles", "badexpert_rules", "first_stage_rules", "graph_rules",
           "posterior_rules", "Batch", "Rule", "TargetClassRule",
           "BadExpertRule", "BadExpertTsbdRule", "AuxiliaryPosteriorRule", "AuxiliaryTsbdPosteriorRule",
           "ExpertPosteriorRule", "ExposedRule",
           "MahalanobisRule", "LayerMahalanobisRule", "SpectrumMahalanobisRule", "TriggerDirectionRule",
           "ExposedStripRule",
           "StripOriginalRule", "ScaleUpRule", "ExposedEntropyRule"]
