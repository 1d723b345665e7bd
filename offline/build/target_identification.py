"""Which class, if any, M's backdoor sends inputs to: found offline from M and clean data.

A backdoor is a shortcut into one class: a small change to any input sends it there. So
for each class c, the smallest mask m and pattern p (x' = (1 - m) x + m p, in pixel space)
that send the clean inputs of the other classes to c is found by gradient descent on
cross-entropy towards c plus an L1 penalty on the mask (Neural Cleanse, Wang et al.,
S&P 2019). The backdoor's target needs a far smaller mask than the other classes: its
anomaly index, how many robust standard deviations its log mask size sits below the
classes' median, stands out, and no other class comes close to it (offline/build/target_naming.py).
A clean model's classes are all about equally hard to reach.

Why the firewall wants it: on backdoors that moved only a fraction of their inputs
(width-8 WaNet, adaptive_blend, dynamic), the rules' evidence is weak, and knowing the
target lifts the worst cell 0.79 -> 0.92 AUROC in an oracle study (docs/METHODS.md).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from firewall.artifacts import REVERSED_TRIGGER
from offline.build.identification_version import SIZE_AVERAGING
from offline.build.reversed_trigger import ReversedTrigger
from offline.build.target_naming import ANOMALY_THRESHOLD, MIN_SEPARATION, anomaly_index, name_target, separation


@dataclass
class TargetReport:
    """Per class: the reverse-engineered mask's L1 size (pixels, averaged over the second half of
    the steps: `size_averaging`), the share of the other classes' clean inputs it sends there,
    and its anomaly index; the suspected target is the cheapest class when its index exceeds
    the threshold and the next cheapest class's mask is at least `min_separation` times its own
    (`separation`), else None (offline/build/target_naming.py)."""

    mask_sizes: list[float]
    flip_rates: list[float]
    anomaly_index: list[float]
    separation: float
    suspected_target: int | None
    threshold: float
    steps: int
    penalty: float
    size_averaging: str = SIZE_AVERAGING
    min_separation: float = MIN_SEPARATION
    trigger: ReversedTrigger | None = field(default=None, repr=False)  # the suspected target's; in its own file

    def to_json(self) -> dict:
        report = asdict(self)
        del report["trigger"]
        return {**report, "reversed_trigger": REVERSED_TRIGGER if self.trigger is not None else None}


def _reverse_engineer(model: nn.Module, pixels: torch.Tensor, target: int, to_model: nn.Module, *, steps: int,
                      penalty: float, batch_size: int, generator: torch.Generator
                      ) -> tuple[float, float, ReversedTrigger]:
    """The smallest mask found that sends `pixels` to `target`: its L1 size, averaged over the second half of
    the steps, the share the final mask sends there, and the final mask and pattern.

    The average because the size does not settle: at Adam's rate the mask breathes from step to step, and one
    snapshot moved a class's anomaly index by several units between checkpoints (4.4, 10.6, 3.3 at steps 75,
    100, 150 on one backdoor; 2.1, 1.5, 3.4 at steps 50, 75, 150 on a clean model; docs/METHODS.md)."""
    height, width = pixels.shape[-2:]
    mask_logit = torch.full((1, 1, height, width), -3.0, requires_grad=True)
    pattern_logit = torch.zeros((1, pixels.shape[1], height, width), requires_grad=True)
    optimizer = torch.optim.Adam([mask_logit, pattern_logit], lr=0.1)
    labels = torch.full((min(batch_size, len(pixels)),), target)
    settled_sizes = []
    for step in range(steps):
        rows = torch.randperm(len(pixels), generator=generator)[: len(labels)]
        mask, pattern = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)
        stamped = (1 - mask) * pixels[rows] + mask * pattern
        loss = F.cross_entropy(model(to_model(stamped)), labels) + penalty * mask.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= steps // 2:
            settled_sizes.append(float(mask.detach().sum()))
    with torch.no_grad():
        mask, pattern = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)
        stamped = (1 - mask) * pixels + mask * pattern
        flipped = float((model(to_model(stamped)).argmax(1) == target).float().mean())
    return float(np.mean(settled_sizes)), flipped, ReversedTrigger(target, mask[0, 0].numpy(), pattern[0].numpy())


class _Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


def identify_target(model: nn.Module, x: np.ndarray, y: np.ndarray, num_classes: int, *,
                    mean: tuple[float, ...] = (0.0,), std: tuple[float, ...] = (1.0,), steps: int = 150,
                    penalty: float = 1.0, batch_size: int = 128, threshold: float = ANOMALY_THRESHOLD,
                    seed: int = 0) -> TargetReport:
    """Reverse-engineer a trigger for every class from clean images `x` (model space, labels `y`; pixels in
    [0, 1] once `mean` and `std` are undone, like every trigger here) and name the class whose trigger is
    anomalously small, if one is.

    A frozen copy of M is used (M as loaded, in its exported eval mode); only the masks and patterns are
    optimised."""
    model = copy.deepcopy(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    to_model = _Normalize(mean, std)
    pixels_all = torch.from_numpy(x) * to_model.std + to_model.mean
    generator = torch.Generator().manual_seed(seed)
    sizes, flips, triggers = [], [], []
    for target in tqdm(range(num_classes), desc="target identification", unit="class", disable=None):
        others = pixels_all[torch.from_numpy(y != target)]
        size, flipped, trigger = _reverse_engineer(model, others, target, to_model, steps=steps, penalty=penalty,
                                                   batch_size=batch_size, generator=generator)
        sizes.append(size)
        flips.append(flipped)
        triggers.append(trigger)
    by_class = np.asarray(sizes)
    suspected = name_target(by_class, threshold)
    return TargetReport(mask_sizes=sizes, flip_rates=flips, anomaly_index=[float(v) for v in anomaly_index(by_class)],
                        separation=separation(by_class), suspected_target=suspected, threshold=threshold,
                        steps=steps, penalty=penalty,
                        trigger=None if suspected is None else triggers[suspected])
