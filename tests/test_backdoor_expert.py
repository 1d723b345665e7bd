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


def _meeting_criterion_at(steps_by_rate: dict[float, int], change_by_rate: dict[float, float]):
    """An `_expert_at` whose runs stop by the criterion at the given steps with the given weight changes."""
    run_once = stages._expert_at

    def run(*args, **kwargs):
        expert, report, _ = run_once(*args, **kwargs)
        lr = args[4]
        if lr in steps_by_rate:
            report.stopped_by, report.steps = "criterion", steps_by_rate[lr]
        return expert, report, change_by_rate[lr]

    return run


def test_a_rate_that_collapses_the_task_at_its_first_check_loses_to_one_that_collapses_it_later(monkeypatch):
    # the overshooting rate moved least, which on its own would win; its stop point is unresolved
    torch.manual_seed(0)
    model = export_program(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), torch.zeros(2, 1, 4, 4)).module()
    fast, slow = stages.EXPERT_LRS[2], stages.EXPERT_LRS[0]
    changes = {lr: 2.0 for lr in stages.EXPERT_LRS} | {fast: 1.0, slow: 1.5}
    monkeypatch.setattr(stages, "_expert_at", _meeting_criterion_at({fast: 5, slow: 60}, changes))
    _, report = stages.backdoor_expert(model, tiny_task(60, 0), tiny_task(30, 1), 3, target_accuracy=-1.0,
                                       max_steps=3, check_every=5)
    by_rate = {run["lr"]: run for run in report.selection["search"]}
    assert by_rate[fast]["met_at_first_check"] and not by_rate[slow]["met_at_first_check"]
    assert report.lr == slow


def test_a_collapse_at_the_first_check_is_taken_when_no_rate_collapses_later(monkeypatch):
    torch.manual_seed(0)
    model = export_program(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), torch.zeros(2, 1, 4, 4)).module()
    fast = stages.EXPERT_LRS[2]
    changes = {lr: 2.0 for lr in stages.EXPERT_LRS} | {fast: 3.0}
    monkeypatch.setattr(stages, "_expert_at", _meeting_criterion_at({fast: 5}, changes))
    _, report = stages.backdoor_expert(model, tiny_task(60, 0), tiny_task(30, 1), 3, target_accuracy=-1.0,
                                       max_steps=3, check_every=5)
    assert report.lr == fast and report.stopped_by == "criterion"


def _recorded_expert(chosen_steps: int, *, current_rule: bool) -> dict:
    """An expert report as a manifest keeps it: chosen at Adam 3e-3 after `chosen_steps`, beside a rate that
    met the criterion at step 60."""
    search = [{"lr": 1e-3, "steps": 60, "stopped_by": "criterion", "weight_change": 1.9},
              {"lr": 3e-3, "steps": chosen_steps, "stopped_by": "criterion", "weight_change": 1.7}]
    if current_rule:
        search = [{**run, "met_at_first_check": run["steps"] <= stages.EXPERT_CHECK_EVERY} for run in search]
    return {"lr": 3e-3, "stopped_by": "criterion", "steps": chosen_steps, "selection": {"search": search}}


def test_an_earlier_build_that_took_a_first_check_collapse_is_not_the_current_rule_s_choice():
    assert not stages.expert_chosen_as_builds_now_do(_recorded_expert(5, current_rule=False))
    assert stages.expert_chosen_as_builds_now_do(_recorded_expert(40, current_rule=False))  # either rule's choice
    assert stages.expert_chosen_as_builds_now_do(_recorded_expert(5, current_rule=True))  # the fallback, made now
