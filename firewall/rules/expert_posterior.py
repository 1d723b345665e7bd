"""Where the backdoor expert's features put the input: how unlikely M's predicted class is
under clean class Gaussians in B's penultimate feature space.

B was fine-tuned on mislabelled clean data, so it has forgotten the task and kept the
backdoor. BaDExpert's rule reads B's softmax; B's features are a second view of the
same network. On a clean input B's features still sit, weakly, with the input's true
class (fine-tuning moved its head more than its layers); on a triggered input they sit
where the trigger puts them, with none of the clean classes in particular, so M's
answer (the target) explains them no better than any other class does. The distance of
B's features to M's class alone adds nothing to BaDExpert's rule (it is the view the rule
already reads); the posterior, -log P(M's class | B's features) under the Gaussians, asks
how much better M's class explains them than the others do, and that helps against the
attack built to keep representations mixed (adaptive_blend; docs/METHODS.md, "The
expert's and the exposed model's own features").
"""

from __future__ import annotations

from firewall.rules.base import FirstStageRule


class ExpertPosteriorRule(FirstStageRule):
    """Served from the fused graph as `posterior_by_class` (firewall/rules/auxiliary_posterior.py)
    of B's features under B's clean class Gaussians."""

    name = "expert_posterior"
