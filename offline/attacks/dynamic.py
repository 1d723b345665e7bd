"""Input-aware dynamic trigger (after Nguyen and Tran, NeurIPS 2020).

A small generator network, trained together with the classifier, makes a different
trigger for every input: an additive pattern of at most 0.15 per pixel. Each training
batch has a backdoor share (the input's own trigger, labelled with the target) and a
cross share (another input's trigger, true label kept), so that a trigger works only
on the input it was made for, and a diversity term keeps different inputs' triggers
apart. No fixed pattern exists for a defender to reconstruct.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from offline.attacks.base import Attack, PoisonedSet


class TriggerGenerator(nn.Module):
    def __init__(self, channels: int, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, channels, 3, padding=1), nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Dynamic(Attack):
    name = "dynamic"
    poison_rate = 0.1
    cross_rate = 0.1
    amplitude = 0.15
    diversity_weight = 1.0
    trains_jointly = True

    def __init__(self, image_shape: tuple[int, ...], target: int = 0, seed: int = 0, num_classes: int = 10):
        super().__init__(image_shape, target, seed, num_classes)
        torch.manual_seed(seed)
        self.generator = TriggerGenerator(self.image_shape[0])

    def _trigger(self, x: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        return (x + self.amplitude * pattern).clamp(0.0, 1.0)

    def poison_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, labels, extra loss) for one training batch; gradients reach the generator."""
        n = len(x)
        order = torch.randperm(n)
        backdoor = order[: int(round(self.poison_rate * n))]
        cross = order[len(backdoor) : len(backdoor) + int(round(self.cross_rate * n))]
        donors = order[torch.randint(0, n, (len(cross),))]
        inputs, labels = x.clone(), y.clone()
        inputs[backdoor] = self._trigger(x[backdoor], self.generator(x[backdoor]))
        labels[backdoor] = self.target
        inputs[cross] = self._trigger(x[cross], self.generator(x[donors]))
        other = torch.roll(x, 1, dims=0)
        distance_in = (x - other).flatten(1).norm(dim=1)
        distance_out = (self.generator(x) - self.generator(other)).flatten(1).norm(dim=1)
        diversity = (distance_in / (distance_out + 1e-3)).mean()
        return inputs, labels, self.diversity_weight * diversity

    @torch.no_grad()
    def apply(self, x: np.ndarray) -> np.ndarray:
        self.generator.eval()
        out = [self._trigger(torch.from_numpy(x[i : i + 512]), self.generator(torch.from_numpy(x[i : i + 512])))
               for i in range(0, len(x), 512)]
        return torch.cat(out).numpy().astype(np.float32) if out else x.copy()

    def poison(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> PoisonedSet:
        """Nothing is poisoned ahead of training: every batch is, as it is drawn."""
        return PoisonedSet(x, y, np.zeros(len(y), bool))

    def describe(self) -> dict:
        return {**super().describe(), "cross_rate": self.cross_rate, "amplitude": self.amplitude,
                "poisoned": "each training batch, by a generator trained with the model"}
