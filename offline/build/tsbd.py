"""TSBD as the auxiliary model M': repair by resetting the weights that unlearning moved most.

Lin et al. (NeurIPS 2024) observe that clean unlearning (gradient ascent on clean
data) moves backdoor-related neurons most, so the neuron weight change (NWC) points at
them without any triggered data:
1. NWC of every output channel of every conv layer: the L1 norm of its weights' change
   between M and the clean-unlearned model (the exposed model E is exactly that run),
   ranked across all layers;
2. zero re-initialisation, in a copy of M, of the most-changed 70% of the weights of
   each of the top n% channels;
3. activeness-aware fine-tuning on clean data: each step takes the gradient g1 at the
   weights and g2 at the weights moved by r * g1 / ||g1|| (per tensor), and updates with
   (1 - alpha) * g1 + alpha * g2 (r = 0.05, alpha = 0.7), which keeps the repaired
   channels from simply relearning the backdoor's sharp minimum.
n is chosen on clean data: the largest share whose fine-tuned model recovers held-out
accuracy to within 5 points of M's (more reset removes more backdoor, as long as the
task comes back).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from offline.build.divergence import DivergenceGuard, finite_accuracy
from offline.build.stages import StageReport
from offline.data.tensorsets import TensorSet
from offline.graph_mode import set_batchnorm_training
from offline.training import accuracy, batches

SHARES = (0.3, 0.2, 0.1, 0.05)  # of all conv channels, tried largest first
TSBD_MARGIN = 0.05  # how close to M's held-out accuracy the repaired model must end (measured with 0.05)
RESET_FRACTION = 0.7


def _conv_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Conv kernels [out, in, kh, kw]: in an exported graph, the 4-D parameters."""
    return {name: p for name, p in model.named_parameters() if p.ndim == 4}


@torch.no_grad()
def neuron_weight_change(model: nn.Module, unlearned: nn.Module) -> list[tuple[float, str, int]]:
    """(NWC, layer, channel) for every conv output channel, most changed first."""
    after = _conv_weights(unlearned)
    changes = []
    for name, before in _conv_weights(model).items():
        per_channel = (after[name] - before).abs().flatten(1).sum(dim=1)
        changes.extend((float(v), name, c) for c, v in enumerate(per_channel))
    return sorted(changes, reverse=True)


@torch.no_grad()
def zero_reinit(model: nn.Module, unlearned: nn.Module, share: float,
                reset_fraction: float = RESET_FRACTION) -> tuple[nn.Module, int]:
    """A copy of M with the most-changed weights of the top `share` of channels set to zero."""
    repaired = copy.deepcopy(model)
    ranked = neuron_weight_change(model, unlearned)
    chosen = ranked[: max(1, int(round(share * len(ranked))))]
    weights, after = _conv_weights(repaired), _conv_weights(unlearned)
    for _, name, channel in chosen:
        delta = (after[name][channel] - weights[name][channel]).abs().flatten()
        count = int(round(reset_fraction * delta.numel()))
        weights[name][channel].view(-1)[delta.topk(count).indices] = 0.0
    return repaired, len(chosen)


def activeness_aware_finetune(model: nn.Module, train: TensorSet, heldout: TensorSet, *, steps: int,
                              check_every: int, lr: float = 0.01, r: float = 0.05, alpha: float = 0.7,
                              batch_size: int = 64, seed: int = 0,
                              desc: str = "TSBD fine-tune") -> tuple[list[float], int]:
    """Fine-tune in place; returns held-out accuracy at the start and at every check, and
    the steps taken, fewer than `steps` if the run diverged and stopped at its last finite
    weights (offline/build/divergence.py)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    stream = batches(train.x, train.y, min(batch_size, len(train)), rng)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    trajectory = [accuracy(model, heldout.x, heldout.y)]
    guard = DivergenceGuard(model)
    try:
        set_batchnorm_training(model, True)
        for step in tqdm(range(1, steps + 1), desc=desc, unit="step", disable=None):
            inputs, labels = next(stream)
            loss = F.cross_entropy(model(inputs), labels)
            if not guard.keep(loss, step - 1):
                break
            g1 = torch.autograd.grad(loss, params)
            with torch.no_grad():
                moves = [r * g / g.norm().clamp_min(1e-12) for g in g1]
                for p, e in zip(params, moves):
                    p.add_(e)
            g2 = torch.autograd.grad(F.cross_entropy(model(inputs), labels), params)
            with torch.no_grad():
                for p, e, a, b in zip(params, moves, g1, g2):
                    p.sub_(e)
                    p.grad = (1 - alpha) * a + alpha * b
            optimizer.step()
            if not guard.weights_finite():
                break
            if step % check_every == 0 or step == steps:
                set_batchnorm_training(model, False)
                acc = finite_accuracy(model, heldout)
                if acc is None:
                    break
                trajectory.append(acc)
                set_batchnorm_training(model, True)
        else:
            return trajectory, steps
        taken = guard.restore()
        set_batchnorm_training(model, False)
        trajectory.append(accuracy(model, heldout.x, heldout.y))
        return trajectory, taken
    finally:
        set_batchnorm_training(model, False)


def tsbd_auxiliary(model: nn.Module, unlearned: nn.Module, train: TensorSet, heldout: TensorSet, *,
                   shares: tuple[float, ...] = SHARES, epochs: int = 10, min_epoch_steps: int = 20,
                   batch_size: int = 64, seed: int = 0) -> tuple[nn.Module, StageReport]:
    start = accuracy(model, heldout.x, heldout.y)
    epoch_steps = max(min_epoch_steps, len(train) // batch_size)
    runs = []
    for share in shares:
        repaired, channels = zero_reinit(model, unlearned, share)
        after_reset = accuracy(repaired, heldout.x, heldout.y)
        trajectory, taken = activeness_aware_finetune(repaired, train, heldout, steps=epochs * epoch_steps,
                                                      check_every=epoch_steps, batch_size=batch_size, seed=seed,
                                                      desc=f"TSBD fine-tune (top {share:.0%} channels reset)")
        diverged = taken < epochs * epoch_steps
        run = {"share": share, "channels_reset": channels, "heldout_after_reset": after_reset,
               "trajectory": [round(a, 4) for a in trajectory], "final": trajectory[-1], "steps": taken,
               "diverged": diverged, "recovered": not diverged and trajectory[-1] >= start - TSBD_MARGIN}
        runs.append((repaired, run))
        if run["recovered"]:
            break  # shares are tried largest first: the first that recovers is the largest that does
    repaired, run = runs[-1] if runs[-1][1]["recovered"] else max(runs, key=lambda r: r[1]["final"])
    report = StageReport("tsbd: zero reinit + activeness-aware sgd", 0.01, f"{epochs} epochs of {epoch_steps} steps",
                         "divergence" if run["diverged"] else "budget", run["steps"], run["final"])
    report.selection = {"criterion": f"largest reset share whose fine-tuned model recovers to within "
                                     f"{TSBD_MARGIN} of M's held-out accuracy ({start:.4f})",
                        "chosen_share": run["share"], "search": [r for _, r in runs]}
    return repaired, report
