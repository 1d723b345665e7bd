"""Whether M sends the input to the class the build found to be the backdoor's target.

A backdoor is a shortcut into one class, so its inputs all arrive there, and `offline
build` looks for that class from M and clean data alone (reverse-engineered triggers,
offline/build/target_identification.py). Where one class stood out, an input M answers
with it is a priori more likely a backdoor input than one M answers with another class:
only about a tenth of clean inputs go to any one class, every successful backdoor input
goes there. The rule says only that (1 for the suspected target, 0 otherwise); the
fusion turns it into evidence, -log of the share of clean inputs that M sends there, so
the other rules need less evidence to reject such an input and, the threshold being
calibrated on the sum, more to reject one sent elsewhere. It carries most on the weak
backdoors the other rules barely see (docs/METHODS.md, "The suspected target").
Where no class stood out, or the build did not look, the rule is 0 for every input and
adds nothing.
"""

from __future__ import annotations

from firewall.artifacts import TARGET_CLASS_RULE
from firewall.rules.base import FirstStageRule


class TargetClassRule(FirstStageRule):
    """Served with the fused graph's rules: firewall/models.py adds its score for every class,
    read from the manifest."""

    name = TARGET_CLASS_RULE
