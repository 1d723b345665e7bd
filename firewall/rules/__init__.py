"""Suspicion rules. Each maps a batch of inputs to one score per input, higher = more
suspicious; a rule rejects when its score exceeds the threshold learnt on clean data."""

from firewall.rules.badexpert import BadExpertRule, BadExpertTsbdRule
from firewall.rules.base import Batch, Rule
from firewall.rules.exposed import ExposedRule
from firewall.rules.mahalanobis import MahalanobisRule
from firewall.rules.scaleup import ScaleUpRule
from firewall.rules.strip import ExposedEntropyRule, ExposedStripRule, StripOriginalRule

RULES: dict[str, type[Rule]] = {
    rule.name: rule
    for rule in (BadExpertRule, BadExpertTsbdRule, ExposedRule, MahalanobisRule, ExposedStripRule,
                 StripOriginalRule, ScaleUpRule, ExposedEntropyRule)
}


def auxiliary_roles(rules: tuple[str, ...]) -> list[str]:
    """The M' that each BaDExpert rule among `rules` reads, in the rules' order."""
    return [RULES[rule].auxiliary for rule in rules if issubclass(RULES[rule], BadExpertRule)]


__all__ = ["RULES", "auxiliary_roles", "Batch", "Rule", "BadExpertRule", "BadExpertTsbdRule", "ExposedRule",
           "MahalanobisRule", "ExposedStripRule", "StripOriginalRule", "ScaleUpRule", "ExposedEntropyRule"]
