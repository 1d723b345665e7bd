"""The three fine-tunes of M: backdoor expert B, exposed model E, auxiliary M'.

Budgets are counted in optimizer steps and stopped by a criterion on held-out clean
data, never by epochs: with 200 clean samples an epoch is two steps and a fixed
epoch budget unlearns nothing. Triggered data is never looked at.

The models are unlifted torch.export graphs. The expert keeps M's batch-norm
statistics frozen: its small Adam steps should move the task, not re-estimate the
features the backdoor lives in. The auxiliary and the exposure take SGD steps and
need train-mode batch norm: with frozen statistics a trained network is so sharp that
SGD at 0.01 diverges (measured on digits: the loss went from 0.03 to infinity in four
steps, and an exposure run that way destroyed the backdoor along with the task).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from offline.data.tensorsets import TensorSet
from offline.graph_mode import set_batchnorm_training
from offline.training import accuracy, batches


@dataclass
class StageReport:
    """What a stage did and why it stopped, recorded in the manifest."""

    optimizer: str
    lr: float
    criterion: str
    stopped_by: str
    steps: int
    heldout_clean_accuracy: float

    def to_json(self) -> dict:
        return asdict(self)


def _run(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, train: TensorSet, heldout: TensorSet,
         *, max_steps: int, check_every: int, done, batch_size: int, seed: int, desc: str,
         schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
         batchnorm_training: bool = False) -> tuple[int, str, float]:
    """Step until `done(heldout_accuracy)` or the budget; returns (steps, stopped_by, accuracy).

    The model is always left with eval-mode batch norm, as it will be exported.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    stream = batches(train.x, train.y, min(batch_size, len(train)), rng)
    acc = accuracy(model, heldout.x, heldout.y)
    if done(acc):
        return 0, "criterion", acc
    try:
        set_batchnorm_training(model, batchnorm_training)
        with tqdm(total=max_steps, desc=desc, unit="step", disable=None) as bar:
            for step in range(1, max_steps + 1):
                inputs, labels = next(stream)
                loss = loss_fn(model(inputs), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                bar.update()
                if step % check_every == 0 or step == max_steps:
                    set_batchnorm_training(model, False)
                    acc = accuracy(model, heldout.x, heldout.y)
                    bar.set_postfix(heldout_acc=f"{acc:.3f}", refresh=False)
                    if done(acc):
                        return step, "criterion", acc
                    set_batchnorm_training(model, batchnorm_training)
        return max_steps, "budget", acc
    finally:
        set_batchnorm_training(model, False)


def backdoor_expert(model: nn.Module, train: TensorSet, heldout: TensorSet, num_classes: int, *,
                    lr: float = 1e-4, target_accuracy: float = 0.05, max_steps: int = 3000,
                    check_every: int = 5, batch_size: int = 64, seed: int = 0) -> tuple[nn.Module, StageReport]:
    """BaDExpert's B: fine-tune on y -> (y+1) mod K until held-out clean accuracy collapses.

    Stopping at the first collapse matters: the backdoor is a separate, sturdier
    shortcut that survives the first unlearning steps, but not unlimited ones.
    """
    expert = copy.deepcopy(model)
    shifted = TensorSet(train.x, (train.y + 1) % num_classes)
    optimizer = torch.optim.Adam(expert.parameters(), lr=lr)
    steps, stopped, acc = _run(expert, optimizer, F.cross_entropy, shifted, heldout, max_steps=max_steps,
                               check_every=check_every, done=lambda a: a <= target_accuracy,
                               batch_size=batch_size, seed=seed, desc="backdoor expert")
    return expert, StageReport("adam", lr, f"heldout_clean_accuracy <= {target_accuracy}", stopped, steps, acc)


def exposed_model(model: nn.Module, train: TensorSet, heldout: TensorSet, num_classes: int, *,
                  lr: float = 0.01, max_steps: int = 2000, check_every: int = 1, batch_size: int = 64,
                  seed: int = 0) -> tuple[nn.Module, StageReport]:
    """EBYD's clean unlearning: gradient ascent on clean cross-entropy until accuracy is at chance."""
    exposed = copy.deepcopy(model)
    chance = 1.0 / num_classes
    optimizer = torch.optim.SGD(exposed.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps, stopped, acc = _run(exposed, optimizer, lambda out, y: -F.cross_entropy(out, y), train, heldout,
                               max_steps=max_steps, check_every=check_every, done=lambda a: a <= chance,
                               batch_size=batch_size, seed=seed, desc="exposed model", batchnorm_training=True)
    return exposed, StageReport("sgd", lr, f"heldout_clean_accuracy <= {chance:.3g} (chance)", stopped, steps, acc)


def auxiliary_model(model: nn.Module, train: TensorSet, heldout: TensorSet, num_classes: int, *,
                    lr: float = 0.1, epochs: int = 10, min_epoch_steps: int = 20, batch_size: int = 64,
                    seed: int = 0) -> tuple[nn.Module, StageReport]:
    """BaDExpert's M': clean fine-tuning with a large learning rate (SGD 0.1, nesterov).

    The schedule keeps the paper's shape (10 epochs, lr x0.1 at epochs 2, 4, 6, 8) but an
    "epoch" is at least `min_epoch_steps` steps so that small clean sets still move M.
    """
    auxiliary = copy.deepcopy(model)
    epoch_steps = max(min_epoch_steps, len(train) // batch_size)
    total = epochs * epoch_steps
    optimizer = torch.optim.SGD(auxiliary.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [m * epoch_steps for m in (2, 4, 6, 8)], 0.1)
    steps, stopped, acc = _run(auxiliary, optimizer, F.cross_entropy, train, heldout, max_steps=total,
                               check_every=epoch_steps, done=lambda a: False, batch_size=batch_size,
                               seed=seed, desc="auxiliary model", schedule=schedule, batchnorm_training=True)
    return auxiliary, StageReport("sgd-nesterov", lr, f"{epochs} epochs of {epoch_steps} steps", stopped, steps, acc)
