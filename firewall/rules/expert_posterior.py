"""Where the backdoor expert's features put the input: how unlikely M's predicted class is
under clean class Gaussians in B's penultimate feature space.

B was fine-tuned on mislabelled clean data, so it has forgotten the task and kept the
backdoor. BaDExpert's rule reads B's softmax; B's features are a second view of the
same network. The Gaussians are fitted by the clean inputs' true labels, so the rule
asks whether B's features of an input look like those of clean inputs of the class M
answered; on a triggered input M answers the target, and the target explains B's features
no better than other classes do (the measured gain; why B's features keep the class at
all after its head has forgotten it was not studied). The distance of
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
