"""Small training and evaluation loops shared by the red-team kit and the build."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless stream of shuffled mini-batches: budgets are counted in steps, not epochs."""
    while True:
        order = rng.permutation(len(y))
        for start in range(0, len(y) - batch_size + 1 if len(y) >= batch_size else 1, batch_size):
            index = order[start : start + batch_size]
            yield torch.from_numpy(x[index]), torch.from_numpy(y[index])


@torch.no_grad()
def forward(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The model's output for every row of x, in batches so that memory stays bounded."""
    return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).numpy()
                           for i in range(0, len(x), batch_size)])


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    return forward(model, x, batch_size).argmax(1) if len(x) else np.zeros(0, np.int64)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x) == y).mean())


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float = 0.05,
                     batch_size: int = 128, seed: int = 0, desc: str = "train",
                     poison_batch: Callable | None = None, extra_params: Iterable[nn.Parameter] = ()) -> nn.Module:
    """SGD with momentum and a cosine schedule; enough for the small red-team models.

    `poison_batch(inputs, labels) -> (inputs, labels, extra_loss)` rewrites each batch as
    it is drawn, for attacks trained together with the model; `extra_params` (the
    attack's own) are optimised alongside.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    steps = epochs * max(1, len(y) // batch_size)
    optimizer = torch.optim.SGD([*model.parameters(), *extra_params], lr=lr, momentum=0.9, weight_decay=5e-4,
                                nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    stream = batches(x, y, batch_size, rng)
    with tqdm(total=steps, desc=desc, unit="step", disable=None) as bar:
        for _ in range(steps):
            inputs, labels = next(stream)
            extra = 0.0
            if poison_batch is not None:
                inputs, labels, extra = poison_batch(inputs, labels)
            loss = F.cross_entropy(model(inputs), labels) + extra
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()
