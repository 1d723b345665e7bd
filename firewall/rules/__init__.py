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

__all__ = ["RULES", "Batch", "Rule", "BadExpertRule", "BadExpertTsbdRule", "ExposedRule", "MahalanobisRule",
           "ExposedStripRule", "StripOriginalRule", "ScaleUpRule", "ExposedEntropyRule"]
