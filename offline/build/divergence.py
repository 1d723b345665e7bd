"""Stopping a fine-tune at its last finite weights when it diverges.

Gradient ascent has no floor: EBYD's clean unlearning drove a small vision transformer
to NaN weights within 60 steps at the rate that suits convolutional networks, and a
NaN model's held-out accuracy (argmax of NaN logits) can even pass a stop criterion.
Every fine-tune of the build therefore keeps the weights of its last step whose loss
was finite, and a step that makes the loss, a weight or a held-out output non-finite
ends the run there; the manifest says it stopped by "divergence". Runs that never
diverge are unchanged, bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from firewall.errors import UserError
from offline.data.tensorsets import TensorSet
from offline.training import forward


def finite_accuracy(model: nn.Module, heldout: TensorSet) -> float | None:
    """Held-out accuracy, or None when an output is not finite: the argmax of NaN logits
    names a class, so a broken model would otherwise score like a model at chance."""
    logits = forward(model, heldout.x)
    if not np.isfinite(logits).all():
        return None
    return float((logits.argmax(1) == heldout.y).mean())


def weights_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state, for `load_state_dict` to return to."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


class DivergenceGuard:
    """The weights a diverged run falls back to: a copy taken before every step."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._state: dict[str, torch.Tensor] | None = None
        self.steps = 0  # optimizer steps taken by the kept weights

    def keep(self, loss: torch.Tensor, steps_taken: int) -> bool:
        """Before a step: remember the weights if their loss is finite; False if it is not."""
        if not bool(torch.isfinite(loss)):
            return False
        self._state = weights_copy(self.model)
        self.steps = steps_taken
        return True

    def weights_finite(self) -> bool:
        """After a step: False if it made any weight non-finite."""
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def restore(self) -> int:
        """Back to the kept weights; returns their step count."""
        if self._state is None:
            raise UserError("the model's loss on the clean data is not finite before any fine-tuning: check the "
                            "model and the clean data")
        self.model.load_state_dict(self._state)
        return self.steps
