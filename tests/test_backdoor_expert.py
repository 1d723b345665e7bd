"""BaDExpert's B: the learning-rate search keeps one expert and trains each rate once.

The build works on exported modules (as loaded from a .pt2), so the test exports too."""

import numpy as np
import torch
from torch import nn

from offline.build import stages
from offline.data.tensorsets import TensorSet
from offline.model_io import export_program


def tiny_task(n: int, seed: int) -> TensorSet:
    rng = np.random.default_rng(seed)
    return TensorSet(rng.normal(size=(n, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, n))


def test_when_no_rate_collapses_the_closest_run_is_kept_without_training_it_again(monkeypatch):
    torch.manual_seed(0)
    model = export_program(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), torch.zeros(2, 1, 4, 4)).module()
    calls = []
    run_once = stages._expert_at

    def counted(*args, **kwargs):
        calls.append(args[4])  # the learning rate
        return run_once(*args, **kwargs)

    monkeypatch.setattr(stages, "_expert_at", counted)
    expert, report = stages.backdoor_expert(model, tiny_task(60, 0), tiny_task(30, 1), 3, target_accuracy=-1.0,
                                            max_steps=3, check_every=1)
    search = report.selection["search"]
    assert calls == list(stages.EXPERT_LRS)
    assert all(run["stopped_by"] == "budget" for run in search)
    closest = min(search, key=lambda run: run["heldout_clean_accuracy"])
    assert report.lr == closest["lr"] and report.heldout_clean_accuracy == closest["heldout_clean_accuracy"]
    assert stages.weight_change(expert, model) == closest["weight_change"]


def test_an_expert_that_answers_every_input_alike_is_never_chosen(monkeypatch):
    # a rate too large can kill every hidden unit: held-out accuracy falls to one class's
    # share, lower than any live run's, but such a B holds no backdoor
    torch.manual_seed(0)
    model = export_program(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)),
                           torch.zeros(2, 1, 4, 4)).module()
    killing_rate = stages.EXPERT_LRS[0]
    run_once = stages._expert_at

    def killing_one_rate(*args, **kwargs):
        expert, report, change = run_once(*args, **kwargs)
        if args[4] == killing_rate:
            parameters = dict(expert.named_parameters())  # the exported graph's: the hidden layer is "1"
            with torch.no_grad():
                parameters["1.weight"].zero_()
                parameters["1.bias"].fill_(-1.0)
            report.heldout_clean_accuracy = 0.0
        return expert, report, change

    monkeypatch.setattr(stages, "_expert_at", killing_one_rate)
    expert, report = stages.backdoor_expert(model, tiny_task(60, 0), tiny_task(30, 1), 3, target_accuracy=-1.0,
                                            max_steps=3, check_every=1)
    by_rate = {run["lr"]: run for run in report.selection["search"]}
    assert by_rate[killing_rate]["constant_output"]
    assert not any(run["constant_output"] for lr, run in by_rate.items() if lr != killing_rate)
    assert report.lr != killing_rate
    assert not stages.answers_alike(expert, tiny_task(30, 1))
